"""What differs between training stages, as one small object per stage kind: the module
the DeepSpeed engine trains, the data it reads, how a batch becomes the engine's inputs,
which losses and rates are logged, and validation. ``Trainer`` keeps the one loop
(engine, accumulation, NaN skips, signals, checkpoints, logging) around it.

* ``LLMRecipe`` -- pretrain / sft_comp / sft_gen: the Divot LLM on token sequences; clips
  go through the frozen video tokenizer in ``prepare``.
* ``DetokRecipe`` -- detok / detok_adapt: the de-tokenizer on full windows
  (``data.windows``); its conditioning features come from the frozen tokenizer (detok)
  or are sampled from a trained Divot-LLM's GMM for each clip's caption (detok_adapt).
* ``TokenizerRecipe`` -- tokenizer: ``TokenizerDiffusionObjective`` (tokenizer after its
  frozen ViT + de-tokenizer) on full windows.

Everything random at build time comes from ``train.seed`` on the CPU, so every rank, a
resumed run and the export (whose checkpoints hold no frozen weights) rebuild the same
frozen values whatever the device.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch import nn

from divot_llm.config.schema import DETOK_STAGES, StageName
from divot_llm.train import distributed
from divot_llm.train.metrics import FlopModel, tokenizer_flops_per_clip
from divot_llm.train.validate import validate as validate_llm

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "labels", "ids_cmp_mask", "ids_gen_mask")
CLIP_MASK_KEYS = ("embeds_cmp_mask", "embeds_gen_mask")
PACKED_KEYS = ("segment_ids", "position_ids")  # only in packed batches (data.packing)
VAL_SEED = 1234  # validation draws (diffusion noise, timesteps, sampler) are fixed: comparable across steps


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stage_name(cfg: Any) -> StageName:
    return StageName(str(getattr(cfg.stage.name, "value", cfg.stage.name)))


class Recipe:
    """The stage-specific half of training (see the module docstring).

    Attributes:
        loss_names: names of ``loss_terms``; the first is backpropagated, all are logged
            as ``train/<name>``.
        rate_names: ``counts`` keys logged as ``perf/<name>_per_s``, with their short
            progress-bar labels.
        module: the engine's module, after ``build``.
    """

    loss_names: tuple[str, ...] = ("loss",)
    rate_names: dict[str, str] = {"samples": "samp/s"}

    def __init__(self, cfg: Any, device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        # frozen helpers (tokenizer, LLM) run in bf16 on GPU, fp32 on CPU
        self.frozen_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.module: nn.Module | None = None

    def build(self) -> nn.Module:
        """The engine's module on ``device`` (frozen helpers set up too)."""
        raise NotImplementedError

    def loader(self, split: str, rank: int, world_size: int, build_loader: Callable | None = None):
        """This rank's loader of a split; ``build_loader`` replaces the stage's default
        builder (same signature), e.g. with hand-made batches in tests."""
        raise NotImplementedError

    def prepare(self, batch: dict) -> dict[str, Any]:
        """Loader batch -> engine keyword inputs on the device."""
        raise NotImplementedError

    def loss_terms(self, out: Any) -> list[torch.Tensor]:
        """Scalar tensors in ``loss_names`` order from the engine's output."""
        raise NotImplementedError

    def counts(self, batch: dict) -> tuple[float, float, dict[str, float]]:
        """(model FLOPs, hardware FLOPs, {rate name: count}) of one micro-batch."""
        raise NotImplementedError

    def validate(self, engine, val_loader, max_batches: int) -> dict[str, float] | None:
        """Validation metrics (collective; None when some rank has no batch)."""
        raise NotImplementedError

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)

    @property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


# ==================================================================== LLM stages


def build_models(cfg: Any, dtype: torch.dtype):
    """(text tokenizer, video tokenizer, model) of an LLM stage, built on the CPU from ``train.seed``.

    Everything random at build time -- the tokenizer and LLM of tiny random-init configs,
    the LoRA and projection inits -- comes from this one seeded sequence on the CPU, so
    every rank, a resumed run and the release export (whose checkpoints hold no frozen
    weights) rebuild the same values whatever the device.
    """
    from divot_llm.model import build_stage_model
    from divot_llm.text import load_text_tokenizer
    from divot_llm.tokenizers import build_video_tokenizer

    seed_everything(int(cfg.train.seed))
    text_tokenizer = load_text_tokenizer(cfg.model.tokenizer_path)
    video_tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    model = build_stage_model(cfg, video_tokenizer, init_from=cfg.stage.init_from, dtype=dtype)
    return text_tokenizer, video_tokenizer, model


class LLMRecipe(Recipe):
    """pretrain / sft_comp / sft_gen: LM cross-entropy + GMM NLL of the Divot LLM."""

    loss_names = ("loss", "lm_loss", "gmm_loss")
    rate_names = {"tokens": "tok/s", "samples": "samp/s"}

    def build(self) -> nn.Module:
        cfg = self.cfg
        self.text_tokenizer, tokenizer, model = build_models(cfg, self.dtype)
        self.video_tokenizer = tokenizer.to(self.device, self.frozen_dtype)
        self.module = model.to(self.device)
        # Counted before DeepSpeed wraps the model: under ZeRO-3 parameters are shards after.
        self.flop_model = FlopModel.from_model(
            self.module,
            tokenizer_flops_per_clip(self.video_tokenizer, self.device),
            recompute=bool(cfg.model.llm.gradient_checkpointing),
        )
        return self.module

    def loader(self, split: str, rank: int, world_size: int, build_loader: Callable | None = None):
        if build_loader is None:
            from divot_llm.data.loader import build_loader
        tok = self.video_tokenizer
        extra = {}
        if self.cfg.data.feature_cache:  # the loader checks the cache was made by this tokenizer
            from divot_llm.data.feature_cache import expected_info

            tok_cfg = dataclasses.asdict(self.cfg.video_tokenizer)
            extra["cache_info"] = expected_info(tok, tok_cfg, self.cfg.data)
        return build_loader(
            self.cfg.data,
            self.text_tokenizer,
            tokens_per_clip=tok.num_tokens,
            frames_per_clip=tok.frames_per_clip,
            image_size=tok.input_size,
            rank=rank,
            world_size=world_size,
            split=split,
            **extra,
        )

    @torch.no_grad()
    def prepare(self, batch: dict) -> dict[str, torch.Tensor]:
        """Clips encoded to ``video_feats``: only real clips (``embeds_cmp_mask |
        embeds_gen_mask``) go through the tokenizer; padded clip slots stay zero. A batch
        from a feature cache brings ``video_feats``."""
        keys = MODEL_INPUT_KEYS + CLIP_MASK_KEYS + tuple(k for k in PACKED_KEYS if k in batch)  # packing
        inputs = {k: batch[k].to(self.device, non_blocking=True) for k in keys}
        if "video_feats" in batch:
            inputs["video_feats"] = batch["video_feats"].to(self.device, non_blocking=True)
            return inputs
        from divot_llm.data.video import uint8_to_model_pixels  # (data modules load lazily: PyAV)

        frames = batch["frames"]  # (B, C, F, 3, S, S) uint8
        real_bc = batch["embeds_cmp_mask"] | batch["embeds_gen_mask"]
        tok = self.video_tokenizer
        feats = torch.zeros(
            *real_bc.shape, tok.num_tokens, tok.feature_dim, dtype=tok.dtype, device=self.device
        )
        if real_bc.any():
            clips_uint8 = frames[real_bc].to(self.device, non_blocking=True)  # (G, F, 3, S, S)
            feats[real_bc.to(self.device)] = tok.encode(uint8_to_model_pixels(clips_uint8).to(tok.dtype))
        inputs["video_feats"] = feats
        return inputs

    def loss_terms(self, out) -> list[torch.Tensor]:
        return [out.total_loss, out.lm_loss, out.gmm_loss]

    def counts(self, batch: dict) -> tuple[float, float, dict[str, float]]:
        flops, hw_flops = self.flop_model.batch_flops(batch)
        tokens = float((batch["attention_mask"] != 0).sum())
        return flops, hw_flops, {"tokens": tokens, "samples": float(batch["input_ids"].shape[0])}

    def validate(self, engine, val_loader, max_batches: int) -> dict[str, float] | None:
        return validate_llm(engine, self.module, val_loader, self.prepare, max_batches, self.device)


# ============================================================ de-tokenizer stages


def check_tokenizer_fits(tokenizer, detokenizer) -> None:
    """The de-tokenizer decodes this tokenizer's features, from frames of its own window
    (any frame size: the tokenizer resizes to its own).

    Raises:
        ValueError: feature widths that differ, or a window too short for the tokenizer.
    """
    from divot_llm.detokenizers.training import tokenizer_frame_positions

    if tokenizer.feature_dim != detokenizer.feature_dim:
        raise ValueError(
            f"the video tokenizer's features are {tokenizer.feature_dim}-d but the de-tokenizer decodes "
            f"{detokenizer.feature_dim}-d features (detokenizer.feature_dim)"
        )
    tokenizer_frame_positions(detokenizer.num_frames, tokenizer.frames_per_clip)


def build_detokenizer(cfg: Any, tokenizer):
    """``cfg.detokenizer`` with the frozen tokenizer's zero-clip features as its null
    features, then the weights of ``stage.detokenizer_init_from`` (a ``save_pretrained``
    folder, loaded strictly: its shapes must be the config's) when set."""
    from divot_llm.detokenizers import build_video_detokenizer, video_detokenizer_class

    detok = build_video_detokenizer(cfg.detokenizer, tokenizer=tokenizer)
    init_from = cfg.stage.detokenizer_init_from
    if init_from is not None:
        arch = str(cfg.detokenizer.arch)
        saved = video_detokenizer_class(arch).from_pretrained(init_from)
        try:
            detok.load_state_dict(saved.state_dict(), strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"stage.detokenizer_init_from={init_from} does not fit cfg.detokenizer: {err}"
            ) from err
    return detok


def build_detok_models(cfg: Any):
    """(video tokenizer, engine module) of a de-tokenizer stage on the CPU, fp32, from
    ``train.seed``, with the stage's parts trainable: the frozen tokenizer and the
    de-tokenizer (detok, detok_adapt), or the tokenizer being trained and the
    ``TokenizerDiffusionObjective`` holding it (tokenizer)."""
    from divot_llm.detokenizers.training import TokenizerDiffusionObjective, apply_reference_zero_init
    from divot_llm.tokenizers import build_video_tokenizer

    seed_everything(int(cfg.train.seed))
    stage = cfg.stage
    tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    detok = build_detokenizer(cfg, tokenizer)
    check_tokenizer_fits(tokenizer, detok)
    if stage_name(cfg) != StageName.tokenizer:
        tokenizer.freeze()
        detok.set_trainable(bool(stage.train_diffusion_model), bool(stage.train_image_proj_model))
        return tokenizer, detok
    if stage.tokenizer_zero_init:
        apply_reference_zero_init(tokenizer.encoder.temporal_encoder)
    objective = TokenizerDiffusionObjective(tokenizer, detok)  # tokenizer after its ViT trains
    detok.set_trainable(bool(stage.train_diffusion_model), bool(stage.train_image_proj_model))
    objective.refresh_null_features()  # of the tokenizer as it starts
    return tokenizer, objective


class DetokRecipe(Recipe):
    """detok / detok_adapt: the de-tokenizer's diffusion loss on full windows."""

    loss_names = ("loss",)
    rate_names = {"samples": "clips/s"}

    def build(self) -> nn.Module:
        tokenizer, module = build_detok_models(self.cfg)
        self.module = module.to(self.device)
        self.video_tokenizer = self._place_tokenizer(tokenizer)
        self._build_helpers()
        self.flops_per_clip = self._count_flops_per_clip()
        return self.module

    def _place_tokenizer(self, tokenizer):
        """The frozen tokenizer on the device, in the frozen helpers' dtype."""
        return tokenizer.to(self.device, self.frozen_dtype)

    def _build_helpers(self) -> None:
        """Anything else ``prepare`` needs (the LLM of detok_adapt)."""

    @property
    def detokenizer(self):
        return self.module

    @property
    def window(self):
        from divot_llm.data.windows import WindowSpec

        return WindowSpec.of(self.detokenizer)

    def loader(self, split: str, rank: int, world_size: int, build_loader: Callable | None = None):
        if build_loader is None:
            from divot_llm.data.windows import build_window_loader as build_loader
        return build_loader(self.cfg.data, self.window, rank=rank, world_size=world_size, split=split)

    def prepare(self, batch: dict) -> dict[str, torch.Tensor]:
        """Windows ``(B, F, 3, S, S)`` on the device, conditioned on ``features (B, N, D)``."""
        return self.inputs(batch)

    @torch.no_grad()
    def inputs(self, batch: dict, seed: int | None = None) -> dict[str, torch.Tensor]:
        """``prepare`` with a fixed ``seed`` for any sampled conditioning (validation)."""
        video = batch["video"].to(self.device, non_blocking=True)
        return {"video": video, "features": self.features(batch, video, seed)}

    def features(self, batch: dict, video_bfchw: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """The frozen tokenizer's features of the windows (it sees frames 0, 4, 8, 12, 15)."""
        from divot_llm.detokenizers.training import tokenizer_features

        return tokenizer_features(self.video_tokenizer, video_bfchw)

    def loss_terms(self, out: torch.Tensor) -> list[torch.Tensor]:
        return [out]

    def counts(self, batch: dict) -> tuple[float, float, dict[str, float]]:
        clips = float(batch["video"].shape[0])
        flops = clips * self.flops_per_clip
        return flops, flops, {"samples": clips}

    def _count_flops_per_clip(self) -> float:
        """FLOPs of one clip's training step -- ``prepare``, forward and backward --
        counted by torch on a zero clip (so exactly what autograd runs: frozen parts have
        no backward; recomputation under gradient checkpointing is included). The RNG
        and the gradients come out as they went in."""
        from torch.utils.flop_counter import FlopCounterMode

        window = self.window
        batch = {"video": torch.zeros(1, window.num_frames, 3, window.image_size, window.image_size),
                 "captions": ["a red circle moving left on a blue background"]}  # fmt: skip
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), FlopCounterMode(display=False) as counter:
            loss = self.module(**self.prepare(batch))
            if loss.requires_grad:
                loss.backward()
        for p in self.module.parameters():
            p.grad = None
        return float(counter.get_total_flops())

    def validate(self, engine, val_loader, max_batches: int) -> dict[str, float] | None:
        """Diffusion loss (fixed noise and timesteps) and PSNR/SSIM of reconstructions
        from the tokenizer's features (``stage.recon_clips`` per rank, fixed sampler seed),
        averaged over all ranks. LPIPS is not computed (no pretrained VGG offline)."""
        from divot_llm.detokenizers.metrics import reconstruction_metrics

        batches = list(islice(val_loader, max_batches))
        count = distributed.all_reduce_min(len(batches), self.device)
        if count == 0:
            return None
        stage = self.cfg.stage
        recon_left = int(stage.recon_clips)
        self.before_validation()
        sums = [0.0] * 5  # loss sum, clips, psnr sum, ssim sum, decoded clips
        was_training = engine.training
        engine.eval()
        try:
            for i, batch in enumerate(batches[:count]):
                inputs = self.inputs(batch, seed=VAL_SEED + i)
                generator = torch.Generator().manual_seed(VAL_SEED + i)
                with torch.no_grad():
                    loss = engine(**inputs, generator=generator)
                video = batch["video"].to(self.device)
                clips = video.shape[0]
                sums[0] += float(loss) * clips
                sums[1] += clips
                take = min(recon_left, clips)
                if take:
                    video = video[:take]
                    recon = self.detokenizer.decode(
                        self.reconstruction_features(video), steps=stage.recon_steps, seed=VAL_SEED + i
                    )
                    metrics = reconstruction_metrics(recon, video)
                    sums[2] += metrics["psnr"] * take
                    sums[3] += metrics["ssim"] * take
                    sums[4] += take
                    recon_left -= take
        finally:
            engine.train(was_training)
        loss_sum, clips, psnr_sum, ssim_sum, decoded = distributed.all_reduce_sum(sums, self.device)
        metrics = {"val/loss": loss_sum / clips, "val/samples": clips, "val/batches": float(count)}
        if decoded:
            metrics.update({"val/psnr": psnr_sum / decoded, "val/ssim": ssim_sum / decoded})
        return metrics

    def before_validation(self) -> None:
        """Anything to bring up to date before decoding (collective when it runs a module)."""

    @torch.no_grad()
    def reconstruction_features(self, video_bfchw: torch.Tensor) -> torch.Tensor:
        """Features reconstructions are decoded from: the (frozen) tokenizer's."""
        from divot_llm.detokenizers.training import tokenizer_features

        return tokenizer_features(self.video_tokenizer, video_bfchw)


class DetokAdaptRecipe(DetokRecipe):
    """detok_adapt: conditioning features sampled from the GMM of the Divot-LLM release in
    ``stage.init_from`` for each window's caption (validation still reconstructs from the
    tokenizer's features, and its loss uses GMM features like training)."""

    def build(self) -> nn.Module:
        self._check_sources()
        return super().build()

    def _check_sources(self) -> None:
        """Fail before building anything when the LLM or the stage-1 de-tokenizer is not named."""
        from divot_llm.config.loading import ConfigError

        cfg = self.cfg
        if cfg.stage.init_from is None:
            raise ConfigError(
                "stage.init_from must name the Divot-LLM release whose GMM samples the features"
            )
        if cfg.stage.detokenizer_init_from is None and cfg.detokenizer.pretrained_path is None:
            raise ConfigError(
                "detok_adapt starts from a trained de-tokenizer: set stage.detokenizer_init_from (a "
                "save_pretrained folder) or detokenizer.pretrained_path (e.g. Divot_detokenizer_stage1.bin)"
            )

    def _build_helpers(self) -> None:
        from divot_llm.model import load_release
        from divot_llm.text import load_text_tokenizer

        cfg, tok = self.cfg, self.video_tokenizer
        self.text_tokenizer = load_text_tokenizer(cfg.model.tokenizer_path)
        llm = load_release(
            cfg.stage.init_from, cfg.model, tokens_per_clip=tok.num_tokens, feature_dim=tok.feature_dim
        )
        self.llm = llm.to(self.device, self.frozen_dtype)

    def features(self, batch: dict, video_bfchw: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """One GMM sample per caption. Without a ``seed`` it is drawn from the global CPU
        RNG (restored on resume, so a resumed run samples the same features); the call's
        own reseeding is contained (``fork_rng``)."""
        from divot_llm.infer import generate_features_for_captions

        if seed is None:
            seed = int(torch.randint(2**62, (1,)))
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            feats_bnd = generate_features_for_captions(
                self.llm,
                self.text_tokenizer,
                list(batch["captions"]),
                instruct=bool(self.cfg.stage.instruct_prompt),
                var_scale=self.cfg.stage.var_scale,
                seed=seed,
            )
        return feats_bnd.to(self.detokenizer.dtype)


class TokenizerRecipe(DetokRecipe):
    """tokenizer: the tokenizer (after its ViT) and the de-tokenizer through the diffusion
    loss; the engine's module is the ``TokenizerDiffusionObjective``."""

    @property
    def detokenizer(self):
        return self.module.detokenizer

    def _place_tokenizer(self, tokenizer):
        """The tokenizer being trained: part of the engine's module, placed with it."""
        return tokenizer

    @torch.no_grad()
    def inputs(self, batch: dict, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Only the windows: the objective runs the tokenizer being trained."""
        return {"video_bfchw": batch["video"].to(self.device, non_blocking=True)}

    def before_validation(self) -> None:
        """The guidance's null features are the *current* tokenizer's zero-clip features."""
        self.module.refresh_null_features()

    @torch.no_grad()
    def reconstruction_features(self, video_bfchw: torch.Tensor) -> torch.Tensor:
        """Features of the tokenizer being trained."""
        from divot_llm.detokenizers.training import tokenizer_frames

        return self.module.encode(tokenizer_frames(video_bfchw, self.module.tokenizer.frames_per_clip))


def make_recipe(cfg: Any, device: torch.device, dtype: torch.dtype) -> Recipe:
    """The recipe of ``cfg.stage.name``."""
    name = stage_name(cfg)
    if name not in DETOK_STAGES:
        return LLMRecipe(cfg, device, dtype)
    cls = {
        StageName.detok: DetokRecipe,
        StageName.detok_adapt: DetokAdaptRecipe,
        StageName.tokenizer: TokenizerRecipe,
    }[name]
    return cls(cfg, device, dtype)
