"""Config composition: typed schemas, strict keys, experiments, resolved-config saving."""

from __future__ import annotations

import shutil

import pytest
import yaml
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import MISSING, OmegaConf

from divot_llm.config import (
    CONF_DIR,
    ConfigError,
    DivotConfig,
    compose_config,
    compose_dictconfig,
    config_to_dict,
    missing_keys,
    save_resolved_config,
)
from divot_llm.config.schema import Precision, SourceConfig, SourceKind, Task
from divot_llm.tokenizers.divot_config import DivotTokenizerConfig
from tests import helpers

REAL_PATHS = [
    "model.llm.path=/ckpt/mistral",
    "model.tokenizer_path=/ckpt/tokenizer",
    "video_tokenizer.pretrained_path=/ckpt/Divot_tokenizer.bin",
    "video_tokenizer.vit_path=/ckpt/clip",
    "detokenizer.pretrained_path=/ckpt/detok.bin",
    "data.root=/datasets",
]


def test_default_is_the_cpu_demo_and_typed():
    cfg = compose_config()
    assert isinstance(cfg, DivotConfig) and isinstance(cfg.video_tokenizer, DivotTokenizerConfig)
    assert cfg.experiment_name == "demo"
    assert (cfg.model.name, cfg.video_tokenizer.name, cfg.stage.name) == (
        "tiny",
        "divot_tiny",
        "pretrain",
    )
    assert cfg.deepspeed.precision == Precision.fp32
    assert isinstance(cfg.data.sources["video_comp"], SourceConfig)
    assert cfg.data.sources["video_comp"].kind == SourceKind.jsonl
    assert cfg.data.sources["video_gen"].task == Task.pretrain_gen
    assert missing_keys(cfg) == []


@pytest.mark.parametrize("experiment", ["pretrain_7b", "sft_comp_7b", "sft_gen_7b"])
def test_real_scale_experiments_demand_their_paths(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    missing = set(missing_keys(cfg))
    assert "data.root" in missing and "video_tokenizer.vit_path" in missing
    if experiment == "pretrain_7b":
        assert {"model.llm.path", "model.tokenizer_path"} <= missing
    else:  # SFT starts from a merged pretrain release; its llm/ and tokenizer/ follow from it
        assert "stage.init_from" in missing


def test_missing_values_stay_missing_in_the_dataclasses():
    """``???`` is MISSING in the typed config, and so is a value interpolated from it; the
    DictConfig (what divot-config and divot-train's start-up check read) names only the source."""
    cfg = compose_config(["experiment=sft_comp_7b"])
    assert cfg.stage.init_from == MISSING and cfg.model.llm.path == MISSING  # ${stage.init_from}/llm
    assert "model.llm.path" in missing_keys(cfg)
    node = compose_dictconfig(["experiment=sft_comp_7b"])
    assert "stage.init_from" in missing_keys(node) and "model.llm.path" not in missing_keys(node)


def test_reference_hyperparameters_in_7b_experiments():
    cfg = compose_config(["experiment=pretrain_7b", *REAL_PATHS])
    assert cfg.model.llm.hidden_size == 4096 and cfg.model.llm.num_hidden_layers == 32
    assert (cfg.model.lora.r, cfg.model.lora.alpha, cfg.model.lora.dropout) == (32, 32, 0.05)
    assert (cfg.optim.lr, list(cfg.optim.betas), cfg.optim.eps, cfg.optim.weight_decay) == (
        1e-4,
        [0.9, 0.98],
        1e-6,
        0.05,
    )
    assert (cfg.optim.warmup_steps, cfg.optim.min_lr_ratio, cfg.train.max_steps) == (500, 0.05, 100_000)
    assert [s.weight for s in cfg.data.sources.values()] == [1.3, 1.0, 0.3, 0.3]
    assert [s.num_clips for s in cfg.data.sources.values()] == [20, 1, 1, 1]

    comp = compose_config(["experiment=sft_comp_7b", "stage.init_from=/rel", *REAL_PATHS[2:]])
    assert (comp.stage.train_input_proj, comp.stage.train_output_proj) == (True, False)
    assert comp.model.llm.path == "/rel/llm"
    gen = compose_config(["experiment=sft_gen_7b", "stage.init_from=/rel", *REAL_PATHS[2:]])
    assert (gen.stage.train_input_proj, gen.stage.train_output_proj) == (False, True)
    assert [s.weight for s in gen.data.sources.values()] == [1.0, 0.2]


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.lora.rnak=4", "rnak"),
        ("video_tokenizer.vit_layerz=2", "vit_layerz"),  # per-option schema
        ("data.sources.video_comp.num_clip=3", "num_clip"),
        ("train.max_step=10", "max_step"),
    ],
)
def test_unknown_override_key_fails_naming_it(override, named):
    with pytest.raises(HydraException) as err:
        compose_config([override])
    chain = []
    exc = err.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__
    assert any(named in msg and "not in" in msg for msg in chain), chain


def test_wrong_type_and_bad_enum_fail():
    with pytest.raises(ConfigCompositionException):
        compose_config(["optim.lr=fast"])
    with pytest.raises(ConfigCompositionException):
        compose_config(["deepspeed.precision=fp16"])


def test_typo_in_a_yaml_file_fails_at_start_up(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    tiny = conf / "model" / "tiny.yaml"
    data = yaml.safe_load(tiny.read_text())
    data["lora"]["rnak"] = 4
    tiny.write_text(yaml.safe_dump(data))
    with pytest.raises(Exception) as err:
        compose_config(conf_dir=conf)
    assert "rnak" in str(err.value) or "rnak" in str(err.value.__cause__)


def test_save_resolved_config_round_trips(tmp_path):
    cfg = compose_config(["optim.lr=0.5", "train.output_dir=${experiment_name}_run"])
    path = save_resolved_config(cfg, tmp_path)
    saved = OmegaConf.load(path)
    assert saved.optim.lr == 0.5
    assert saved.train.output_dir == "demo_run"  # interpolations resolved
    assert saved.stage.name == "pretrain"  # enums written as plain strings
    assert "hydra" not in saved
    # what was saved composes back to the same config
    again = compose_config([f"{k}={v}" for k, v in [("optim.lr", 0.5)]])
    assert config_to_dict(again)["model"] == OmegaConf.to_container(saved.model)


def test_save_refuses_missing_values(tmp_path):
    cfg = compose_config(["experiment=pretrain_7b"])
    with pytest.raises(ConfigError, match="data.root"):
        save_resolved_config(cfg, tmp_path)


def test_cli_reports_unknown_key_and_saves(tmp_path, capsys):
    from divot_llm.cli.config import main as config_main

    # in this process (an interpreter of its own took ~2 CPU-s a call)
    code, _, err = helpers.run_main(config_main, "model.lora.rnak=3", capsys=capsys, check=False)
    assert code == 2
    assert "Key 'rnak' not in 'LoraConfig'" in err
    code, _, err = helpers.run_main(
        config_main, "train.max_steps=7", "--save", str(tmp_path), capsys=capsys, check=False
    )
    assert code == 0, err
    assert OmegaConf.load(tmp_path / "config.yaml").train.max_steps == 7
