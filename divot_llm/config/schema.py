"""Typed, strict schemas for every config group.

Hydra merges each YAML in ``conf/`` onto these dataclasses, so a misspelt key
(``lora.rnak``) or a wrong type (``optim.lr=fast``) fails at start-up with a message
that names the key, instead of being silently ignored half-way through a 7B run.

Groups whose options have *different* shapes (``video_tokenizer``, ``detokenizer``) get
one schema per option, registered under ``<group>/schema_<name>`` and pulled in by the
option's own defaults list; the top-level field is typed ``Any`` so each option can
bring its own schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING


class Task(str, Enum):
    """What a data source trains (one sequence template each, see ``data/sequences``)."""

    pretrain_comp = "pretrain_comp"  # video/image -> caption
    pretrain_gen = "pretrain_gen"  # caption -> video/image queries
    sft_comp = "sft_comp"  # multi-turn [INST] QA about a video/image
    sft_gen = "sft_gen"  # [INST] instruction + caption -> video/image queries


class SourceKind(str, Enum):
    webdataset = "webdataset"  # tar shards: <key>.mp4|webm|gif|jpg|png + <key>.txt|json
    jsonl = "jsonl"  # one JSON object per line, media paths relative to media_root


class StageName(str, Enum):
    pretrain = "pretrain"
    sft_comp = "sft_comp"
    sft_gen = "sft_gen"
    detok = "detok"  # de-tokenizer (stage 1) on the frozen tokenizer's features
    tokenizer = "tokenizer"  # tokenizer (all but the ViT) + de-tokenizer through the diffusion loss
    detok_adapt = "detok_adapt"  # de-tokenizer adaptation (stage 2) on features sampled from the LLM's GMM

    def __str__(self) -> str:  # "${stage.name}" in a config path interpolates to "sft_comp"
        return self.value


DETOK_STAGES = (StageName.detok, StageName.tokenizer, StageName.detok_adapt)  # train a de-tokenizer


class MixMode(str, Enum):
    sample = "sample"  # each example picks its source by weight: batches mix tasks
    batch = "batch"  # each batch picks one source and takes its batch_size (the reference)


class Precision(str, Enum):
    auto = "auto"  # bf16 on GPU, fp32 on CPU (bf16 GEMMs are ~100x slower on AVX2 CPUs)
    bf16 = "bf16"
    fp32 = "fp32"


# --------------------------------------------------------------------------- model


@dataclass
class LLMConfig:
    """The Mistral backbone: loaded from ``path`` (a local HF folder) or built randomly
    from the shape fields when ``path`` is null (tiny test/demo models)."""

    path: str | None = MISSING  # every model option sets it (null = random init)
    vocab_size: int = 32000  # base vocabulary, before the 262 Divot tokens are added
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    sliding_window: int | None = 4096
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 (only batches without query blocks)
    gradient_checkpointing: bool = False
    new_lm_head_rows_scale: float = 3.0  # added lm_head rows = scale x mean of old rows (new input rows = mean)


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 32
    alpha: int = 32
    dropout: float = 0.05
    bias: str = "none"  # peft: none | all | lora_only
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    modules_to_save: list[str] = field(
        default_factory=lambda: ["input_layernorm", "post_attention_layernorm", "norm"]
    )
    train_embeddings: bool = True  # full embed_tokens and lm_head trainable, as the reference


@dataclass
class GMMConfig:
    """Per-token diagonal Gaussian mixture over the D-dim tokenizer features; the output
    projection emits [means k*D | raw variances k*D | logits k]."""

    num_components: int = 16  # k
    var_floor: float = 1e-5  # variance = clamp(softplus(x), var_floor) * var_scale
    var_scale: float = 1.0  # training-time scale
    sample_var_scale: float = 0.1  # inference-time scale (std x sqrt(0.1))
    normalize_by_dim: bool = True  # NLL / d, as the reference


@dataclass
class ModelConfig:
    name: str = MISSING
    tokenizer_path: str | None = MISSING  # folder with tokenizer.model (+ added tokens); null = tests only
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    gmm: GMMConfig = field(default_factory=GMMConfig)
    lm_loss_scale: float = 1.0
    gmm_loss_scale: float = 1.0


# --------------------------------------------------------------- video tokenizers


@dataclass
class DivotTokenizerConfig:
    """The Divot tokenizer: CLIP ViT -> temporal encoder -> pool -> ST transformer ->
    Perceiver resampler. Defaults are the released ViT-H/14 shapes (reference §3)."""

    name: str = "divot"
    arch: str = "divot"  # implementation: divot_llm/tokenizers/<arch>.py (registry key)
    pretrained_path: str | None = MISSING  # Divot_tokenizer.bin (everything but the ViT); null = random
    vit_path: str | None = MISSING  # HF CLIP(Vision)Model folder or open_clip checkpoint; null = random
    frames_per_clip: int = 5
    input_size: int = 256  # frame side (H = W) the tokenizer was trained on; others are resized
    vit_image_size: int = 224  # ViT input resolution after the in-module resize
    vit_width: int = 1280
    vit_layers: int = 32
    vit_heads: int = 16
    vit_mlp_dim: int = 5120
    vit_patch_size: int = 14
    temporal_width: int = 768
    temporal_layers: int = 6
    temporal_heads: int = 12
    hidden_size: int = 1024  # temporal output / ST transformer width
    pool_size: int = 5  # per-frame adaptive pool to pool_size x pool_size tokens
    st_layers: int = 4
    st_heads: int = 8
    resampler_layers: int = 6
    resampler_heads: int = 16
    resampler_dim_head: int = 64
    num_tokens: int = 64  # N tokens per clip
    feature_dim: int = 256  # D


# ------------------------------------------------------------- video de-tokenizers


@dataclass
class DynamiCrafterConfig:
    """Video diffusion de-tokenizer: Resampler_DC conditioning -> DynamiCrafter-style 3D UNet
    (v-prediction, zero-terminal-SNR DDIM) -> SD KL-f8 VAE. Defaults are the released
    Divot shapes and sampler settings (reference §4)."""

    name: str = "divot"
    arch: str = "dynamicrafter"  # implementation: divot_llm/detokenizers/<arch>.py (registry key)
    pretrained_path: str | None = MISSING  # Divot_detokenizer_stage{1,2}.bin; null = random
    vae_path: str | None = None  # SD VAE (diffusers folder or LDM file), loaded before pretrained_path
    feature_dim: int = 256  # D of the tokenizer features it decodes
    num_frames: int = 16  # output frames per clip
    fps: int = 8  # playback rate of the decoded clip (16 frames = 2 s)
    image_size: int = 256
    latent_channels: int = 4
    scale_factor: float = 0.18215
    # UNet (widths must be multiples of 32: lvdm hard-codes 32 GroupNorm groups)
    model_channels: int = 320
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    attention_resolutions: list[int] = field(default_factory=lambda: [4, 2, 1])
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    text_context_len: int = 77  # first 77 context tokens -> "text" k/v, the rest -> "image" k/v
    dropout: float = 0.1
    gradient_checkpointing: bool = True  # per UNet block, while training
    # VAE (ch, ch_mult of the LDM ddconfig; 2 res blocks per level, as SD)
    vae_channels: int = 128
    vae_channel_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    # image_proj_model (Resampler_DC): (B, N, feature_dim) -> (B, condition_tokens, context_dim)
    condition_tokens: int = 125
    condition_layers: int = 6
    condition_heads: int = 16
    condition_dim_head: int = 64
    # noise schedule and sampler
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    timestep_spacing: str = "uniform"  # lvdm names: uniform (1, 21, ..., 981) | uniform_trailing
    ddim_steps: int = 50
    ddim_eta: float = 1.0
    guidance_scale: float = 7.5
    guidance_rescale: float = 0.7
    frame_stride: int = 3  # fs conditioning
    # training
    cond_drop_prob: float = 0.1  # clips conditioned on the zero-clip features (CFG dropout) [inferred]
    # latents trained on: "sample" (the reference: posterior.sample()) | "mean" (the posterior
    # mean; for random test VAEs, whose posterior std ~1 leaves nothing to learn)
    vae_posterior: str = "sample"


# --------------------------------------------------------------------------- data


@dataclass
class SourceConfig:
    kind: SourceKind = MISSING
    task: Task = MISSING
    paths: list[str] = MISSING  # shard / jsonl paths or globs, relative to data.root
    media_root: str | None = None  # jsonl media folder, relative to data.root
    weight: float = 1.0  # mixing weight (normalised across sources)
    batch_size: int = 8  # used by "batch" mixing
    max_length: int = 1400
    num_clips: int = 1  # clips per sample (20 for video comprehension)
    min_resolution: int = 100
    min_aspect_ratio: float = 0.3
    bidirectional_queries: bool = True  # generation queries attend to each other


@dataclass
class DataConfig:
    root: str = MISSING  # every source path must stay inside this folder
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    val_sources: dict[str, SourceConfig] = field(default_factory=dict)
    mixing: MixMode = MixMode.sample
    batch_size: int = 8  # examples per batch in "sample" mixing (per rank)
    tokens_per_batch: int | None = None  # "sample" mixing: close a batch once B x longest >= this
    packing: bool = False  # several examples per row, each attending only to itself
    pack_length: int | None = None  # row length when packing; null = the longest source max_length
    fps: int = 8  # sampling rate of the 16-frame window (frame size comes from the video tokenizer)
    frames_per_window: int = 16
    frame_stride: int = 4  # keep frames 0,4,8,12 + the last -> 5 per clip
    num_workers: int = 4
    seed: int = 42
    infinite: bool = True
    feature_cache: str | None = None  # precomputed tokenizer features (skips the frozen tokenizer)


# ------------------------------------------------------------------ stage / optim


@dataclass
class StageConfig:
    name: StageName = MISSING
    # LLM stages
    train_input_proj: bool = True
    train_output_proj: bool = True
    # merged release folder (llm/ + agent/): what an SFT starts from, and the Divot-LLM whose
    # GMM samples the conditioning features of detok_adapt
    init_from: str | None = MISSING
    # de-tokenizer stages (detok, tokenizer, detok_adapt); the VAE is always frozen
    train_diffusion_model: bool = True  # the UNet
    train_image_proj_model: bool = True  # the conditioning resampler
    detokenizer_init_from: str | None = None  # save_pretrained folder the de-tokenizer starts from
    tokenizer_zero_init: bool = False  # tokenizer stage: the reference's zero-init temporal encoder
    var_scale: float | None = None  # detok_adapt: GMM sampling variance scale; null = model.gmm.sample_var_scale
    instruct_prompt: bool = False  # detok_adapt: SFT-gen prompt ([INST] ...) instead of the bare caption
    recon_clips: int = 2  # validation: clips per rank decoded for PSNR/SSIM (0: loss only)
    recon_steps: int | None = None  # validation sampler steps; null = detokenizer.ddim_steps


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.05
    no_decay_norms_and_biases: bool = False  # the reference decays everything
    warmup_steps: int = 500
    min_lr_ratio: float = 0.05  # cosine floor
    grad_clip: float = 1.0


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_param: bool = False
    precision: Precision = Precision.auto
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 200_000_000
    allgather_bucket_size: int = 200_000_000
    ignore_unused_parameters: bool = True
    stage3_gather_16bit_weights_on_model_save: bool = False


@dataclass
class TrainConfig:
    output_dir: str = "outputs/${experiment_name}"
    seed: int = 42
    max_steps: int = 100_000
    grad_accum_steps: int = 1
    save_every: int = 2000
    keep_last: int = 3
    log_every: int = 10
    eval_every: int = 0  # 0 disables periodic validation
    eval_at_start: bool = False  # also validate before the first step (a baseline)
    max_eval_batches: int = 20  # per rank and validation
    resume: str = "auto"  # auto | none | <checkpoint dir>
    max_nonfinite_steps: int = 10  # abort after this many NaN/inf losses in a row
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "divot-llm"
    progress_bar: bool = True  # tqdm on rank 0
    peak_tflops: float | None = None  # per device, for MFU; null = known GPU table / measured CPU GEMM
    plan_gpus_per_node: int = 8  # plan=true: the world to estimate memory for
    plan_nodes: int = 1


# --------------------------------------------------------------------------- root


@dataclass
class DivotConfig:
    experiment_name: str = "default"
    plan: bool = False  # divot-train plan=true: print parameter counts + memory estimate, train nothing
    # Divot's official files (divot-reference §9.3 layout); experiment=divot_official reads them
    pretrained_root: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    video_tokenizer: Any = MISSING  # an option with its own schema (schema_divot, ...)
    detokenizer: Any = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
