"""Inference: comprehend (video -> text), generate (text -> features -> video)."""

from divot_llm.infer.comprehend import comprehend, comprehension_prompt_ids, encode_media
from divot_llm.infer.generate import generate_features_for_captions

__all__ = ["comprehend", "comprehension_prompt_ids", "encode_media", "generate_features_for_captions"]
