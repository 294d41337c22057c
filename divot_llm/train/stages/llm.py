"""pretrain / sft_comp / sft_gen: the Divot LLM on token sequences; clips go through the
frozen video tokenizer in ``prepare`` (or come as cached features: then the tokenizer is
built without its ViT)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from divot_llm.config import config_to_dict
from divot_llm.config.paths import model_reads
from divot_llm.config.schema import DivotConfig
from divot_llm.data.clip_sampling import uint8_to_model_pixels
from divot_llm.data.feature_cache import CacheInfo, expected_info
from divot_llm.data.loader import build_loader as build_llm_loader
from divot_llm.model.build import build_models, llm_tokens_per_clip, recomputed_fraction
from divot_llm.train.metrics import FlopModel, TokenizerFlops, tokenizer_flops
from divot_llm.train.stages.base import Stage
from divot_llm.train.validate import validate as validate_llm

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "labels", "ids_cmp_mask", "ids_gen_mask")
CLIP_MASK_KEYS = ("embeds_cmp_mask", "embeds_gen_mask")
PACKED_KEYS = ("segment_ids", "position_ids")  # only in packed batches (data.packing)


class LLMStage(Stage):
    """pretrain / sft_comp / sft_gen: LM cross-entropy + GMM NLL of the Divot LLM."""

    loss_names = ("loss", "lm_loss", "gmm_loss")
    rate_names = {"tokens": "tok/s", "samples": "samp/s"}

    @classmethod
    def config_reads(cls, cfg: DivotConfig) -> list[str]:
        """The text and video tokenizers, the LLM, the data."""
        return [*model_reads(cfg), "data"]

    def build(self) -> nn.Module:
        cached = bool(self.cfg.data.feature_cache)
        # From a feature cache nothing is encoded: the tokenizer comes without its ViT
        # (neither read nor on the GPU), just its shapes and the weights that identify it.
        self.text_tokenizer, tokenizer, model = build_models(self.cfg, self.dtype, cached_features=cached)
        self.video_tokenizer = tokenizer.to(self.device, self.frozen_dtype)
        self.module = model.to(self.device)
        self.cache_info: CacheInfo | None = None
        if cached:  # the loader checks the cache was made by this tokenizer
            # fingerprinted on the device and in the dtype a cache build encodes with
            tok_cfg = config_to_dict(self.cfg.video_tokenizer)
            self.cache_info = expected_info(self.video_tokenizer, tok_cfg, self.cfg.data)
            self.video_tokenizer.to("cpu")  # only its shape members are read from here on
        tokenizer_work = TokenizerFlops() if cached else tokenizer_flops(self.video_tokenizer, self.device)
        # Counted before DeepSpeed wraps the model: under ZeRO-3 parameters are shards after.
        self.flop_model = FlopModel.from_model(
            self.module,
            tokenizer_work,
            recompute=recomputed_fraction(self.module),
        )
        return self.module

    def loader(self, split: str, rank: int, world_size: int, build_loader: Callable | None = None):
        build_loader = build_loader or build_llm_loader
        tok = self.video_tokenizer
        extra = {"cache_info": self.cache_info} if self.cache_info is not None else {}
        return build_loader(
            self.cfg.data,
            self.text_tokenizer,
            tokens_per_clip=llm_tokens_per_clip(self.cfg.model, tok),  # M: the sequences' count
            frames_per_clip=tok.frames_per_clip,
            image_size=tok.input_size,
            rank=rank,
            world_size=world_size,
            split=split,
            pin_memory=self.device.type == "cuda",  # page-locked: the copies in prepare overlap
            **extra,
        )

    @torch.no_grad()
    def prepare(self, batch: dict) -> dict[str, torch.Tensor]:
        """Clips encoded to ``video_feats``: the batch's ``frames`` are only its real clips
        (``embeds_cmp_mask | embeds_gen_mask``, gathered by the loader, see
        ``divot_llm.data.collate``), so they go to the device and through the tokenizer
        as they are; padded clip slots stay zero. A batch from a feature cache brings
        ``video_feats``. Features are the tokenizer's N per clip, whatever the LLM's M."""
        keys = MODEL_INPUT_KEYS + CLIP_MASK_KEYS + tuple(k for k in PACKED_KEYS if k in batch)  # packing
        inputs = {k: batch[k].to(self.device, non_blocking=True) for k in keys}
        if "video_feats" in batch:
            inputs["video_feats"] = batch["video_feats"].to(self.device, non_blocking=True)
            return inputs
        real_bc = batch["embeds_cmp_mask"] | batch["embeds_gen_mask"]
        tok = self.video_tokenizer
        feats = torch.zeros(
            *real_bc.shape, tok.num_tokens, tok.feature_dim, dtype=tok.dtype, device=self.device
        )
        if batch["frames"].shape[0]:
            clips_uint8 = batch["frames"].to(self.device, non_blocking=True)  # (G, F, 3, S, S)
            # (row, clip) of each real clip, found on the host: a mask index on the device would wait for it
            rows_g, clips_g = (i.to(self.device, non_blocking=True) for i in real_bc.nonzero(as_tuple=True))
            feats[rows_g, clips_g] = tok.encode(uint8_to_model_pixels(clips_uint8).to(tok.dtype))
        inputs["video_feats"] = feats
        return inputs

    def loss_terms(self, out) -> list[torch.Tensor]:
        return [out.total_loss, out.lm_loss, out.gmm_loss]

    def step_counts(self, batch: dict) -> tuple[float, float, dict[str, float]]:
        flops, hw_flops = self.flop_model.batch_flops(batch)
        tokens = float((batch["attention_mask"] != 0).sum())
        return flops, hw_flops, {"tokens": tokens, "samples": float(batch["input_ids"].shape[0])}

    def validate(self, engine, val_loader, max_batches: int) -> dict[str, float] | None:
        return validate_llm(engine, self.module, val_loader, self.prepare, max_batches, self.device)
