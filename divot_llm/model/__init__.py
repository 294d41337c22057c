"""The Divot-LLM module: backbone + LoRA, video heads (GMM, FSQ codes) with their input
and output modules (token by token, or through learned queries), attention masks, generation, and the release layout on disk."""

from divot_llm.model.attention import AttentionLayout, attention_kernel, build_attention_mask, query_block_ids
from divot_llm.model.backbone import load_backbone, mistral_config, resize_vocab
from divot_llm.model.build import (
    build_divot_llm,
    build_stage_model,
    checkpointed_layers,
    llm_tokens_per_clip,
    load_release,
)
from divot_llm.model.code_heads import FactorizedCodeHead, FlatCodeHead, guided_logits, sample_logits
from divot_llm.model.divot import DivotLLM, DivotOutput
from divot_llm.model.generation import (
    FrameTokenLogitsProcessor,
    GeneratedFeatures,
    generate_features,
    generate_features_for_captions,
    generate_text,
    generation_prompt_ids,
)
from divot_llm.model.gmm import GMMHead, GMMParams
from divot_llm.model.heads import VideoHead, build_video_head
from divot_llm.model.lora import apply_lora, load_training_state_dict, map_legacy_peft_keys
from divot_llm.model.projection import ProjectionLayer
from divot_llm.model.release import load_agent_weights, read_agent_file, save_release
from divot_llm.model.resampler import InputQueryResampler, OutputQueryResampler

__all__ = [
    "AttentionLayout",
    "DivotLLM",
    "DivotOutput",
    "FactorizedCodeHead",
    "FlatCodeHead",
    "FrameTokenLogitsProcessor",
    "GMMHead",
    "GMMParams",
    "GeneratedFeatures",
    "InputQueryResampler",
    "OutputQueryResampler",
    "ProjectionLayer",
    "VideoHead",
    "apply_lora",
    "attention_kernel",
    "build_attention_mask",
    "build_divot_llm",
    "build_video_head",
    "build_stage_model",
    "checkpointed_layers",
    "generate_features",
    "generate_features_for_captions",
    "generate_text",
    "generation_prompt_ids",
    "llm_tokens_per_clip",
    "guided_logits",
    "load_agent_weights",
    "load_backbone",
    "load_release",
    "load_training_state_dict",
    "map_legacy_peft_keys",
    "mistral_config",
    "query_block_ids",
    "read_agent_file",
    "resize_vocab",
    "sample_logits",
    "save_release",
]
