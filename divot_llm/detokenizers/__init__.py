"""Video de-tokenizers behind one interface (dynamicrafter, ...).

``build_video_detokenizer(cfg.detokenizer, tokenizer=...)`` returns a ``VideoDetokenizer``;
``detok.decode(features (B, N, D)) -> (B, F, 3, H, W)`` in [-1, 1], and
``detok.loss(video, features)`` is its training loss. Implementations are imported on first
use (see ``registry``).
"""

from divot_llm.detokenizers.base import VideoDetokenizer, zero_clip_features
from divot_llm.detokenizers.registry import (
    build_video_detokenizer,
    register_video_detokenizer,
    video_detokenizer_class,
)

__all__ = [
    "VideoDetokenizer",
    "build_video_detokenizer",
    "register_video_detokenizer",
    "video_detokenizer_class",
    "zero_clip_features",
]
