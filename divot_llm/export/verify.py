"""Check a merged release against the model it was merged from.

``divot-merge --verify`` runs the unmerged training model (base + LoRA) and the release
*as loaded back from disk* (``load_release``, the path inference and SFT use) on the same
few batches -- a comprehension sample with two video clips, a generation sample -- and
compares next-token logits and the video head's parameters (GMMs or code logits) of the
generation queries. Anything
the merge or the writing got wrong (a lost adapter, a wrong scale, a missing token row,
an agent tensor swapped, NaNs) shows up as a difference; the tolerance follows the
release dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from divot_llm.data.collate import collate
from divot_llm.data.sequences import SequenceBuilder, sequence_example
from divot_llm.model.divot import DivotLLM
from divot_llm.runtime import eval_mode
from divot_llm.text.tokenizer import DivotTextTokenizer

# Max |a - b| allowed, relative to max |a| (fp32 merges only reorder sums; bf16 rounds
# every weight to 8 bits of mantissa).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}


class VerificationError(RuntimeError):
    """The merged release does not reproduce the unmerged model."""


@dataclass(frozen=True)
class Comparison:
    name: str
    max_abs_diff: float
    scale: float  # max |reference|
    tolerance: float

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(self.scale, 1e-12)

    @property
    def ok(self) -> bool:
        return np.isfinite(self.max_abs_diff) and np.isfinite(self.scale) and self.relative <= self.tolerance

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (
            f"{self.name}: max |diff| {self.max_abs_diff:.3g} (relative {self.relative:.3g}, "
            f"tolerance {self.tolerance:.0e}) {verdict}"
        )


def random_features(
    shape: tuple[int, ...], feature_levels: Sequence[int] | None, generator: torch.Generator
) -> torch.Tensor:
    """Valid random features of ``shape (..., D)``: standard normal for continuous features,
    else uniform code digits in ``[0, L_i)`` (as floats, like a code tokenizer's)."""
    if feature_levels is None:
        return torch.randn(shape, generator=generator)
    levels_d = torch.tensor(list(feature_levels), dtype=torch.float32)
    return (torch.rand(shape, generator=generator) * levels_d).floor()


def verification_batches(
    tokenizer: DivotTextTokenizer,
    model: DivotLLM,
    seed: int = 0,
    feature_levels: Sequence[int] | None = None,
) -> list[dict]:
    """Two batches of real task sequences for ``model`` (its M tokens per clip) over random
    clip features of its shape ``(N, D)`` (fixed seed; code digits when ``feature_levels``
    is given, the video tokenizer's)."""
    builder = SequenceBuilder(tokenizer, model.tokens_per_clip)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    def example(task: str, clips: int, **text) -> dict:
        seq = builder.build(task, "video", clips, 4096, rng, **text)
        feats = random_features((clips, model.feature_tokens, model.feature_dim), feature_levels, gen)
        return sequence_example(seq, task, "video_feats", feats, source="verify", key=task)

    comp = example("sft_comp", 2, turns=[("What is shown in the video?", "A red circle moving left.")])
    caption = example("pretrain_comp", 1, captions=["a blue square sliding up over a white background"])
    gen = example("sft_gen", 1, captions=["a yellow triangle moving right on a black background"])
    return [collate([comp, caption], tokenizer.pad_id), collate([gen], tokenizer.pad_id)]


@torch.no_grad()
def model_outputs(model: DivotLLM, batch: dict) -> dict[str, torch.Tensor]:
    """fp32 logits at every attended position and video head parameters at the queries."""
    device = model.device
    inputs = {
        k: batch[k].to(device)
        for k in (
            "input_ids",
            "attention_mask",
            "video_feats",
            "embeds_cmp_mask",
            "ids_cmp_mask",
            "ids_gen_mask",
        )
    }
    embeds = model.embed(inputs["input_ids"], inputs["video_feats"], inputs["embeds_cmp_mask"].bool(),
                         inputs["ids_cmp_mask"].bool())  # fmt: skip
    hidden_bth = model.hidden_states(embeds, inputs["attention_mask"])
    attended = inputs["attention_mask"] != 0
    out = {"logits": model.causal_lm.lm_head(hidden_bth)[attended].float()}
    if inputs["ids_gen_mask"].any():
        out["head_params"] = model.query_head_params(hidden_bth, inputs["ids_gen_mask"].bool()).float()
    return out


def reference_outputs(model: DivotLLM, batches: list[dict]) -> list[dict[str, torch.Tensor]]:
    """``model_outputs`` of each batch, in eval mode (no LoRA dropout)."""
    with eval_mode(model):
        return [model_outputs(model, b) for b in batches]


def compare(
    reference: list[dict[str, torch.Tensor]], merged: list[dict[str, torch.Tensor]], dtype: torch.dtype
) -> list[Comparison]:
    """One comparison per output kind over all batches."""
    tolerance = TOLERANCE[dtype]
    results = []
    for name in ("logits", "head_params"):
        pairs = [(r[name], m[name]) for r, m in zip(reference, merged, strict=True) if name in r]
        if not pairs:
            continue
        diff = max(float((a - b).abs().max()) for a, b in pairs)
        scale = max(float(a.abs().max()) for a, _ in pairs)
        results.append(Comparison(name, diff, scale, tolerance))
    return results
