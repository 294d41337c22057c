"""One DeepSpeed step on 2 CPU ranks where rank 0 sees only a comprehension sample and
rank 1 only a generation sample, so each rank leaves a different head idle.

Run by ``test_distributed.py`` under ``torch.distributed.run``, once for every ZeRO stage
named (one launch: the interpreter and process-group start-up are paid once); for each,
rank 0 writes the trainable parameters after the step to ``<out>/after_zero<stage>.pt``
and the validation metrics of the stepped model (each rank its batch, under no_grad) to
``<out>/val_zero<stage>.pt``.

    python -m torch.distributed.run --nproc_per_node 2 tests/model/zero_two_rank_step.py \
        TOKENIZER_DIR OUT_DIR ZERO_STAGE [ZERO_STAGE ...]
"""

from __future__ import annotations

import atexit
import gc
import os
import sys

import torch

LR = 0.5


def build(seed: int = 0):
    from divot_llm.config.loading import compose_config
    from divot_llm.model import build_divot_llm

    cfg = compose_config()
    torch.manual_seed(seed)
    model = build_divot_llm(
        cfg.model, feature_tokens=cfg.video_tokenizer.num_tokens, feature_dim=cfg.video_tokenizer.feature_dim
    )
    return model.eval()  # no LoRA dropout: the step must be reproducible in-process


def batches(tokenizer_dir: str, n: int, d: int) -> list[dict[str, torch.Tensor]]:
    """Per rank: [comprehension-only batch, generation-only batch]."""
    from divot_llm.text import DivotTextTokenizer
    from tests.model.samples import collate, comprehension_sample, generation_sample

    tok = DivotTextTokenizer.from_pretrained(tokenizer_dir)
    gen = torch.Generator().manual_seed(11)
    comp = comprehension_sample(tok, n, torch.randn(2, n, d, generator=gen), "a red circle moving left")
    gen_sample = generation_sample(tok, n, torch.randn(1, n, d, generator=gen), "a blue square")
    return [collate([comp], tok.pad_id), collate([gen_sample], tok.pad_id)]


def after_file(out_dir: str, zero_stage: int) -> str:
    return os.path.join(out_dir, f"after_zero{zero_stage}.pt")


def val_file(out_dir: str, zero_stage: int) -> str:
    return os.path.join(out_dir, f"val_zero{zero_stage}.pt")


def main(tokenizer_dir: str, out_dir: str, zero_stages: list[int]) -> None:
    import deepspeed
    import deepspeed.ops

    from divot_llm.train.engine import skip_deepspeed_muon

    torch.set_num_threads(1)
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # no JIT build; gloo does it all
    deepspeed.init_distributed(dist_backend="gloo")
    skip_deepspeed_muon()
    for zero_stage in zero_stages:
        step(tokenizer_dir, out_dir, zero_stage)


def step(tokenizer_dir: str, out_dir: str, zero_stage: int) -> None:
    """A fresh model (same seed), one step under ``zero_stage``, its parameters saved;
    then one validation batch per rank, its metrics saved."""
    import deepspeed

    from divot_llm.train.validate import validate

    rank = int(os.environ["RANK"])
    model = build()
    batch = batches(tokenizer_dir, model.tokens_per_clip, model.feature_dim)[rank]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": 0.0,  # DeepSpeed would clip at 1.0 by default; the check wants plain SGD
        "zero_optimization": {"stage": zero_stage, "ignore_unused_parameters": False},
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    engine.backward(engine(**batch).total_loss)
    engine.step()

    params = [p for p in engine.module.parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters(params, enabled=zero_stage == 3):
        after = {n: p.detach().clone() for n, p in engine.module.named_parameters() if p.requires_grad}
    # Validation (no_grad) of the stepped model: each rank leaves the other head idle
    metrics = validate(engine, engine.module, [batch], lambda b: b, max_batches=1, device=torch.device("cpu"))
    if rank == 0:
        torch.save(after, after_file(out_dir, zero_stage))
        torch.save(metrics, val_file(out_dir, zero_stage))
    torch.distributed.barrier()


if __name__ == "__main__":
    atexit.register(gc.freeze)  # no exit-time collection over torch's objects (as divot-train)
    main(sys.argv[1], sys.argv[2], [int(stage) for stage in sys.argv[3:]])
