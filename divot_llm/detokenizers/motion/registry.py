"""Pick a motion-conditioned video de-tokenizer by the ``arch`` name in its config (see
``divot_llm.registry``): ``<arch>`` lives in ``divot_llm/detokenizers/motion/<arch>.py`` with
its config dataclass in ``<arch>_config.py`` (registered with
``register_motion_detokenizer_config``), and the class registers itself with
``@register_motion_detokenizer("<arch>")``; a new one is that module plus one
``conf/motion_detokenizer/*.yaml`` whose defaults list names ``schema_<arch>``."""

from __future__ import annotations

import os
from typing import Any

from divot_llm.layout import MOTION_DETOKENIZER_CONFIG
from divot_llm.registry import ComponentRegistry

MOTION_DETOKENIZERS: ComponentRegistry = ComponentRegistry("motion de-tokenizer", "motion_detokenizer")
register_motion_detokenizer = MOTION_DETOKENIZERS.register
register_motion_detokenizer_config = MOTION_DETOKENIZERS.register_config
motion_detokenizer_class = MOTION_DETOKENIZERS.get


def build_motion_detokenizer(config: Any) -> Any:
    """Build the de-tokenizer a ``motion_detokenizer`` config describes (its ``arch`` picks
    the class), with the weights its config names loaded; fp32 on the CPU.

    Raises:
        ConfigError: a required value is still ``???``, or unknown keys.
        ValueError: unknown ``arch``.
    """
    cls, resolved = MOTION_DETOKENIZERS.resolve(config)
    return cls.from_config(resolved)


def load_motion_detokenizer(path: str | os.PathLike) -> Any:
    """A folder written by a motion de-tokenizer's ``save_pretrained`` (any arch: its config
    names it), or the release's ``video_detokenizer/`` folder (no config of ours: ``lavit``
    at the release's sizes)."""
    if not (os.path.isdir(path) and os.path.exists(os.path.join(path, MOTION_DETOKENIZER_CONFIG))):
        cls = MOTION_DETOKENIZERS.get("lavit")
        return cls.from_config(cls.config_class(pretrained_path=os.fspath(path)))
    return MOTION_DETOKENIZERS.load_saved(path, MOTION_DETOKENIZER_CONFIG)
