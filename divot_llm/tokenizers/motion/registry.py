"""Pick a motion tokenizer by the ``arch`` name in its config (see ``divot_llm.registry``):
``<arch>`` lives in ``divot_llm/tokenizers/motion/<arch>.py`` with its config dataclass in
``<arch>_config.py`` (registered with ``register_motion_tokenizer_config``), and the
class registers itself with ``@register_motion_tokenizer("<arch>")``; a new one is that
module plus one ``conf/motion_tokenizer/*.yaml`` whose defaults list names ``schema_<arch>``."""

from __future__ import annotations

from divot_llm.registry import ComponentRegistry

MOTION_TOKENIZERS: ComponentRegistry = ComponentRegistry("motion tokenizer", "motion_tokenizer")
register_motion_tokenizer = MOTION_TOKENIZERS.register
register_motion_tokenizer_config = MOTION_TOKENIZERS.register_config
motion_tokenizer_class = MOTION_TOKENIZERS.get
