"""Feature cache: cached features equal the tokenizer's on the frames the loader samples,
training batches from the cache give the same loss, mismatches are refused; 2 ranks under
a real launcher build the one-process cache and resume after a SIGTERM."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from divot_llm.config import apply_overrides, compose_config
from divot_llm.data.cache_build import build_feature_cache
from divot_llm.data.feature_cache import FeatureCache, expected_info
from divot_llm.data.loader import build_loader
from divot_llm.model import build_divot_llm
from divot_llm.runtime import seed_everything
from divot_llm.text import DivotTextTokenizer
from divot_llm.tokenizers import build_video_tokenizer
from tests import helpers

MODEL_KEYS = ("input_ids", "attention_mask", "labels", "embeds_cmp_mask", "embeds_gen_mask", "ids_cmp_mask",
              "ids_gen_mask")  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mistral_tokenizer_dir, small_synthetic):
    base = tmp_path_factory.mktemp("cache")
    cfg = compose_config([f"data.root={small_synthetic}", "data.num_workers=0"])
    seed_everything(int(cfg.train.seed))  # as the trainer (and `divot-data features`) build it
    video_tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    tokenizer_cfg = dataclasses.asdict(cfg.video_tokenizer)
    info = expected_info(video_tokenizer, tokenizer_cfg, cfg.data)
    counts = build_feature_cache(cfg.data, video_tokenizer, info, base / "cache", batch_clips=8)
    text = DivotTextTokenizer.from_pretrained(mistral_tokenizer_dir)
    return cfg, video_tokenizer, info, base / "cache", counts, text


def loader(cfg, text, info=None, cache=None):
    cfg = apply_overrides(cfg, [f"data.feature_cache={cache}"] if cache else [])
    vt = cfg.video_tokenizer
    return build_loader(cfg.data, text, vt.num_tokens, vt.frames_per_clip, vt.input_size, cache_info=info)


def test_cache_covers_every_sample_and_a_rerun_skips_them(setup, tmp_path):
    cfg, video_tokenizer, info, cache_dir, counts, _ = setup
    assert counts["written"] == 6 + 6 + 4 + 4 + 2 + 2  # 4 train sources + 2 val sources
    again = build_feature_cache(cfg.data, video_tokenizer, info, cache_dir)
    assert again["written"] == 0 and again["already_cached"] == counts["written"]


def test_parallel_readers_write_the_same_cache_and_counts(setup, tmp_path):
    """workers=2: every sample once, the same features, and bad media counted, not lost."""
    import shutil

    from safetensors.torch import load_file

    cfg, video_tokenizer, info, cache_dir, _, _ = setup
    data = tmp_path / "data"
    shutil.copytree(cfg.data.root, data)
    broken = sorted((data / "media" / "videos").glob("train-*.mp4"))[0]
    broken.write_bytes(broken.read_bytes()[:300])  # truncated: header only
    data_cfg = apply_overrides(cfg, [f"data.root={data}"]).data

    serial = build_feature_cache(data_cfg, video_tokenizer, info, tmp_path / "serial", batch_clips=8)
    parallel = build_feature_cache(
        data_cfg, video_tokenizer, info, tmp_path / "parallel", batch_clips=8, workers=2
    )
    assert parallel == serial
    assert serial["written"] == 6 + 6 + 4 + 4 + 2 + 2 - 1 and sum(serial.values()) == serial["written"] + 1
    files = sorted(f.relative_to(tmp_path / "serial") for f in (tmp_path / "serial").rglob("*.safetensors"))
    assert files == sorted(
        f.relative_to(tmp_path / "parallel") for f in (tmp_path / "parallel").rglob("*.safetensors")
    )
    for name in files:  # batches group other samples, so equal up to matmul rounding
        a, b = load_file(tmp_path / "serial" / name), load_file(tmp_path / "parallel" / name)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and they are the features of the unbroken samples written by the one-process build
    for name in files:
        torch.testing.assert_close(load_file(cache_dir / name), load_file(tmp_path / "serial" / name))


def test_shards_fill_one_cache_with_every_sample_once(setup, tmp_path):
    """``--shard I/N``: N builds (one per GPU) into one folder hold the one-process build's
    files; the cache is unfinished (refused) until the last share writes the index."""
    from safetensors.torch import load_file

    cfg, video_tokenizer, info, cache_dir, _, _ = setup
    out = tmp_path / "sharded"
    counts = [build_feature_cache(cfg.data, video_tokenizer, info, out, splits=("val",), shard=(0, 2))]
    with pytest.raises(ValueError, match=f"no index.json: .* `divot-data features --out {out} ...`"):
        FeatureCache(out).check(info)
    counts.append(build_feature_cache(cfg.data, video_tokenizer, info, out, splits=("val",), shard=(1, 2)))
    assert all(c["written"] > 0 for c in counts)
    files = sorted(f.relative_to(out) for f in out.rglob("*.safetensors"))
    assert len(files) == sum(c["written"] for c in counts)
    assert files == sorted(f.relative_to(cache_dir) for f in cache_dir.glob("val*/*.safetensors"))
    for name in files:
        torch.testing.assert_close(load_file(out / name), load_file(cache_dir / name), rtol=1e-5, atol=1e-6)
    FeatureCache(out).check(info)  # the last share wrote the index: the one-process one's keys
    index, whole = (json.loads((d / "index.json").read_text()) for d in (out, cache_dir))
    assert index["world_size"] == 2 and index["samples"] == len(files)
    assert index["groups"] == {g: keys for g, keys in whole["groups"].items() if g.startswith("val-")}


def test_the_index_counts_each_source_and_a_run_reading_another_is_refused_naming_it(setup, tmp_path):
    """The index holds each source's sample count, not its keys (hundreds of MB at 10 M
    samples); a run whose sources the build did not cache is refused, naming the source;
    an index written when it listed keys still serves."""
    cfg, _, info, cache_dir, counts, text = setup
    index = json.loads((cache_dir / "index.json").read_text())
    assert index["samples"] == sum(index["groups"].values()) == counts["written"]
    assert index["groups"]["train-video_comp"] == 6 and len(index["groups"]) == 6
    other = tmp_path / "other"
    shutil.copytree(cache_dir, other)
    (other / "index.json").write_text(json.dumps({**index, "groups": {"train-video_comp": 6}}))
    with pytest.raises(
        ValueError, match=f"{other} holds no sample of data.sources.video_gen, data.sources.image"
    ):
        loader(cfg, text, info, other)
    groups = {group: [f"key-{i}" for i in range(n)] for group, n in index["groups"].items()}
    (other / "index.json").write_text(json.dumps({**index, "groups": groups}))
    loader(cfg, text, info, other)  # (before the counts)


def test_a_cache_made_for_another_setup_is_not_resumed_into(setup, tmp_path):
    """Its samples would be skipped as cached and mixed with the new setup's."""
    cfg, video_tokenizer, info, cache_dir, _, _ = setup
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir, cache)
    other = dataclasses.replace(info, data_seed=info.data_seed + 1)
    with pytest.raises(ValueError, match="made for a different setup: data_seed"):
        build_feature_cache(cfg.data, video_tokenizer, other, cache, splits=("val",))
    FeatureCache(cache).check(info)  # left as it was: still finished, for its own setup


def test_cached_batches_equal_frame_batches_encoded(setup):
    cfg, video_tokenizer, info, cache_dir, _, text = setup
    # one epoch: the cache holds epoch-0 clips (later epochs reuse them by design)
    cfg = apply_overrides(cfg, ["data.infinite=false"])
    n = 0
    torch.manual_seed(1)
    model = build_divot_llm(
        cfg.model, feature_tokens=info.tokens_per_clip, feature_dim=info.feature_dim
    ).eval()
    for from_frames, from_cache in zip(loader(cfg, text), loader(cfg, text, info, cache_dir), strict=False):
        assert from_frames["keys"] == from_cache["keys"]
        assert torch.equal(from_frames["input_ids"], from_cache["input_ids"])  # same captions/prompts
        clips = from_frames["embeds_cmp_mask"] | from_frames["embeds_gen_mask"]
        feats = torch.zeros_like(from_cache["video_feats"])
        feats[clips] = video_tokenizer.encode(from_frames["frames"].float() / 127.5 - 1)  # real clips only
        torch.testing.assert_close(from_cache["video_feats"], feats, rtol=1e-6, atol=1e-6)
        with torch.no_grad():
            loss_frames = model(**{k: from_frames[k] for k in MODEL_KEYS}, video_feats=feats).total_loss
            loss_cache = model(
                **{k: from_cache[k] for k in MODEL_KEYS}, video_feats=from_cache["video_feats"]
            ).total_loss
        torch.testing.assert_close(loss_cache, loss_frames, rtol=1e-6, atol=1e-6)
        n += 1
    assert n >= 4


def test_a_cache_from_another_tokenizer_or_sampling_is_refused(setup):
    cfg, video_tokenizer, info, cache_dir, _, text = setup
    torch.manual_seed(123)
    other = build_video_tokenizer(cfg.video_tokenizer)  # same config, other weights
    other_info = expected_info(other, dataclasses.asdict(cfg.video_tokenizer), cfg.data)
    with pytest.raises(ValueError, match="tokenizer_fingerprint"):
        loader(cfg, text, other_info, cache_dir)
    other_vit = copy.deepcopy(video_tokenizer)  # same weights after the ViT, another ViT
    next(other_vit.vit.parameters()).data.add_(0.01)
    other_vit_info = expected_info(other_vit, dataclasses.asdict(cfg.video_tokenizer), cfg.data)
    with pytest.raises(ValueError, match="frame_encoder_fingerprint") as refused:
        loader(cfg, text, other_vit_info, cache_dir)
    assert "tokenizer_fingerprint" not in str(refused.value)
    with pytest.raises(ValueError, match="data_seed"):
        loader(
            apply_overrides(cfg, ["data.seed=7"]),
            text,
            info.__class__(**{**info.__dict__, "data_seed": 7}),
            cache_dir,
        )
    with pytest.raises(ValueError, match="resize_kernel: cache 'pil' != run 'torch'"):
        loader(
            apply_overrides(cfg, ["data.resize_kernel=torch"]),
            text,
            info.__class__(**{**info.__dict__, "resize_kernel": "torch"}),
            cache_dir,
        )
    with pytest.raises(ValueError, match="cache_info"):
        loader(cfg, text, None, cache_dir)


def test_a_bf16_cache_is_stored_in_bf16_and_fits_a_run_without_the_vit(setup, tmp_path):
    """Encoded in bf16 (as on a GPU): stored and read back as bf16, half of fp32; a run
    from the cache builds its tokenizer without the ViT and its expected info matches."""
    from safetensors.torch import load_file

    cfg, video_tokenizer, _, _, _, text = setup
    tok_cfg = dataclasses.asdict(cfg.video_tokenizer)
    encoder = copy.deepcopy(video_tokenizer).to(torch.bfloat16)
    cache_dir = tmp_path / "bf16"
    build_feature_cache(
        cfg.data, encoder, expected_info(encoder, tok_cfg, cfg.data), cache_dir, splits=("val",)
    )
    assert json.loads((cache_dir / "cache.json").read_text())["encode_dtype"] == "bfloat16"
    files = list(cache_dir.rglob("*.safetensors"))
    assert files and all(load_file(f)["feats"].dtype == torch.bfloat16 for f in files)

    seed_everything(int(cfg.train.seed))  # as the trainer builds it
    run_tokenizer = build_video_tokenizer(cfg.video_tokenizer, cached_features=True).to(torch.bfloat16)
    assert run_tokenizer.frame_encoder is None
    run_info = expected_info(run_tokenizer, tok_cfg, cfg.data)
    cached_cfg = apply_overrides(cfg, [f"data.feature_cache={cache_dir}"])
    vt = cached_cfg.video_tokenizer
    val = build_loader(cached_cfg.data, text, vt.num_tokens, vt.frames_per_clip, vt.input_size, split="val",
                       cache_info=run_info)  # fmt: skip
    batch = next(iter(val))
    assert batch["video_feats"].dtype == torch.bfloat16


def test_a_cache_fingerprinted_whole_is_refused_with_a_hint(setup, tmp_path):
    """Caches written before the ViT was fingerprinted apart: the message says to rebuild."""
    _, _, info, _, _, _ = setup
    fields = dataclasses.asdict(info)
    del fields["frame_encoder_fingerprint"]
    fields["tokenizer_fingerprint"] = "0" * 20
    (tmp_path / "cache.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match="covers the ViT.*rebuild it"):
        FeatureCache(tmp_path).check(info)


@pytest.mark.slow
def test_benchmark_reports_both_step_times_and_the_ratio(monkeypatch, capsys):
    from tests import helpers

    # in this process: an interpreter of its own would first import torch and transformers again
    bench = helpers.load_tool("tools/bench/feature_cache.py")
    monkeypatch.setattr(sys, "argv", ["feature_cache.py", "--steps", "2", "--videos", "4"])
    bench.main()
    out = capsys.readouterr().out
    assert "step time from frames" in out and "step time from cache" in out
    ratio = float(out.split("ratio cached/uncached :")[1].split()[0])
    assert ratio > 0


def test_features_command_builds_a_cache_the_loader_accepts(setup, tmp_path):
    """The README command, on the default device choice (CPU here)."""
    from data_recipes.__main__ import main

    cfg, video_tokenizer, info, _, counts, text = setup
    torch.manual_seed(123)  # whatever the global RNG holds, the command seeds from train.seed
    out = tmp_path / "cache"
    assert main(["features", "--out", str(out), "--", f"data.root={cfg.data.root}"]) == 0
    assert len(list(out.rglob("*.safetensors"))) == counts["written"]
    assert next(iter(loader(cfg, text, info, out)))["video_feats"].shape[-2:] == (
        info.tokens_per_clip,
        info.feature_dim,
    )


def test_a_source_without_a_usable_sample_is_an_error_naming_it(setup, tmp_path):
    import shutil

    from divot_llm.data.sources import DataError

    cfg, video_tokenizer, info, _, _, _ = setup  # video_comp alone: nothing to encode
    data = tmp_path / "data"
    shutil.copytree(cfg.data.root, data)
    (data / "annotations" / "video_caption.jsonl").write_text(
        '{"video": "videos/gone.mp4", "caption": "x"}\n'
    )
    data_cfg = compose_config([f"data.root={data}", "data.num_workers=0", "~data.sources.video_gen",
                               "~data.sources.image_comp", "~data.sources.image_gen"]).data  # fmt: skip
    with pytest.raises(DataError, match="train source video_comp has no usable sample.*missing_file 1"):
        build_feature_cache(data_cfg, video_tokenizer, info, tmp_path / "cache", splits=("train",))


def test_under_a_launcher_each_rank_builds_its_share_on_its_gpu(monkeypatch, tmp_path, capsys):
    from data_recipes.__main__ import main
    from data_recipes.ranks import Launch

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    alone = Launch.from_env()
    assert alone.shard(None) == (0, 1) and alone.shard((2, 4)) == (2, 4)
    assert alone.device("cuda") == torch.device("cuda")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    launch = Launch.from_env()
    assert launch.shard(None) == launch.shard((3, 8)) == (3, 8)
    with pytest.raises(ValueError, match="--shard 0/8 contradicts the launcher, which made this rank 3 of 8"):
        launch.shard((0, 8))
    assert launch.device("cuda") == torch.device("cuda", 1) and launch.device("cpu") == torch.device("cpu")
    gpu = torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu")
    assert launch.device("auto") == gpu
    # `deepspeed` without --no_local_rank passes --local_rank=N first; refused before any work
    monkeypatch.setenv("LOCAL_RANK", "0")  # the node's first rank says why (the others wait for it)
    argv = ["--local_rank=0", "features", "--out", str(tmp_path), "--shard", "0/8", "--", "data.root=x"]
    assert main(argv) == 2
    assert "divot-data features: error: --shard 0/8 contradicts the launcher" in capsys.readouterr().err
    monkeypatch.setenv("DIVOT_RANK_SILENCE_S", "soon")  # the heartbeat deadline (data_recipes.ranks)
    assert main(["features", "--out", str(tmp_path), "--", "data.root=x"]) == 2
    assert "error: DIVOT_RANK_SILENCE_S='soon': expected a number of seconds > 0" in capsys.readouterr().err


def test_the_index_writer_and_each_node_without_the_index_upload(tmp_path):
    # shared file system: rank 0 (the index's writer) uploads the whole cache, alone;
    # node-local disks: each node's first rank uploads what its own disk holds
    from data_recipes.features import _uploads_here
    from data_recipes.ranks import Launch

    def node(rank: int, local_rank: int) -> Launch:
        return Launch(rank=rank, world_size=4, local_rank=local_rank, local_world_size=2)

    assert _uploads_here(node(0, 0), tmp_path, wrote_index=True)
    assert _uploads_here(Launch(), tmp_path, wrote_index=True)  # a one-process build
    assert not _uploads_here(Launch(), tmp_path, wrote_index=False)  # a --shard build whose index comes later
    assert _uploads_here(node(2, 0), tmp_path, wrote_index=False)  # no index here: a disk of its own
    assert not _uploads_here(node(3, 1), tmp_path, wrote_index=False)  # one upload per node
    (tmp_path / "index.json").write_text("{}")
    assert not _uploads_here(node(2, 0), tmp_path, wrote_index=False)  # rank 0's disk: it uploads


def test_the_upload_command_runs_without_a_shell_with_the_folder_as_one_argument(tmp_path):
    from data_recipes.features import upload_argv

    folder = tmp_path / "a cache"
    assert upload_argv("cp -r {dir} 'dest dir'", folder) == ["cp", "-r", str(folder.resolve()), "dest dir"]
    nothing_evaluated = upload_argv("cp -a {dir}/ $HOME/c;rm", folder)[2:]
    assert nothing_evaluated == [f"{folder.resolve()}/", "$HOME/c;rm"]
    with pytest.raises(ValueError, match="does not name the cache folder: put {dir}"):
        upload_argv("aws s3 sync . s3://bucket/cache", folder)
    with pytest.raises(ValueError, match="program 'no-such-uploader' not found"):
        upload_argv("no-such-uploader {dir}", folder)


@pytest.mark.timeout(60)
def test_a_stop_signal_stops_a_running_upload_and_its_command(tmp_path):
    """The upload may run for hours: SIGTERM ends it (and its command) at once, exit 143."""
    import threading

    from data_recipes.features import _upload
    from data_recipes.ranks import EXIT_INTERRUPTED, Launch, RankJob

    pid_file = tmp_path / "pid"
    command = ["bash", "-c", f'echo $$ > "{pid_file}"; exec sleep 60']
    with RankJob(Launch.from_env(), tmp_path, "test") as job:
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        assert _upload(command, job) == EXIT_INTERRUPTED
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):  # terminated and reaped
        os.kill(int(pid_file.read_text()), 0)


def test_cache_json_files_are_readable_by_others_as_any_file_written_there(tmp_path):
    from divot_llm.data.feature_cache import write_json_atomic

    write_json_atomic(tmp_path / "index.json", {"a": 1})
    (tmp_path / "plain.json").write_text("{}")
    assert (tmp_path / "index.json").stat().st_mode == (tmp_path / "plain.json").stat().st_mode


def launch_two_ranks(out, data_root, *extra: str, launcher: str = "torchrun") -> subprocess.Popen:
    """``divot-data features`` on 2 CPU ranks (gloo), bf16 as on a GPU, in a session of its
    own: under ``torchrun``, or ``launch/features.sh`` (the ``deepspeed`` CLI behind our
    launch guard, whose pid is the one to signal)."""
    arguments = ["--out", str(out), "--dtype", "bf16", "--batch-clips", "1", "--workers", "0", *extra,
                 "--", f"data.root={data_root}"]  # fmt: skip
    env = helpers.cpu_distributed_env()
    if launcher == "torchrun":
        command = [helpers.PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                   "--master_port", str(helpers.free_port()), "-m", "data_recipes", "features", *arguments]  # fmt: skip
    else:
        command = ["bash", str(helpers.REPO_ROOT / "launch" / "features.sh"), *arguments]
        env.update(NPROC="2", MASTER_PORT=str(helpers.free_port()),
                   PATH=str(Path(helpers.PYTHON).parent) + os.pathsep + env.get("PATH", ""))  # fmt: skip
    return subprocess.Popen(command, cwd=helpers.REPO_ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_ranks_build_the_one_process_cache_and_resume_after_sigterm(setup, tmp_path):
    """2 ranks under the real launchers write the one-process build's files, tensors (bit
    for bit, bf16) and index: started by ``launch/features.sh`` (the ``deepspeed`` CLI), a
    SIGTERM to its pid once samples are written stops both ranks, unfinished (exit 143,
    one resume line); the same build under ``torchrun`` resumes -- keeping what was
    written -- to that same cache, then uploads it (``--upload``, a real command)."""
    from safetensors.torch import load_file

    cfg = setup[0]
    # the one-process build by the same command without a launcher, in a fresh process as
    # the ranks are (an encode inside this long-lived test worker once differed from theirs
    # by the rounding of bf16 sums)
    single = tmp_path / "single"
    subprocess.run(
        [helpers.PYTHON, "-m", "data_recipes", "features", "--out", str(single), "--dtype", "bf16",
         "--batch-clips", "1", "--workers", "0", "--", f"data.root={cfg.data.root}"],
        cwd=helpers.REPO_ROOT, env=helpers.cpu_distributed_env(), check=True, capture_output=True, timeout=120,
    )  # fmt: skip

    out = tmp_path / "two_ranks"
    first = launch_two_ranks(out, cfg.data.root, launcher="launch/features.sh")
    deadline = time.monotonic() + 120
    while not any(out.rglob("*.safetensors")):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGTERM)  # the launch guard's pid: it stops the ranks
    output = first.communicate(timeout=60)[0]
    kept = {f: f.stat().st_mtime_ns for f in out.rglob("*.safetensors")}
    assert first.returncode == 143 and output.count("run the same command again to resume") == 1, output
    assert 0 < len(kept) < 24 and not (out / "index.json").exists(), output

    uploaded = tmp_path / "uploaded"
    second = launch_two_ranks(out, cfg.data.root, "--upload", f"cp -r {{dir}} {uploaded}")
    output = second.communicate(timeout=120)[0]
    assert second.returncode == 0, output
    assert f"already_cached {len(kept)}, written {24 - len(kept)} (2 share(s))" in output
    assert all(f.stat().st_mtime_ns == mtime for f, mtime in kept.items())  # not encoded again
    files = sorted(f.relative_to(single) for f in single.rglob("*.safetensors"))
    assert files == sorted(f.relative_to(out) for f in out.rglob("*.safetensors"))
    for name in files:
        one, two = load_file(single / name)["feats"], load_file(out / name)["feats"]
        assert one.dtype == two.dtype == torch.bfloat16
        assert torch.equal(one, two), name
    one, two = (json.loads((d / "index.json").read_text()) for d in (single, out))
    assert (one.pop("world_size"), two.pop("world_size")) == (1, 2) and one == two
    FeatureCache(out).check(FeatureCache(single).info)  # made for the same tokenizer and sampling
    copied = sorted(f.relative_to(uploaded) for f in uploaded.rglob("*"))
    assert copied == sorted(f.relative_to(out) for f in out.rglob("*"))
