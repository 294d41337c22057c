"""Pick a video de-tokenizer by the ``arch`` name in its config (see
``divot_llm.registry``): the de-tokenizer ``<arch>`` lives in
``divot_llm/detokenizers/<arch>.py``, with its config dataclass (``config_class``), and
registers itself with ``@register_video_detokenizer("<arch>")``; a new one is that file
plus one ``conf/detokenizer/*.yaml`` whose defaults list names ``schema_<arch>``."""

from __future__ import annotations

import os
from typing import Any

from divot_llm.detokenizers.base import VideoDetokenizer
from divot_llm.registry import ComponentRegistry
from divot_llm.tokenizers.base import VideoTokenizer

VIDEO_DETOKENIZERS: ComponentRegistry[VideoDetokenizer] = ComponentRegistry(
    "video de-tokenizer", "detokenizer"
)
register_video_detokenizer = VIDEO_DETOKENIZERS.register
register_video_detokenizer_config = VIDEO_DETOKENIZERS.register_config
video_detokenizer_class = VIDEO_DETOKENIZERS.get


def build_video_detokenizer(config: Any, tokenizer: VideoTokenizer | None = None) -> VideoDetokenizer:
    """Build the de-tokenizer a ``detokenizer`` config describes, weights loaded.

    Args:
        config: ``cfg.detokenizer`` (an instance of the de-tokenizer's config dataclass) or
            a plain mapping of its fields. Its ``arch`` picks the implementation.
        tokenizer: the (frozen) tokenizer whose features it decodes; when given, its
            zero-clip features become the unconditional features for guidance.

    Returns:
        The de-tokenizer in fp32 on the CPU; move it with ``.to(device, dtype)``.

    Raises:
        ConfigError: a required value is still ``???``, or unknown keys.
        ValueError: unknown ``arch``.
    """
    cls, resolved = VIDEO_DETOKENIZERS.resolve(config)
    return cls.from_config(resolved, tokenizer=tokenizer)


def load_video_detokenizer(path: str | os.PathLike) -> VideoDetokenizer:
    """A folder written by ``save_pretrained`` (any arch: its config names it)."""
    return VIDEO_DETOKENIZERS.load_saved(path, "detokenizer_config.json")
