"""Pick a keyframe tokenizer by the ``arch`` name in its config (see ``divot_llm.registry``):
``<arch>`` lives in ``divot_llm/tokenizers/keyframe/<arch>.py`` with its config dataclass in
``<arch>_config.py`` (registered with ``register_keyframe_tokenizer_config``), and the class
registers itself with ``@register_keyframe_tokenizer("<arch>")``; a new one is that module
plus one ``conf/keyframe_tokenizer/*.yaml`` whose defaults list names ``schema_<arch>``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from divot_llm.layout import KEYFRAME_TOKENIZER_CONFIG
from divot_llm.registry import ComponentRegistry

KEYFRAME_TOKENIZERS: ComponentRegistry = ComponentRegistry("keyframe tokenizer", "keyframe_tokenizer")
register_keyframe_tokenizer = KEYFRAME_TOKENIZERS.register
register_keyframe_tokenizer_config = KEYFRAME_TOKENIZERS.register_config
keyframe_tokenizer_class = KEYFRAME_TOKENIZERS.get

RELEASE_ARCH = "lavit"  # what a released visual_tokenizer/ folder (no config of ours) holds


def build_keyframe_tokenizer(config: Any) -> Any:
    """Build the keyframe tokenizer a ``keyframe_tokenizer`` config describes (its ``arch``
    picks the class), with the weights its paths name loaded; fp32 on the CPU.

    Raises:
        ConfigError: a required value is still ``???``, or unknown keys.
        ValueError: unknown ``arch``.
    """
    cls, resolved = KEYFRAME_TOKENIZERS.resolve(config)
    return cls.from_config(resolved)


def load_keyframe_tokenizer(path: str | os.PathLike) -> Any:
    """A folder written by a keyframe tokenizer's ``save_pretrained`` (its config names the
    arch), or a released ``visual_tokenizer/`` folder as it is (no config of ours: the
    release's, ``lavit``'s defaults)."""
    if (Path(path) / KEYFRAME_TOKENIZER_CONFIG).is_file():
        return KEYFRAME_TOKENIZERS.load_saved(path, KEYFRAME_TOKENIZER_CONFIG)
    return keyframe_tokenizer_class(RELEASE_ARCH).from_pretrained(path)
