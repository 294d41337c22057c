"""``divot-merge`` of a Video-LaVIT LLM run (stage=lavit_pretrain | lavit_sft): the released
``language_model/`` folder -- an HF Llama (or Mistral) folder with the LoRA merged, the
grown vocabulary and the text tokenizer (``LaVITLLM.save_pretrained``), plus the
``visual_weight.bin`` LaVIT's own loader reads beside it (the run's keyframe and motion
tokenizers, under ``model.visual_tokenizer.*`` / ``model.motion_tokenizer.*``), our
``config.yaml`` and ``release.json``. It is what ``stage=lavit_sft`` starts from and what
a release root's ``language_model/`` or ``language_model_sft/`` is (``divot-infer lavit``).

``verify`` compares the trained (unmerged) LLM's logits on fixed random sequences with those
of the folder as loaded back, within the dtype's tolerance, before the folder replaces
``out_dir``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from divot_llm.config import config_to_yaml, load_saved_config
from divot_llm.config.loading import RESOLVED_CONFIG_NAME
from divot_llm.config.schema import DivotConfig
from divot_llm.export.lavit_llm import LAVIT_LLM_STAGES, build_stage_llm
from divot_llm.export.merge import MergeResult, release_info
from divot_llm.export.trained import trained_module
from divot_llm.export.verify import Comparison, VerificationError, compare
from divot_llm.export.zero import resolve_checkpoint
from divot_llm.layout import LAVIT_VISUAL_WEIGHT, RELEASE_INFO
from divot_llm.model.lavit_llm import LaVITLLM
from divot_llm.runtime import seed_everything
from divot_llm.text.lavit_tokenizer import load_lavit_text_tokenizer
from divot_llm.tokenizers.keyframe.registry import build_keyframe_tokenizer
from divot_llm.tokenizers.keyframe.visual_weight import save_visual_weight
from divot_llm.tokenizers.motion.registry import build_motion_tokenizer
from divot_llm.train.checkpoint import CheckpointError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VERIFY_SEQUENCES, VERIFY_LENGTH = 2, 48  # random ids over the whole vocabulary


def is_lavit_llm_checkpoint(checkpoint: str | os.PathLike) -> bool:
    """Whether ``checkpoint`` (a run or ``checkpoints/step_*`` folder) is of a LaVIT LLM stage."""
    try:
        ckpt = resolve_checkpoint(checkpoint)
    except CheckpointError:  # e.g. a zero-to-fp32 export: the Divot merge reads (or refuses) it
        return False
    return load_saved_config(ckpt.dir / RESOLVED_CONFIG_NAME).stage.name in LAVIT_LLM_STAGES


def merge_lavit_llm(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: str = "fp32",
    verify: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> MergeResult:
    """Write the ``language_model/`` folder of a LaVIT LLM checkpoint (module docstring).

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        VerificationError: ``verify`` found the folder does not reproduce the trained LLM.
        CheckpointError, ValueError: no complete checkpoint, or one of another stage.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    stage = load_saved_config(resolve_checkpoint(checkpoint).dir / RESOLVED_CONFIG_NAME).stage.name
    cfg, _, llm = trained_module(checkpoint, stage, build_stage_llm)
    log(f"rebuilt the {stage} LLM of {checkpoint}")
    llm.eval()
    batch = _verification_ids(llm) if verify else None
    expected = _logits(llm, batch) if batch is not None else None

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    llm.to(DTYPES[dtype]).save_pretrained(tmp, load_lavit_text_tokenizer(cfg.model.tokenizer_path))
    if _write_visual_weight(cfg, tmp / LAVIT_VISUAL_WEIGHT):
        log(f"{LAVIT_VISUAL_WEIGHT}: the run's keyframe and motion tokenizers")
    comparisons: list[Comparison] = []
    if expected is not None:
        reloaded = LaVITLLM.from_pretrained(tmp, dtype=DTYPES[dtype]).eval()
        comparisons = compare([{"logits": expected}], [{"logits": _logits(reloaded, batch)}], DTYPES[dtype])
        for c in comparisons:
            log(f"verify {c}")
        if not all(c.ok for c in comparisons):
            shutil.rmtree(tmp, ignore_errors=True)
            raise VerificationError("the written LLM does not reproduce the trained one; nothing was written")
    (tmp / RESOLVED_CONFIG_NAME).write_text(config_to_yaml(cfg))
    info = release_info(cfg, {"source": str(checkpoint)}, dtype, comparisons)
    (tmp / RELEASE_INFO).write_text(json.dumps(info, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return MergeResult(out, info, comparisons)


def _write_visual_weight(cfg: DivotConfig, path: Path) -> bool:
    """The run's keyframe + motion tokenizers as ``visual_weight.bin``; False (nothing
    written) when the run's config names no keyframe or no motion tokenizer."""
    if cfg.keyframe_tokenizer is None or cfg.motion_tokenizer is None:
        return False
    seed_everything(cfg.train.seed)  # random-init tiny tokenizers come out as the run's cache build drew them
    save_visual_weight(
        path, build_keyframe_tokenizer(cfg.keyframe_tokenizer), build_motion_tokenizer(cfg.motion_tokenizer)
    )
    return True


def _verification_ids(llm: LaVITLLM) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, llm.vocab.size, (VERIFY_SEQUENCES, VERIFY_LENGTH), generator=generator)


@torch.no_grad()
def _logits(llm: LaVITLLM, ids_bt: torch.Tensor) -> torch.Tensor:
    return llm(ids_bt, torch.ones_like(ids_bt), return_logits=True).logits.float()
