"""lavit_pretrain / lavit_sft: Video-LaVIT's LLM (``model.lavit``; ``model/lavit_llm.py``) on
sequences of text, keyframe codes and motion codes read from a tokens cache
(``data.motion_cache``, built by ``divot-data motion-cache --tokens`` with a motion and a
keyframe tokenizer; ``data/lavit_sequences.py``). Nothing is encoded while training: the
tokenizers ran when the cache was built.

The two stages differ in their data (the sources' tasks: captions and generation for
pretraining, QA chats and generation for SFT) and where the LLM starts: pretraining from
the base LLM (``model.llm.path``, or random at tiny width), SFT from a pretrained
``language_model/`` folder (``model.llm.path`` again: ``LaVITLLM.save_pretrained``'s
output). The loss is next-token cross-entropy over the supervised ids; ``text_loss``,
``visual_loss`` and ``motion_loss`` split it by target kind (logged, not weighted).
Validation reports the same means over the held-out sequences.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from divot_llm.config.loading import ConfigError
from divot_llm.config.schema import DivotConfig
from divot_llm.data.collate import PACKED_KEYS
from divot_llm.data.lavit_sequences import LaVITSequenceSpec, build_lavit_loader
from divot_llm.model.lavit_llm import LaVITLLM, LaVITOutput, build_lavit_llm
from divot_llm.runtime import seed_everything
from divot_llm.text.lavit_tokenizer import load_lavit_text_tokenizer
from divot_llm.text.templates import IGNORE_INDEX
from divot_llm.train.stages.base import Stage
from divot_llm.train.validate import zero_safe_sums

INPUT_KEYS = ("input_ids", "attention_mask", "labels")
KINDS = ("text", "visual", "motion")


class LaVITLLMStage(Stage):
    """lavit_pretrain / lavit_sft: one engine, the LM loss of the LaVIT LLM."""

    loss_names = ("loss", "text_loss", "visual_loss", "motion_loss")
    rate_names = {"tokens": "tok/s", "samples": "samp/s"}

    @classmethod
    def config_reads(cls, cfg: DivotConfig) -> list[str]:
        """The text tokenizer, the LLM, the data (the tokens cache)."""
        return ["model.tokenizer_path", "model.llm.path", "data"]

    def build(self) -> nn.Module:
        if self.cfg.model.lavit is None:
            raise ConfigError(
                f"stage={self.cfg.stage.name} trains Video-LaVIT's LLM: choose model=lavit_tiny or model=lavit_7b"
            )
        self.text_tokenizer = load_lavit_text_tokenizer(self.cfg.model.tokenizer_path)
        seed_everything(self.cfg.train.seed)  # a random build (tiny) is the same on every rank and resume
        self.module: LaVITLLM = build_lavit_llm(self.cfg.model, self.text_tokenizer.base_vocab_size)
        self.module.to(self.device)
        # forward + backward ~ 6 FLOPs per parameter per token (the attention's few left out)
        self.flops_per_token = 6.0 * sum(p.numel() for p in self.module.parameters())
        return self.module

    @property
    def example_spec(self) -> LaVITSequenceSpec:
        return LaVITSequenceSpec(self.module.vocab, self.text_tokenizer)

    def loader(self, split: str, rank: int, world_size: int, build_loader: Callable | None = None):
        build_loader = build_loader or build_lavit_loader
        pin = self.device.type == "cuda"
        return build_loader(self.cfg.data, self.example_spec, rank=rank, world_size=world_size, split=split,
                            pin_memory=pin)  # fmt: skip

    @torch.no_grad()
    def prepare(self, batch: dict) -> dict[str, torch.Tensor]:
        keys = INPUT_KEYS + tuple(k for k in PACKED_KEYS if k in batch)  # data.packing
        return {k: batch[k].to(self.device, non_blocking=True) for k in keys}

    def loss_terms(self, out: LaVITOutput) -> list[torch.Tensor]:
        return [out.loss, out.text_loss, out.visual_loss, out.motion_loss]

    def step_counts(self, batch: dict) -> tuple[float, float, dict[str, float]]:
        tokens = float(batch["attention_mask"].sum())
        flops = tokens * self.flops_per_token
        return flops, flops, {"tokens": tokens, "samples": float(batch["input_ids"].shape[0])}

    def validate(self, engine, val_loader, max_batches: int) -> dict[str, float] | None:
        """Mean cross-entropy over every supervised id of the held-out batches (all ranks),
        and over each kind of target id."""
        vocab = self.module.vocab

        def batch_sums(index: int, batch: dict) -> list[float]:
            inputs = self.prepare(batch)
            with torch.no_grad():
                out = engine(**inputs)
            targets = inputs["labels"][:, 1:]
            counts = {
                "all": int((targets != IGNORE_INDEX).sum()),
                "text": int(((targets != IGNORE_INDEX) & (targets < vocab.text_size)).sum()),
                "visual": int(((targets >= vocab.img_start) & (targets < vocab.mov_start)).sum()),
                "motion": int(((targets >= vocab.mov_start) & (targets < vocab.size)).sum()),
            }
            means = {
                "all": out.loss,
                "text": out.text_loss,
                "visual": out.visual_loss,
                "motion": out.motion_loss,
            }
            return [x for k in counts for x in (float(means[k]) * counts[k], float(counts[k]))]

        result = zero_safe_sums(engine, val_loader, max_batches, self.device, batch_sums)
        if result is None:
            return None
        sums, count = result
        metrics: dict[str, Any] = {}
        for i, kind in enumerate(("all", *KINDS)):
            total, n = sums[2 * i], sums[2 * i + 1]
            metrics["val/loss" if kind == "all" else f"val/{kind}_loss"] = total / max(n, 1.0)
        metrics["val/batches"] = float(count)
        return metrics
