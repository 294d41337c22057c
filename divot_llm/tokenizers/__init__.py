"""Frozen video tokenizers behind one interface (divot, ...).

``build_video_tokenizer(cfg.video_tokenizer)`` returns a frozen ``VideoTokenizer``;
``tokenizer.encode(frames (B, F, 3, H, W) in [-1, 1]) -> (B, N, D)``. Implementations are
imported on first use (see ``registry``), so importing this package stays cheap.
"""

from divot_llm.tokenizers.base import VideoTokenizer, still_clips
from divot_llm.tokenizers.registry import (
    build_video_tokenizer,
    register_video_tokenizer,
    video_tokenizer_class,
)

__all__ = [
    "VideoTokenizer",
    "build_video_tokenizer",
    "register_video_tokenizer",
    "still_clips",
    "video_tokenizer_class",
]
