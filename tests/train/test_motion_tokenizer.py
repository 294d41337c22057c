"""stage=motion_tokenizer: the EMA codebook's arithmetic on hand-made tensors (through the
all-reduce of a 1-rank gloo group), the objective around the tiny Video-LaVIT motion
tokenizer, and the stage through the trainer in-process (1 rank, real DeepSpeed ZeRO-2,
the synthetic set's motion fields at gop 6, 10 x 18): validation MSE below the zero-motion
guess's, codebook perplexity above a floor, SIGTERM + resume=auto equal to the
uninterrupted run (losses and the codebook bit for bit), and the export's round trip."""

from __future__ import annotations

import math

import pytest
import torch

from divot_llm.config import compose_config
from divot_llm.config.schema import MotionVQConfig
from divot_llm.tokenizers.motion.objective import EmaCodebook, MotionTokenizerObjective, perplexity
from divot_llm.tokenizers.motion.registry import build_motion_tokenizer


def test_ema_codebook_follows_the_assigned_latents_and_restarts_dead_codes(ds_process_group):
    """Decay 0.5 by hand: the counts and latent sums (all-reduced over the 1-rank group)
    fold into the averages, each code becomes its sum's direction, and the code left
    unused restarts at one of the batch's latents, the same one for the same state."""
    codebook_kd = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    z_nd = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    codes_n = torch.tensor([0, 0, 1, 1])
    cfg = MotionVQConfig(ema_decay=0.5, restart_threshold=0.5)
    ema = EmaCodebook(codebook_kd, cfg, seed=7)
    stats = ema.update(codebook_kd, z_nd, codes_n)

    assert stats["counts"].tolist() == [2.0, 2.0, 0.0]
    assert float(perplexity(stats["counts"])) == pytest.approx(2.0)  # two codes, equally used
    # 0.5 x the start (cluster sizes 0, sums the codebook) + 0.5 x this step
    assert ema.cluster_size[:2].tolist() == [1.0, 1.0]
    assert torch.allclose(ema.embed_sum[:2], torch.tensor([[1.4, 0.3], [0.3, 1.4]]))
    norm = math.hypot(1.4, 0.3)
    assert torch.allclose(codebook_kd[:2], torch.tensor([[1.4, 0.3], [0.3, 1.4]]) / norm)
    # code 2: 0 assignments < 0.5 x the uniform share 4/3 -> restarted at a batch latent
    assert int(stats["restarts"]) == 1 and int(ema.updates) == 1
    floor = 0.5 * 4 / 3
    assert any(torch.allclose(codebook_kd[2], row) for row in z_nd), codebook_kd[2]
    assert float(ema.cluster_size[2]) == pytest.approx(floor)
    assert torch.allclose(ema.embed_sum[2], codebook_kd[2] * floor)

    # the draw depends on the seed and the update count alone (a resumed run repeats it)
    again_kd = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    again = EmaCodebook(again_kd, cfg, seed=7)
    again.update(again_kd, z_nd, codes_n)
    assert torch.equal(again_kd, codebook_kd)

    # without restarts the unused code keeps its direction (its sum only decays)
    still_kd = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    quiet = EmaCodebook(still_kd, MotionVQConfig(ema_decay=0.5, restart_threshold=0.0), seed=7)
    assert int(quiet.update(still_kd, z_nd, codes_n)["restarts"]) == 0
    assert still_kd[2].tolist() == [-1.0, 0.0] and quiet.cluster_size[2] == 0


def test_objective_trains_the_tokenizer_and_moves_the_codebook_outside_autograd():
    cfg = compose_config(["data.root=unused", "motion_tokenizer=lavit_tiny"])
    objective = MotionTokenizerObjective(
        build_motion_tokenizer(cfg.motion_tokenizer), MotionVQConfig(), seed=0
    )
    key = "tokenizer.quantize.embedding.weight"
    # the codebook is a buffer under its released key: saved and restored with the module,
    # never an optimizer's parameter
    assert key not in dict(objective.named_parameters()) and key in dict(objective.named_buffers())
    assert key in objective.state_dict()
    assert all(p.requires_grad for p in objective.parameters())
    assert torch.allclose(objective.codebook.norm(dim=1), torch.ones(64))

    fields = torch.randn(2, 2, 12, 10, 18, generator=torch.Generator().manual_seed(1))
    objective.eval()
    before = objective.codebook.clone()
    with torch.no_grad():
        out = objective(fields)
    assert torch.equal(objective.codebook, before) and int(objective.ema.updates) == 0  # eval: no update
    assert out["recon"].shape == fields.shape and out["codes"].shape == (2, 135)
    assert float(out["mse"]) == pytest.approx(float((out["recon"] - fields).square().mean()), rel=1e-6)

    objective.train()
    out = objective(fields)
    out["loss"].backward()
    assert not torch.equal(objective.codebook, before) and int(objective.ema.updates) == 1
    assert torch.allclose(objective.codebook.norm(dim=1), torch.ones(64))
    head = objective.tokenizer.encode_task_layer[0].weight  # reached through the straight-through path
    assert head.grad is not None and head.grad.abs().sum() > 0
