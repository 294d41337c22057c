"""The names of the folders and files our tools write, each stated once.

Training, export, merge and inference write and read these folders, and the config
layer's path checks (``divot_llm.config.paths``) recognise each kind by them -- a release
given where a model folder belongs, a run folder where a release belongs -- without
importing the packages that write them. This module imports nothing.

A training run (``divot-train``, ``divot_llm.train.checkpoint``)::

    <output_dir>/checkpoints/step_00002000/engine/     DeepSpeed's files (tag "engine")
                                           trainer_state.json, latest, config.yaml, ...
    <output_dir>/checkpoints/latest                     the newest complete checkpoint
    <output_dir>/checkpoints/.tmp-step_00004000/        a write in progress
    <output_dir>/checkpoints/step_00002000/ema.safetensors   with stage.ema.enabled
    <output_dir>/samples/step_00002000/                 train.sample_every: gifs + grid.png

An fp32 export (``divot-export zero-to-fp32``, ``divot_llm.export.zero``)::

    <out>/model.safetensors (or shards), config.yaml, export.json

A release (``divot-merge``, ``divot_llm.model.release``; what Divot publishes and what an
SFT stage and ``divot-infer`` start from)::

    <release>/llm/              HF Mistral folder, LoRA merged, vocabulary 32262
    <release>/agent/            pytorch_model.bin (or model.safetensors): the video head's
                                input_resampler.* and output_resampler.* tensors (the GMM
                                head's 8: input/output_resampler.proj.{0,2}.{weight,bias})
    <release>/video_tokenizer/  optional: a frozen module in save_pretrained form, when it
    <release>/detokenizer/      has no weights file elsewhere (random-init tiny configs)
    <release>/config.yaml, release.json

A Video-LaVIT release (``rain1011/Video-LaVIT-v1``'s layout; ``divot_llm.model.lavit_release``
reads it, our LaVIT exports write it, each component with an optional ``*_config.json``
sidecar of ours when it is not the release's size)::

    <root>/language_model/       HF Llama folder (+ text tokenizer) + visual_weight.bin
    <root>/language_model_sft/   the same after SFT
    <root>/visual_tokenizer/     tokenizer_encoder.bin, highres_tokenizer_decoder.bin
                                 (+ eva_vitg_psz14.bin: the ViT, read beside the encoder)
    <root>/motion_tokenizer.bin  (ours may be a motion_tokenizer/ save_pretrained folder)
    <root>/video_detokenizer/    diffusers vae/, scheduler/, unet/ (+ the motion encoder)
    <root>/image_detokenizer/    diffusers vae/, scheduler/, unet/
    <root>/video_3d_unet.bin

The resolved ``config.yaml`` every run, checkpoint, export and release carries is named
by ``divot_llm.config.loading.RESOLVED_CONFIG_NAME``, beside the code that writes it.
"""

# ------------------------------------------------------------ runs and checkpoints
CHECKPOINTS_DIR = "checkpoints"  # <output_dir>/checkpoints/
LATEST = "latest"  # names the newest complete checkpoint (DeepSpeed's tag file has the same name)
ENGINE_TAG = "engine"  # the DeepSpeed tag of our checkpoints: <step>/engine/
TRAINER_STATE = "trainer_state.json"  # step, world size, counters of one checkpoint
TMP_PREFIX = ".tmp-"  # a checkpoint still being written: never resumed, never exported
EMA_FILE = "ema.safetensors"  # in a checkpoint of a run with stage.ema.enabled: the averaged weights
SAMPLES_DIR = "samples"  # <output_dir>/samples/step_00000100/*.gif, grid.png (train.sample_every)

# ------------------------------------------------------------ divot-export zero-to-fp32
EXPORT_INFO = "export.json"  # source checkpoint, tag, ZeRO stage, ranks, step

# ------------------------------------------------------------------------ releases
LLM_DIR = "llm"
AGENT_DIR = "agent"
AGENT_BIN = "pytorch_model.bin"  # the published release's agent file
AGENT_SAFETENSORS = "model.safetensors"
VIDEO_TOKENIZER_DIR = "video_tokenizer"
DETOKENIZER_DIR = "detokenizer"
RELEASE_INFO = "release.json"  # stage, source checkpoint, config hash, dtype, verification

# ------------------------------------------------- saved components (save_pretrained)
TOKENIZER_CONFIG = "tokenizer_config.json"  # a video tokenizer's config, with its arch
DETOKENIZER_CONFIG = "detokenizer_config.json"  # a de-tokenizer's config, with its arch
MOTION_TOKENIZER_CONFIG = "motion_tokenizer_config.json"  # a motion tokenizer's config, with its arch
KEYFRAME_TOKENIZER_CONFIG = "keyframe_tokenizer_config.json"  # a keyframe tokenizer's config, with its arch
# a motion-conditioned video de-tokenizer's config (beside the release's vae/ scheduler/ unet/)
MOTION_DETOKENIZER_CONFIG = "motion_detokenizer_config.json"

# ------------------------------------------------------- Video-LaVIT releases (see above)
LAVIT_LLM_DIR = "language_model"
LAVIT_SFT_LLM_DIR = "language_model_sft"
LAVIT_VISUAL_WEIGHT = "visual_weight.bin"  # in an LLM folder: its keyframe + motion tokenizer weights
LAVIT_VISUAL_TOKENIZER_DIR = "visual_tokenizer"
LAVIT_TOKENIZER_ENCODER = "tokenizer_encoder.bin"
LAVIT_TOKENIZER_DECODER = "highres_tokenizer_decoder.bin"
LAVIT_EVA_VIT = "eva_vitg_psz14.bin"  # beside the encoder: the ViT's weights, as LaVIT reads them
LAVIT_MOTION_TOKENIZER = "motion_tokenizer.bin"
LAVIT_MOTION_TOKENIZER_DIR = "motion_tokenizer"  # ours: a save_pretrained folder instead of the .bin
LAVIT_VIDEO_DETOKENIZER_DIR = "video_detokenizer"
LAVIT_IMAGE_DETOKENIZER_DIR = "image_detokenizer"
LAVIT_VIDEO_3D_UNET = "video_3d_unet.bin"
