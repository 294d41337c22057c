"""Pick a video tokenizer by the ``arch`` name in its config (see ``divot_llm.registry``):
the tokenizer ``<arch>`` lives in ``divot_llm/tokenizers/<arch>.py`` (or a package
``<arch>/`` whose ``__init__`` imports it, as ``vidtok``), with its config
dataclass (``config_class``), and registers itself with
``@register_video_tokenizer("<arch>")``; a new one is that file plus one
``conf/video_tokenizer/*.yaml`` whose defaults list names ``schema_<arch>``."""

from __future__ import annotations

import os
from typing import Any

from divot_llm.registry import ComponentRegistry
from divot_llm.tokenizers.base import VideoTokenizer

VIDEO_TOKENIZERS: ComponentRegistry[VideoTokenizer] = ComponentRegistry("video tokenizer", "video_tokenizer")
register_video_tokenizer = VIDEO_TOKENIZERS.register
register_video_tokenizer_config = VIDEO_TOKENIZERS.register_config
video_tokenizer_class = VIDEO_TOKENIZERS.get


def build_video_tokenizer(config: Any, cached_features: bool = False) -> VideoTokenizer:
    """Build the frozen tokenizer a ``video_tokenizer`` config describes, weights loaded.

    Args:
        config: ``cfg.video_tokenizer`` (an instance of the tokenizer's config dataclass)
            or a plain mapping of its fields. Its ``arch`` picks the implementation.
        cached_features: build only what a run from a feature cache needs
            (``VideoTokenizer.for_cached_features``: Divot without its ViT).

    Returns:
        The tokenizer, frozen, in fp32 on the CPU; move it with ``.to(device, dtype)``.

    Raises:
        ConfigError: a required value (e.g. a weights path) is still ``???``.
        ValueError: unknown ``arch``.
    """
    cls, resolved = VIDEO_TOKENIZERS.resolve(config)
    return cls.for_cached_features(resolved) if cached_features else cls.from_config(resolved)


def load_video_tokenizer(path: str | os.PathLike) -> VideoTokenizer:
    """A folder written by ``save_pretrained`` (any arch: its config names it)."""
    return VIDEO_TOKENIZERS.load_saved(path, "tokenizer_config.json")
