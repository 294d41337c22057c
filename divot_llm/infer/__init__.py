"""Inference: comprehend (video -> text), generate (text -> features -> video),
reconstruct (video -> features -> video), and loading what they need. Caption ->
features is the model's own (``divot_llm.model.generation``; training uses it too)."""

from divot_llm.infer.comprehend import (
    ClipSampling,
    TextPrinter,
    answer_media,
    comprehend,
    comprehension_prompt_ids,
    encode_media,
)
from divot_llm.infer.load import InferenceModels, load_inference_models, official_config, release_config
from divot_llm.infer.reconstruct import Reconstruction, reconstruct
from divot_llm.model.generation import generate_features_for_captions, generation_prompt_ids

__all__ = [
    "ClipSampling",
    "InferenceModels",
    "Reconstruction",
    "TextPrinter",
    "answer_media",
    "comprehend",
    "comprehension_prompt_ids",
    "encode_media",
    "generate_features_for_captions",
    "generation_prompt_ids",
    "load_inference_models",
    "official_config",
    "reconstruct",
    "release_config",
]
