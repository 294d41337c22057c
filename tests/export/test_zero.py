"""divot-export zero-to-fp32: equals the live engine, ZeRO-2 and ZeRO-3; refuses what is
not a complete checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from divot_llm.cli.export import main as export_main
from divot_llm.export import read_fp32_export, zero, zero_to_fp32
from tests.helpers import run_entry_point as cli
from tests.helpers import run_main


@pytest.mark.slow
@pytest.mark.parametrize("run", ["zero2_run", "zero3_run"])
def test_fp32_export_equals_the_live_engine_parameters(run, request, tmp_path, capsys):
    out_dir = request.getfixturevalue(run)
    # in this process: the console script itself is run by the next test
    _, out, _ = run_main(export_main, "zero-to-fp32", str(out_dir), str(tmp_path / "fp32"), capsys=capsys)
    assert "step 30" in out  # the run's last checkpoint (tests/conftest.py)

    live = torch.load(out_dir / "live.pt", weights_only=True)
    exported = read_fp32_export(tmp_path / "fp32")
    assert sorted(exported) == sorted(live)
    assert any("lora_A" in k for k in live) and any(k.startswith("output_resampler") for k in live)
    for name, tensor in live.items():
        assert exported[name].dtype == torch.float32
        assert torch.equal(exported[name], tensor), name
    info = json.loads((tmp_path / "fp32" / "export.json").read_text())
    assert info["zero_stage"] == int(run[4]) and info["world_size"] == 2 and info["step"] == 30
    assert (tmp_path / "fp32" / "config.yaml").is_file()


def test_shards_and_every_way_to_name_the_checkpoint(zero2_run, tmp_path, capsys):
    step_dir = zero2_run / "checkpoints" / "step_00000030"
    reference = None
    for i, where in enumerate([zero2_run, zero2_run / "checkpoints", step_dir]):
        args = ("zero-to-fp32", str(where), str(tmp_path / f"out{i}"), "--max-shard-size", "200KB")
        if i == 0:  # the console script users run, once; the other ways in this process
            cli("divot-export", *args)
        else:
            run_main(export_main, *args, capsys=capsys)
        assert (tmp_path / f"out{i}" / "model.safetensors.index.json").is_file()
        assert len(list((tmp_path / f"out{i}").glob("model-*.safetensors"))) > 1
        state = read_fp32_export(tmp_path / f"out{i}")
        reference = reference or state
        assert all(torch.equal(state[k], reference[k]) for k in reference)


@pytest.mark.parametrize(("max_shard_size", "chunk"), [("5GB", zero.STREAM_CHUNK_BYTES), ("200KB", 2**20)])
def test_streaming_zero2_export_equals_deepspeeds_converter(
    zero2_run, tmp_path, monkeypatch, max_shard_size, chunk
):
    """The same files, byte for byte, as DeepSpeed's converter writes; also when the
    partitions are re-mapped within a tensor (a 1 MiB chunk: 256 KiB pieces)."""
    monkeypatch.setattr(zero, "STREAM_CHUNK_BYTES", chunk)
    outs = {}
    for streaming in (True, False):
        outs[streaming] = zero_to_fp32(
            zero2_run, tmp_path / f"{streaming}", max_shard_size, streaming=streaming
        )
    ours, theirs = outs[True], outs[False]
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
    if max_shard_size == "200KB":
        assert len(list(ours.glob("model-*.safetensors"))) > 1
        assert (ours / "model.safetensors.index.json").read_text() == (
            theirs / "model.safetensors.index.json"
        ).read_text()
    for shard in ours.glob("*.safetensors"):  # fp32 only: the same bytes as safetensors writes
        assert shard.read_bytes() == (theirs / shard.name).read_bytes(), shard.name
    assert any(k.startswith("output_resampler") for k in read_fp32_export(ours))


def test_half_written_and_incomplete_checkpoints_are_refused(zero2_run, tmp_path, capsys):
    step_dir = zero2_run / "checkpoints" / "step_00000030"
    half = tmp_path / "checkpoints" / ".tmp-step_00000040"
    shutil.copytree(step_dir, half)
    code, _, err = run_main(
        export_main, "zero-to-fp32", str(half), str(tmp_path / "a"), capsys=capsys, check=False
    )
    assert code == 1 and "half-written" in err
    assert not (tmp_path / "a").exists()

    broken = tmp_path / "run" / "checkpoints" / "step_00000030"
    shutil.copytree(step_dir, broken)
    (broken / "engine" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()  # a rank's partition lost
    code, _, err = run_main(
        export_main, "zero-to-fp32", str(broken), str(tmp_path / "b"), capsys=capsys, check=False
    )
    assert code == 1 and "ranks [0], expected 0..1" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.tmp").exists()

    code, _, err = run_main(export_main, "zero-to-fp32", str(tmp_path / "nothing"), str(tmp_path / "c"),
                            capsys=capsys, check=False)  # fmt: skip
    assert code == 2 and "no such file or directory" in err  # a bad argument: test_cli_errors.py
