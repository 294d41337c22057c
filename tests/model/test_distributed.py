"""Two DeepSpeed ranks with different tasks: nobody hangs, gradients average correctly."""

from __future__ import annotations

import pytest
import torch

from tests import helpers
from tests.model import zero_two_rank_step as step

ZERO_STAGES = (2, 3)


@pytest.fixture(scope="module")
def steps_after(mistral_tokenizer_dir, tmp_path_factory):
    """One 2-rank launch that takes the step under every ZeRO stage in turn."""
    out = tmp_path_factory.mktemp("zero_two_rank_step")
    helpers.run_command(
        [
            helpers.PYTHON,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            f"--master_port={helpers.free_port()}",
            "tests/model/zero_two_rank_step.py",
            str(mistral_tokenizer_dir),
            str(out),
            *map(str, ZERO_STAGES),
        ],
        cwd=helpers.REPO_ROOT,
        timeout=240,
    )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", ZERO_STAGES)
def test_ranks_with_different_idle_heads_step_together(mistral_tokenizer_dir, steps_after, zero_stage):
    """Rank 0 trains on a comprehension sample (output head idle), rank 1 on a generation
    sample (input head idle). The step must finish (no rank waits on a gradient the other
    never makes) and equal one SGD step on the average of the two samples' gradients."""
    after = torch.load(step.after_file(str(steps_after), zero_stage), weights_only=True)

    model = step.build()
    grads: dict[str, torch.Tensor] = {}
    for batch in step.batches(str(mistral_tokenizer_dir), model.tokens_per_clip, model.feature_dim):
        model.zero_grad(set_to_none=True)
        model(**batch).total_loss.backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                grads[name] = grads.get(name, 0) + p.grad / 2
    assert after.keys() == grads.keys()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(after[name], p - step.LR * grads[name], atol=2e-6, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", ZERO_STAGES)
def test_ranks_with_different_idle_heads_validate_together(mistral_tokenizer_dir, steps_after, zero_stage):
    """Validation runs under no_grad, where ZeRO-3 still gathers each projection on every
    rank that calls it: the run finishes, and its metrics are those of the stepped model
    on the two ranks' batches (token-weighted LM loss, the generation batch's GMM NLL)."""
    metrics = torch.load(step.val_file(str(steps_after), zero_stage), weights_only=True)
    after = torch.load(step.after_file(str(steps_after), zero_stage), weights_only=True)
    model = step.build()
    assert not model.load_state_dict(after, strict=False).unexpected_keys  # the trained ones after the step
    comp, gen = step.batches(str(mistral_tokenizer_dir), model.tokens_per_clip, model.feature_dim)
    with torch.no_grad():
        out_comp, out_gen = model(**comp), model(**gen)
    tokens_comp, tokens_gen = ((b["labels"][:, 1:] != -100).sum().item() for b in (comp, gen))
    lm = (out_comp.lm_loss * tokens_comp + out_gen.lm_loss * tokens_gen) / (tokens_comp + tokens_gen)
    assert metrics["val/batches"] == 1 and metrics["val/samples"] == 2
    assert metrics["val/lm_loss"] == pytest.approx(lm.item(), rel=1e-5)
    assert metrics["val/gmm_nll"] == pytest.approx(out_gen.gmm_loss.item(), rel=1e-5)
