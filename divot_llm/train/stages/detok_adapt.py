"""detok_adapt: the stage-1 de-tokenizer adapted to features sampled from a trained Divot
LLM's GMM for each window's caption (the reference's de-tokenizer stage 2)."""

from __future__ import annotations

import torch
from torch import nn

from divot_llm.config.loading import ConfigError
from divot_llm.config.schema import DivotConfig
from divot_llm.model import load_release
from divot_llm.model.generation import generate_features_for_captions
from divot_llm.runtime import rng_devices
from divot_llm.text import load_text_tokenizer
from divot_llm.train.stages.detok import DetokStage


class DetokAdaptStage(DetokStage):
    """detok_adapt: conditioning features sampled from the GMM of the Divot-LLM release in
    ``stage.init_from`` for each window's caption (validation still reconstructs from the
    tokenizer's features, and its loss uses GMM features like training)."""

    @classmethod
    def config_reads(cls, cfg: DivotConfig) -> list[str]:
        """detok's, plus the Divot-LLM release whose GMM samples the features."""
        return [*super().config_reads(cfg), "model.tokenizer_path", "stage.init_from"]

    def build(self) -> nn.Module:
        self._check_sources()
        return super().build()

    def _check_sources(self) -> None:
        """Fail before building anything when the LLM or the stage-1 de-tokenizer is not named."""
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
        cfg, tok = self.cfg, self.video_tokenizer
        self.text_tokenizer = load_text_tokenizer(cfg.model.tokenizer_path)
        llm = load_release(
            cfg.stage.init_from, cfg.model, feature_tokens=tok.num_tokens, feature_dim=tok.feature_dim
        )
        self.llm = llm.to(self.device, self.frozen_dtype)

    def features(self, batch: dict, video_bfchw: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """One GMM sample per caption. Without a ``seed`` it is drawn from the global CPU
        RNG (restored on resume, so a resumed run samples the same features); the call's
        own reseeding is contained (``fork_rng``)."""
        if seed is None:
            seed = int(torch.randint(2**62, (1,)))
        with torch.random.fork_rng(devices=rng_devices(self.device)):
            feats_bnd = generate_features_for_captions(
                self.llm,
                self.text_tokenizer,
                list(batch["captions"]),
                instruct=self.cfg.stage.instruct_prompt,
                var_scale=self.cfg.stage.var_scale,
                seed=seed,
            )
        return feats_bnd.to(self.detokenizer.dtype)
