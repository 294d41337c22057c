"""Typed, strict schemas for every config group.

Hydra merges each YAML in ``conf/`` onto these dataclasses, so a misspelt key
(``lora.rnak``) or a wrong type (``optim.lr=fast``) fails at start-up with a message
that names the key, instead of being silently ignored half-way through a 7B run.

The component groups (``video_tokenizer``, ``detokenizer``, ``motion_tokenizer``,
``keyframe_tokenizer``, ``motion_detokenizer``) have no schema here: each
component brings its own config dataclass, next to its class, and the option's defaults
list pulls it in as ``schema_<arch>`` (see ``divot_llm/config/components.py``); their
top-level fields are typed ``Any`` so that each option can bring its schema.

Beyond its type a field may carry a ``Check`` (``checked(...)``): a range or a set of
choices, validated wherever a config is composed or loaded (``divot-config``,
``divot-train``, ``divot-merge``, ``divot-infer``), or ``path=``: a local path of some
kind, checked before anything is built (``divot_llm/config/paths.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING


class PathKind(str, Enum):
    """What a local path field must name (see ``divot_llm/config/paths.py``)."""

    file = "a file"
    folder = "a folder"
    file_or_folder = "a file or a folder"
    hf_model = "a Hugging Face model folder (config.json)"
    release = "a release (llm/ + agent/)"
    detokenizer = "a saved de-tokenizer folder"
    checkpoint = "a training checkpoint"


@dataclass(frozen=True)
class Check:
    """What a field's value must satisfy beyond its type. Bounds apply to each element of
    a list; null values of optional fields pass (they mean "not used")."""

    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le
    lt: float | None = None  # value < lt
    choices: tuple[str, ...] = ()
    path: PathKind | None = None  # a local path: checked by config/paths.py, not at composition

    def violation(self, value: Any) -> str | None:
        """Why ``value`` is not allowed ("must be >= 1"), or None."""
        if self.choices:
            return None if value in self.choices else "must be one of " + ", ".join(map(repr, self.choices))
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        within = (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )  # NaN is within no bound
        return None if within else f"must be {self.describe()}"

    def describe(self) -> str:
        """The allowed values: ">= 1", "> 0", "in [0, 1]"."""
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return " and ".join(f"{op} {bound:g}" for op, bound in bounds if bound is not None)


CHECK = "check"  # the dataclass field metadata key holding a field's Check


def checked(default: Any = MISSING, *, default_factory: Any = None, **check: Any) -> Any:
    """A schema field with a ``Check``: ``r: int = checked(32, ge=1)``."""
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={CHECK: Check(**check)})
    return field(default=default, metadata={CHECK: Check(**check)})


class Task(str, Enum):
    """What a data source trains (one sequence template each, see ``data/sequences``)."""

    pretrain_comp = "pretrain_comp"  # video/image -> caption
    pretrain_gen = "pretrain_gen"  # caption -> video/image queries
    sft_comp = "sft_comp"  # multi-turn [INST] QA about a video/image
    sft_gen = "sft_gen"  # [INST] instruction + caption -> video/image queries


class SourceKind(str, Enum):
    webdataset = "webdataset"  # tar shards: <key>.mp4|webm|gif|jpg|png + <key>.txt|json
    jsonl = "jsonl"  # one JSON object per line, media paths relative to media_root
    folder = "folder"  # folders of <name>.gif|mp4|...|jpg|png, each with a <name>.txt caption
    # VidTok's layout: CSV files with a `videos` column of video paths relative to media_root
    # (VidTok's DATA_DIR); no text, so only VidTok examples read it (data/vidtok_examples.py)
    vidtok_csv = "vidtok_csv"


class MixMode(str, Enum):
    sample = "sample"  # each example picks its source by weight: batches mix tasks
    batch = "batch"  # each batch picks one source and takes its batch_size (the reference)


class Precision(str, Enum):
    auto = "auto"  # bf16 on GPU, fp32 on CPU (bf16 GEMMs are ~100x slower on AVX2 CPUs)
    bf16 = "bf16"
    fp32 = "fp32"


# --------------------------------------------------------------------------- model

# llm.attn_implementation: transformers' kernels, and flex_attention (FlexAttention block masks)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention")


@dataclass
class LLMConfig:
    """The Mistral backbone: loaded from ``path`` (a local HF folder) or built randomly
    from the shape fields when ``path`` is null (tiny test/demo models)."""

    # every model option sets it (null = random init)
    path: str | None = checked(MISSING, path=PathKind.hf_model)
    vocab_size: int = checked(32000, ge=1)  # base vocabulary, before the 262 Divot tokens are added
    hidden_size: int = checked(4096, ge=1)
    intermediate_size: int = checked(14336, ge=1)
    num_hidden_layers: int = checked(32, ge=1)
    num_attention_heads: int = checked(32, ge=1)
    num_key_value_heads: int = checked(8, ge=1)
    max_position_embeddings: int = checked(32768, ge=1)
    rms_norm_eps: float = checked(1e-5, gt=0)
    rope_theta: float = checked(10000.0, gt=0)
    sliding_window: int | None = checked(4096, ge=1)
    # flex_attention: block masks on GPU (dense SDPA elsewhere); flash_attention_2 serves batches
    # without query blocks (others fall back to SDPA); see divot_llm/model/attention.py
    attn_implementation: str = checked("sdpa", choices=ATTN_IMPLEMENTATIONS)
    # activation checkpointing of decoder layers 0, k, 2k, ...: 0 none, 1 every layer (full recompute)
    checkpoint_every: int = checked(0, ge=0)
    compile: bool = False  # torch.compile each decoder layer
    # added lm_head rows = scale x mean of old rows (new input rows = mean)
    new_lm_head_rows_scale: float = checked(3.0, ge=0)


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = checked(32, ge=1)
    alpha: int = checked(32, gt=0)
    dropout: float = checked(0.05, ge=0, le=1)
    bias: str = checked("none", choices=("none", "all", "lora_only"))  # peft: none | all | lora_only
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

    num_components: int = checked(16, ge=1)  # k
    var_floor: float = checked(1e-5, gt=0)  # variance = clamp(softplus(x), var_floor) * var_scale
    var_scale: float = checked(1.0, gt=0)  # training-time scale
    sample_var_scale: float = checked(0.1, ge=0)  # inference-time scale (std x sqrt(0.1))
    normalize_by_dim: bool = True  # NLL / d, as the reference


# model.head: what turns query hidden states into features (and features into LLM inputs)
VIDEO_HEADS = ("gmm", "fsq_factorized", "fsq_flat")


@dataclass
class CodeHeadConfig:
    """Sampling defaults of the code heads (``model.head=fsq_*``)."""

    temperature: float = checked(1.0, gt=0)  # softmax temperature of each sampled code
    top_k: int = checked(0, ge=0)  # keep the k likeliest values of each code (0: all)
    cfg_scale: float = checked(1.0, ge=0)  # classifier-free guidance scale (1: no guidance)


RESAMPLER_KINDS = ("tokenwise", "queries")


@dataclass
class ResamplerConfig:
    """How a clip's N feature tokens become the LLM's tokens per clip (``model.resampler``;
    divot_llm/model/resampler.py)."""

    # tokenwise: one LLM token per feature token (the video head's modules alone, N <= 256);
    # queries: num_queries learned queries cross-attend to the N features (input), and N
    # learned position queries to the LLM's query states (output): any N
    kind: str = checked("tokenwise", choices=RESAMPLER_KINDS)
    num_queries: int = checked(64, ge=1, le=256)  # M, LLM tokens per clip (the 256 <frame_i> tokens)
    heads: int = checked(4, ge=1)  # attention heads of each cross-attention layer (divide the LLM width)
    layers: int = checked(1, ge=1)  # cross-attention layers on each side


# model.lavit.keyframe_input: how the LLM reads a keyframe (divot_llm/model/lavit_llm.py)
LAVIT_KEYFRAME_INPUTS = ("codes", "features")
LAVIT_FAMILIES = ("llama", "mistral")


@dataclass
class LaVITModelConfig:
    """Video-LaVIT's LLM over text + keyframe codes + motion codes (``model.lavit``;
    ``divot_llm/model/lavit_llm.py``): the id layout of ``divot_llm.text.lavit_vocab`` on
    top of the text tokenizer's vocabulary (``model.llm.vocab_size``)."""

    # the architecture of a random build from model.llm's shape fields (tests); a loaded
    # folder (model.llm.path: a released language_model/) brings its own
    family: str = checked("llama", choices=LAVIT_FAMILIES)
    visual_codes: int = checked(16384, ge=1)  # the keyframe tokenizer's codebook
    motion_codes: int = checked(1024, ge=1)  # the motion tokenizer's codebook
    motion_tokens: int = checked(135, ge=1)  # motion codes per clip
    max_visual_tokens: int = checked(256, ge=1)  # the most keyframe codes generation draws
    # codes: a keyframe enters as its visual-code ids (what generation writes); features:
    # the keyframe tokenizer's continuous features replace those ids' embeddings (the
    # release's understanding path; the data then brings ``keyframe_feats``)
    keyframe_input: str = checked("codes", choices=LAVIT_KEYFRAME_INPUTS)


@dataclass
class ModelConfig:
    name: str = MISSING
    # folder with tokenizer.model (+ added tokens); null = tests only
    tokenizer_path: str | None = checked(MISSING, path=PathKind.file_or_folder)
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # gmm: continuous features (Divot, VidTok KL); fsq_factorized: one softmax per FSQ code
    # digit; fsq_flat: one softmax over all codes (at most 32768); see divot_llm/model/heads.py
    head: str = checked("gmm", choices=VIDEO_HEADS)
    gmm: GMMConfig = field(default_factory=GMMConfig)
    code_head: CodeHeadConfig = field(default_factory=CodeHeadConfig)
    resampler: ResamplerConfig = field(default_factory=ResamplerConfig)
    lm_loss_scale: float = checked(1.0, ge=0)
    gmm_loss_scale: float = checked(1.0, ge=0)  # weight of the generation head's loss (any head)
    # Video-LaVIT's LLM (model=lavit_tiny | lavit_7b; stage=lavit_pretrain | lavit_sft); null: Divot's
    lavit: LaVITModelConfig | None = None


# --------------------------------------------------------------------------- data


@dataclass
class SourceConfig:
    kind: SourceKind = MISSING
    # what the source's text trains: required by the LLM stages; the de-tokenizer and VidTok
    # stages read any caption source (null: captions or QA), and a vidtok_csv source has no text
    task: Task | None = None
    # shard / jsonl / csv paths or globs (folder kind: folders), under data.root; a webdataset
    # source's entries may also be pipe:CMD, http(s):// URLs, URLs of a data.stream.commands
    # scheme (s3://, gs://) and brace patterns (shard-{000..099}.tar); see data/shard_stream.py
    paths: list[str] = field(default_factory=list)
    # webdataset: a text file under data.root naming one shard per line, as paths entries
    # (no globs; blank lines and # comments ignored), read after paths: for millions of shards
    shard_list: str | None = None
    media_root: str | None = None  # jsonl / vidtok_csv media folder, relative to data.root
    weight: float = checked(1.0, gt=0)  # mixing weight (normalised across sources)
    batch_size: int = checked(8, ge=1)  # used by "batch" mixing
    max_length: int = checked(1400, ge=1)
    num_clips: int = checked(1, ge=1)  # clips per sample (20 for video comprehension)
    min_resolution: int = checked(100, ge=0)
    min_aspect_ratio: float = checked(0.3, ge=0, le=1)
    bidirectional_queries: bool = True  # generation queries attend to each other
    # VidTok examples (stage=vidtok): clips of frames every round(video fps / sample_fps)
    # source frames (VidTok trains at 3, validates at 8); null = every frame
    sample_fps: float | None = checked(None, gt=0)
    # VidTok examples: every clip starts at this frame (fixed validation clips, VidTok's
    # start_index); motion examples: every example is this clip of its video (clamped to
    # the last); null = a random start / clip per sample and epoch
    start_index: int | None = checked(None, ge=0)


@dataclass
class MotionFieldConfig:
    """Motion-vector fields as Video-LaVIT extracts them (seed-systems.md b.1, b.1a), with
    PyAV alone (``divot_llm/data/motion_vectors.py``): the video is re-encoded to MPEG-4
    Part 2 at ``fps`` and ``bitrate`` with an I-frame every ``gop`` frames; a clip is two
    GOPs (``2 * gop`` frames: I, gop-1 P, I, gop-1 P) whose vectors are max-pooled per
    ``block`` x ``block`` macroblock and resized to ``height`` x ``width``: one
    ``(2, 2 * gop, height, width)`` field per clip. The defaults are the released
    tokenizer's (24 x 20 x 36)."""

    fps: float = checked(6.0, gt=0)  # re-encode frame rate
    bitrate: int = checked(8_000_000, ge=1)  # re-encode bit rate, bits/s
    gop: int = checked(12, ge=2)  # frames per GOP; a clip is two
    block: int = checked(16, ge=1)  # macroblock side: pad to a multiple, max-pool over
    height: int = checked(20, ge=1)  # field rows after the resize
    width: int = checked(36, ge=1)  # field columns after the resize
    # per-axis std of the normalised vectors (x, y); divided by 10 when rescale (tokenizer input)
    std: list[float] = field(default_factory=lambda: [0.0993703, 0.1130276])
    rescale: bool = True
    clip_every: int = checked(2, ge=1)  # keep every n-th qualifying I-frame as a clip start
    max_clips: int = checked(8, ge=1)  # clips per video, at most

    @property
    def clip_frames(self) -> int:
        """Frames per clip: two GOPs."""
        return 2 * self.gop


@dataclass
class StreamConfig:
    """How a webdataset source's streamed shards (URLs, ``pipe:``) are read
    (``divot_llm/data/shard_stream.py``); local shards are read by random access."""

    # samples a reader holds to shuffle a streamed shard's samples, emptied at the shard's
    # end (memory: this x the sample size, per dataloader worker); 1 = tar order
    shuffle_buffer: int = checked(100, ge=1)
    timeout: float = checked(60.0, gt=0)  # seconds without a byte before a read fails
    retries: int = checked(3, ge=0)  # re-reads of a shard whose transport failed, then its rest is skipped
    retry_backoff: float = checked(1.0, ge=0)  # seconds before the first retry, doubled before each next
    # the command reading a URL of each other scheme to stdout: split with shlex, the URL
    # replaces the {url} word (one argument; no shell); the user's CLI and credentials
    commands: dict[str, str] = field(
        default_factory=lambda: {"s3": "aws s3 cp {url} -", "gs": "gcloud storage cat {url}"}
    )


RESIZE_KERNELS = ("pil", "torch")  # data.resize_kernel: see divot_llm/data/clip_sampling.py


@dataclass
class DataConfig:
    root: str = checked(MISSING, path=PathKind.folder)  # every source path must stay inside this folder
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    val_sources: dict[str, SourceConfig] = field(default_factory=dict)
    # "batch": every rank takes the same source in a step (drawn from seed + step)
    mixing: MixMode = MixMode.sample
    batch_size: int = checked(8, ge=1)  # examples per batch in "sample" mixing (per rank)
    # both mixings: close a batch once its tokens (B x longest; packed: rows x longest row) >= this
    tokens_per_batch: int | None = checked(None, ge=1)
    packing: bool = False  # several examples per row, each attending only to itself
    # row length when packing; null = the longest source max_length
    pack_length: int | None = checked(None, ge=1)
    # sampling rate of the 16-frame window (frame size comes from the video tokenizer)
    fps: int = checked(8, gt=0)
    frames_per_window: int = checked(16, ge=1)
    frame_stride: int = checked(4, ge=1)  # keep frames 0,4,8,12 + the last -> 5 per clip
    # the frames' bilinear resize: "pil" is the reference's, bit for bit; "torch" is the same
    # filter in torch's uint8 kernel, within one level of "pil", 3-6x faster per frame
    # (divot_llm/data/clip_sampling.py)
    resize_kernel: str = checked("pil", choices=RESIZE_KERNELS)
    num_workers: int = checked(4, ge=0)
    seed: int = 42
    infinite: bool = True
    # precomputed tokenizer features (skips the frozen tokenizer)
    feature_cache: str | None = checked(None, path=PathKind.folder)
    # stop the run when a reader has skipped more than this fraction of a source's records
    # as bad (size filters aside), checked after its first 100; 1.0 never stops
    max_skip_fraction: float = checked(0.5, ge=0, le=1)
    stream: StreamConfig = field(default_factory=StreamConfig)  # streamed webdataset shards
    motion: MotionFieldConfig = field(default_factory=MotionFieldConfig)  # Video-LaVIT motion fields
    # precomputed motion fields or motion codes (`divot-data motion-cache`): the motion
    # loader reads them instead of re-encoding videos; null = extract while loading
    motion_cache: str | None = checked(None, path=PathKind.folder)


# ------------------------------------------------------------------ stage / optim

# stage.text_encoder.kind: see divot_llm/text/encoders.py
TEXT_ENCODER_KINDS = ("bert", "clip", "llm_mean")


@dataclass
class TextEncoderConfig:
    """The frozen text encoder that turns a caption into one conditioning vector (t2v)."""

    # bert: last hidden states mean-pooled without [CLS] (the seed's use_bert_text_cond);
    # clip: the CLIP text tower's pooled (EOS) output; llm_mean: the LLM's input embeddings
    # of the caption's tokens, mean-pooled
    kind: str = checked("llm_mean", choices=TEXT_ENCODER_KINDS)
    # local HF folder (BERT / CLIP text model + tokenizer, or a causal LM whose input
    # embeddings are read); null = model.llm.path (llm_mean only)
    path: str | None = checked(None, path=PathKind.hf_model)
    max_length: int = checked(77, ge=1)  # caption tokens kept (longer captions are cut)


@dataclass
class EmaConfig:
    """An exponential moving average of the trained weights (de-tokenizer stages): the seed
    video-diffusion-pytorch Trainer's ``ema_decay`` / ``update_ema_every`` /
    ``step_start_ema``. At optimizer steps s (counted from 1) divisible by ``update_every``
    the average is set to the weights while s < ``start_step`` and moved towards them
    (``avg = decay * avg + (1 - decay) * w``) from then on. Kept in every checkpoint
    (``ema.safetensors``); ``divot-export detokenizer`` writes it unless ``--raw``."""

    enabled: bool = False
    decay: float = checked(0.995, ge=0, lt=1)
    update_every: int = checked(10, ge=1)
    start_step: int = checked(2000, ge=0)


@dataclass
class OptimConfig:
    lr: float = checked(1e-4, gt=0)
    betas: list[float] = checked(default_factory=lambda: [0.9, 0.98], ge=0, lt=1)
    eps: float = checked(1e-6, gt=0)
    weight_decay: float = checked(0.05, ge=0)
    no_decay_norms_and_biases: bool = False  # the reference decays everything
    warmup_steps: int = checked(500, ge=0)
    min_lr_ratio: float = checked(0.05, ge=0, le=1)  # cosine floor
    grad_clip: float = checked(1.0, ge=0)


@dataclass
class VidTokLossConfig:
    """stage=vidtok's objective (``divot_llm.tokenizers.vidtok.objective``); defaults are
    the released configs' (``GeneralLPIPSWithDiscriminator``, docs/seed-systems.md a.3)."""

    pixel_weight: float = checked(1.0, ge=0)  # |x - x_rec|
    perceptual_weight: float = checked(1.0, ge=0)  # LPIPS per frame (eval.lpips_path); 0: none
    logvar_init: float = 0.0
    learn_logvar: bool = True  # the NLL's log-variance is trained with the autoencoder
    kl_weight: float = checked(1e-6, ge=0)  # KL regularizer's kl_loss
    aux_weight: float = checked(1.0, ge=0)  # FSQ regularizer's aux_loss (entropy + commitment)
    disc_type: str = checked("2d", choices=("2d", "3d"))  # per-frame or spatio-temporal PatchGAN
    disc_channels: int = checked(64, ge=1)  # ndf: channels of the first conv
    disc_layers: int = checked(3, ge=1)
    # Optimizer steps before the GAN joins in (generator term and discriminator updates).
    # The seed's disc_start 20001 counts Lightning's global step, which moves once per
    # optimizer (twice a step): about 10000 of our steps.
    disc_start: int = checked(10000, ge=0)
    disc_weight: float = checked(0.2, ge=0)  # times the adaptive weight |grad nll| / |grad g|
    disc_factor: float = checked(1.0, ge=0)
    max_adaptive_weight: float = checked(1e4, gt=0)  # the adaptive weight's clamp
    gen_loss_cross_entropy: bool = True  # non-saturating generator loss; false: -mean(logits)
    lecam_weight: float = checked(0.005, ge=0)  # LeCAM regularisation of the discriminator; 0: off
    lecam_decay: float = checked(0.999, ge=0, lt=1)  # EMA of the real/fake logits it pulls towards


@dataclass
class MotionVQConfig:
    """stage=motion_tokenizer's vector quantisation (``divot_llm.tokenizers.motion.objective``):
    the codebook follows an exponential moving average of the L2-normalised latents
    assigned to each code (no gradient reaches it), the encoder is pulled towards its codes
    by the commitment term, and codes that fall out of use restart from batch latents."""

    commitment_weight: float = checked(0.25, ge=0)  # beta x |z - sg(e)|^2 (VQ-VAE's 0.25)
    ema_decay: float = checked(0.99, gt=0, lt=1)  # per step, of the assignment counts and latent sums
    # a code restarts from a batch latent once its average assignments per step fall below
    # this fraction of the uniform share (assignments per step / codebook size); 0: never
    restart_threshold: float = checked(0.03, ge=0, lt=1)


@dataclass
class StageConfig:
    name: str = MISSING  # a key of divot_llm.train.stages.STAGES (checked when training starts)
    ema: EmaConfig = field(default_factory=EmaConfig)  # de-tokenizer stages (t2v: on)
    # LLM stages
    train_input_proj: bool = True
    train_output_proj: bool = True
    # merged release folder (llm/ + agent/): what an SFT starts from, and the Divot-LLM whose
    # GMM samples the conditioning features of detok_adapt; stage=vidtok: see below
    init_from: str | None = checked(MISSING, path=PathKind.release)
    # de-tokenizer stages (detok, tokenizer, detok_adapt); the VAE is always frozen
    train_diffusion_model: bool = True  # the UNet
    train_image_proj_model: bool = True  # the conditioning resampler
    # save_pretrained folder the de-tokenizer starts from
    detokenizer_init_from: str | None = checked(None, path=PathKind.detokenizer)
    tokenizer_zero_init: bool = False  # tokenizer stage: the reference's zero-init temporal encoder
    # detok_adapt: GMM sampling variance scale; null = model.gmm.sample_var_scale
    var_scale: float | None = checked(None, ge=0)
    instruct_prompt: bool = False  # detok_adapt: SFT-gen prompt ([INST] ...) instead of the bare caption
    recon_clips: int = checked(2, ge=0)  # validation: clips per rank decoded for PSNR/SSIM (0: loss only)
    recon_steps: int | None = checked(None, ge=1)  # validation sampler steps; null = detokenizer.ddim_steps
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)  # t2v conditioning
    # vidtok: the autoencoder (video_tokenizer=vidtok_*) against a PatchGAN discriminator; it
    # starts from stage.init_from (a released .ckpt / .safetensors or a divot-export vidtok
    # folder, checked by the stage) or else from video_tokenizer.pretrained_path
    fix_encoder: bool = False  # second stage: train the decoder alone
    fix_decoder: bool = False
    vidtok_loss: VidTokLossConfig = field(default_factory=VidTokLossConfig)
    disc_optim: OptimConfig = field(default_factory=OptimConfig)  # the discriminator's (stage=vidtok)
    # motion_tokenizer: the motion tokenizer of motion_tokenizer=<option> (its pretrained_path
    # or random init) on data.motion fields; recon_clips: clips in the validation strip
    motion_vq: MotionVQConfig = field(default_factory=MotionVQConfig)


@dataclass
class DeepSpeedConfig:
    zero_stage: int = checked(2, ge=0, le=3)
    offload_optimizer: bool = False
    offload_param: bool = False
    precision: Precision = Precision.auto
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: int = checked(200_000_000, ge=1)
    allgather_bucket_size: int = checked(200_000_000, ge=1)
    ignore_unused_parameters: bool = True
    stage3_gather_16bit_weights_on_model_save: bool = False


@dataclass
class TrainConfig:
    output_dir: str = "outputs/${experiment_name}"
    seed: int = 42
    max_steps: int = checked(100_000, ge=1)
    grad_accum_steps: int = checked(1, ge=1)
    save_every: int = checked(2000, ge=0)
    keep_last: int = checked(3, ge=0)
    log_every: int = checked(10, ge=1)
    eval_every: int = checked(0, ge=0)  # 0 disables periodic validation
    eval_at_start: bool = False  # also validate before the first step (a baseline)
    max_eval_batches: int = checked(20, ge=1)  # per rank and validation
    resume: str = "auto"  # auto | none | <checkpoint dir>
    max_nonfinite_steps: int = checked(10, ge=1)  # abort after this many NaN/inf losses in a row
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "divot-llm"
    progress_bar: bool = True  # tqdm on rank 0
    # per device, for MFU; null = known GPU table / measured CPU GEMM
    peak_tflops: float | None = checked(None, gt=0)
    # stage=t2v: every N steps rank 0 samples one clip per prompt (with the EMA weights when
    # stage.ema.enabled) into <output_dir>/samples/step_N/ (gifs + grid.png) and TensorBoard;
    # 0 = off. Prompts: sample_prompts; sampler steps: sample_steps (null = the de-tokenizer's)
    sample_every: int = checked(0, ge=0)
    sample_prompts: list[str] = field(
        default_factory=lambda: [
            "a red circle moving left on a blue background",
            "a yellow square moving up on a black background",
            "a white triangle moving right on a green background",
        ]
    )
    sample_steps: int | None = checked(None, ge=1)
    plan_gpus_per_node: int = checked(8, ge=1)  # plan=true: the world to estimate memory for
    plan_nodes: int = checked(1, ge=1)


@dataclass
class EvalConfig:
    """Weights of the reconstruction metrics that need pretrained networks
    (``divot_llm.metrics``): local files the user downloads once, nothing is fetched at run
    time. Null: that metric is not computed. Read by ``divot-eval``, ``divot-infer
    reconstruct`` and the validation of stages that reconstruct video."""

    # torchvision's ImageNet vgg16 state dict (vgg16-397923af.pth): LPIPS's VGG16 features
    lpips_path: str | None = checked(None, path=PathKind.file)
    # the LPIPS v0.1 VGG linear heads as taming-transformers ships them (vgg.pth)
    lpips_heads_path: str | None = checked(None, path=PathKind.file)
    # a TorchScript Kinetics-400 I3D called as StyleGAN-V's i3d_torchscript.pt: FVD
    i3d_path: str | None = checked(None, path=PathKind.file)


# --------------------------------------------------------------------------- root


@dataclass
class DivotConfig:
    experiment_name: str = "default"
    plan: bool = False  # divot-train plan=true: print parameter counts + memory estimate, train nothing
    # Divot's official files (divot-reference §9.3 layout); experiment=divot_official reads them
    pretrained_root: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    video_tokenizer: Any = MISSING  # the chosen tokenizer's config dataclass (its schema_<arch>)
    detokenizer: Any = MISSING  # the chosen de-tokenizer's config dataclass
    motion_tokenizer: Any = None  # the chosen motion tokenizer's config dataclass (optional group)
    keyframe_tokenizer: Any = (
        None  # the chosen keyframe (image) tokenizer's config dataclass (optional group)
    )
    motion_detokenizer: Any = (
        None  # keyframe + motion -> clip de-tokenizer's config dataclass (optional group)
    )
    data: DataConfig = field(default_factory=DataConfig)
    stage: StageConfig = field(default_factory=StageConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
