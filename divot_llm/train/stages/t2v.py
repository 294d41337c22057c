"""t2v: text to video -- the VDM de-tokenizer (video-diffusion-pytorch's Unet3D +
GaussianDiffusion) trained on whole windows (``data.detok_examples``) conditioned on a
frozen text encoder's caption vectors (``stage.text_encoder``) as its ``(B, 1, D)``
features, the seed video-diffusion-pytorch's text-to-video trainer inside our engine.

Everything but the conditioning is ``DetokStage``'s: the loader (windows + one caption
each; images become clips of one repeated frame, and the de-tokenizer's
``prob_focus_present`` makes that many clips train their frames alone -- the seed's image
+ video co-training), the diffusion loss, FLOP counting and the validation loss (no
reconstruction PSNR: a caption does not say what exact clip to rebuild). The trainer adds
what ``stage.ema`` and ``train.sample_every`` ask for (``samples_prompts``).
"""

from __future__ import annotations

import torch
from torch import nn

from divot_llm.config.schema import DivotConfig
from divot_llm.model.t2v import build_t2v_models, text_encoder_reads, text_features, text_to_video
from divot_llm.train.stages.detok import DetokStage


class T2VStage(DetokStage):
    """t2v: the de-tokenizer's diffusion loss on windows, conditioned on the frozen text
    encoder's vector of each window's caption."""

    build_modules = staticmethod(build_t2v_models)  # (frozen text encoder, de-tokenizer)
    reconstructs = False
    samples_prompts = True

    @classmethod
    def config_reads(cls, cfg: DivotConfig) -> list[str]:
        """The de-tokenizer (and the folder it starts from), the text encoder's folder (an
        ``llm_mean`` encoder without one reads ``model.llm.path``), the data."""
        return ["detokenizer", "stage.detokenizer_init_from", *text_encoder_reads(cfg), "data"]

    def build(self) -> nn.Module:
        encoder, module = self.build_modules(self.cfg)
        self.module = module.to(self.device)
        self.text_encoder = encoder.to(self.device)
        self.video_tokenizer = None  # conditioned on text
        self.flops_per_clip = self._count_flops_per_clip()
        return self.module

    def features(self, batch: dict, video_bfchw: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """The text encoder's vectors of the captions, ``(B, 1, D)``."""
        return text_features(self.text_encoder, batch["captions"], self.device).to(self.detokenizer.dtype)

    def sample_clips(
        self, module: nn.Module, prompts: list[str], steps: int | None, seed: int
    ) -> torch.Tensor:
        """One clip per prompt, ``(B, F, 3, H, W)`` in [-1, 1], from ``module`` (the
        de-tokenizer or its EMA copy), with the de-tokenizer config's guidance."""
        return text_to_video(self.text_encoder, module, prompts, steps=steps, seed=seed)
