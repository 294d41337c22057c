"""Local paths checked before anything is built: one line naming the path and its key,
and a folder of the wrong kind (a release, a run, a model folder) named as what it is."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import MistralConfig

from divot_llm.config import compose_config
from divot_llm.config.paths import PathError, check_config_paths, check_path
from divot_llm.config.schema import PathKind
from divot_llm.train.stages import training_reads
from tests.helpers import TINY_MISTRAL


def problem(path, kind: PathKind, source: str = "model.llm.path") -> str:
    with pytest.raises(PathError) as err:
        check_path(path, kind, source)
    return str(err.value)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Real folders of each kind, written by the code that writes them: an HF model folder
    (config.json), a release (save_release of a tiny model), a saved de-tokenizer and a
    de-tokenizer export (its detokenizer/ subfolder)."""
    from divot_llm.detokenizers import build_video_detokenizer
    from divot_llm.model import build_divot_llm, save_release

    root = tmp_path_factory.mktemp("layouts")
    MistralConfig(**TINY_MISTRAL).save_pretrained(root / "hf_model")
    cfg = compose_config()
    torch.manual_seed(0)
    model = build_divot_llm(cfg.model, feature_tokens=8, feature_dim=16, use_lora=False)
    save_release(model, root / "release")
    build_video_detokenizer(cfg.detokenizer).save_pretrained(root / "detok_export" / "detokenizer")
    (root / "empty").mkdir()
    (root / "weights.bin").write_bytes(b"\0" * 8)
    return root


def test_a_missing_path_names_the_path_and_the_key(tmp_path, monkeypatch):
    assert problem("/nowhere/mistral", PathKind.hf_model) == (
        "no such file or directory: /nowhere/mistral (model.llm.path)"
    )
    monkeypatch.chdir(tmp_path)
    assert problem("data/synthetic", PathKind.folder, "data.root") == (
        f"no such file or directory: data/synthetic (data.root, relative to {tmp_path})"
    )
    assert "a leading ~ is not expanded" in problem("~/ckpt/mistral", PathKind.hf_model)
    (tmp_path / "file").write_text("x")  # a file where a folder on the way should be
    assert problem(tmp_path / "file" / "llm", PathKind.folder).startswith("no such file or directory")
    os.symlink(tmp_path / "gone", tmp_path / "link")
    assert problem(tmp_path / "link", PathKind.file) == (
        f"broken symbolic link: {tmp_path / 'link'} -> {tmp_path / 'gone'} (model.llm.path)"
    )
    assert "cannot be used" in problem("/tmp/bad\0name", PathKind.file)
    assert (
        problem("", PathKind.folder, "data.root")
        == "empty path (data.root, relative to " + str(tmp_path) + ")"
    )


def test_files_and_folders_are_not_confused(layouts):
    assert problem(layouts / "weights.bin", PathKind.hf_model) == (
        f"{layouts / 'weights.bin'} is a file, expected {PathKind.hf_model.value} (model.llm.path)"
    )
    assert "is a folder, expected a file" in problem(
        layouts / "empty", PathKind.file, "detokenizer.pretrained_path"
    )
    check_path(layouts / "weights.bin", PathKind.file_or_folder, "video_tokenizer.vit_path")
    check_path(layouts / "empty", PathKind.file_or_folder, "video_tokenizer.vit_path")


def test_model_folders(layouts):
    check_path(layouts / "hf_model", PathKind.hf_model, "model.llm.path")
    check_path(layouts / "release" / "llm", PathKind.hf_model, "model.llm.path")
    assert f"{layouts / 'empty'} has no config.json" in problem(layouts / "empty", PathKind.hf_model)
    assert problem(layouts / "release", PathKind.hf_model) == (
        f"{layouts / 'release'} is a release; model.llm.path takes its llm/ folder: "
        f"{layouts / 'release' / 'llm'} (model.llm.path)"
    )


def test_releases(layouts):
    check_path(layouts / "release", PathKind.release, "stage.init_from")
    assert f"{layouts / 'empty'} is not a release: it has no llm/ and agent/" in problem(
        layouts / "empty", PathKind.release
    )
    assert f"give its parent {layouts / 'release'}" in problem(layouts / "release" / "llm", PathKind.release)
    assert "is a release (divot-merge output), not a training checkpoint" in problem(
        layouts / "release", PathKind.checkpoint, "--checkpoint"
    )


def test_saved_detokenizers(layouts):
    check_path(layouts / "detok_export" / "detokenizer", PathKind.detokenizer, "stage.detokenizer_init_from")
    assert f"use {layouts / 'detok_export' / 'detokenizer'}" in problem(
        layouts / "detok_export", PathKind.detokenizer, "stage.detokenizer_init_from"
    )
    assert "is not a saved de-tokenizer: it has no detokenizer_config.json" in problem(
        layouts / "empty", PathKind.detokenizer
    )


# ----------------------------------------------------------- which paths a run reads


def test_a_run_checks_every_path_it_reads_at_once(tmp_path):
    cfg = compose_config(
        ["model.llm.path=/nowhere/llm", "model.tokenizer_path=/nowhere/tok", f"data.root={tmp_path}/data",
         "video_tokenizer.vit_path=/nowhere/vit", "detokenizer.pretrained_path=/nowhere/detok.bin"]
    )  # fmt: skip
    with pytest.raises(PathError) as err:
        check_config_paths(cfg, training_reads(cfg))
    lines = str(err.value).split("\n  ")
    assert sorted(lines) == sorted(
        [
            "no such file or directory: /nowhere/llm (model.llm.path)",
            "no such file or directory: /nowhere/tok (model.tokenizer_path)",
            f"no such file or directory: {tmp_path}/data (data.root)",
            "no such file or directory: /nowhere/vit (video_tokenizer.vit_path)",
        ]
    )  # the de-tokenizer is not read by an LLM stage


def test_reads_follow_the_stage():
    pretrain = compose_config(["model.llm.path=/b"])
    assert set(training_reads(pretrain)) == {
        "model.tokenizer_path",
        "video_tokenizer",
        "model.llm.path",
        "data",
    }
    sft = compose_config(["stage=sft_comp", "stage.init_from=/rel"])  # the LLM comes from /rel/llm
    assert "stage.init_from" in training_reads(sft) and "model.llm.path" not in training_reads(sft)
    detok = compose_config(["experiment=detok_demo"])
    assert not any(key.startswith("model") for key in training_reads(detok))
    adapt = compose_config(["experiment=detok_demo", "stage=detok_adapt", "stage.init_from=/rel"])
    assert {"stage.init_from", "model.tokenizer_path", "detokenizer"} <= set(training_reads(adapt))
    plan = compose_config(["experiment=pretrain_7b", "plan=true"])
    assert training_reads(plan) == ["model.llm.path"]  # the meta-device model: config.json only
