"""Pick a motion tokenizer by the ``arch`` name in its config (see ``divot_llm.registry``):
``<arch>`` lives in ``divot_llm/tokenizers/motion/<arch>.py`` with its config dataclass in
``<arch>_config.py`` (registered with ``register_motion_tokenizer_config``), and the
class registers itself with ``@register_motion_tokenizer("<arch>")``; a new one is that
module plus one ``conf/motion_tokenizer/*.yaml`` whose defaults list names ``schema_<arch>``."""

from __future__ import annotations

import os
from typing import Any

from divot_llm.layout import MOTION_TOKENIZER_CONFIG
from divot_llm.registry import ComponentRegistry

MOTION_TOKENIZERS: ComponentRegistry = ComponentRegistry("motion tokenizer", "motion_tokenizer")
register_motion_tokenizer = MOTION_TOKENIZERS.register
register_motion_tokenizer_config = MOTION_TOKENIZERS.register_config
motion_tokenizer_class = MOTION_TOKENIZERS.get


def build_motion_tokenizer(config: Any) -> Any:
    """Build the motion tokenizer a ``motion_tokenizer`` config describes (its ``arch`` picks
    the class), with the weights ``pretrained_path`` names loaded; fp32 on the CPU.

    Raises:
        ConfigError: a required value is still ``???``, or unknown keys.
        ValueError: unknown ``arch``.
    """
    cls, resolved = MOTION_TOKENIZERS.resolve(config)
    return cls.from_config(resolved)


def load_motion_tokenizer(path: str | os.PathLike) -> Any:
    """A folder written by a motion tokenizer's ``save_pretrained`` (any arch: its config names it)."""
    return MOTION_TOKENIZERS.load_saved(path, MOTION_TOKENIZER_CONFIG)
