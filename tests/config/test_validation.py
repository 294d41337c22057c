"""Start-up validation beyond types: keys added with ``+key=``, value ranges and choices
(``checked(...)`` in the schema), and strict overrides of a saved config."""

from __future__ import annotations

import pytest
import yaml
from omegaconf import OmegaConf

from divot_llm.cli.config import main as config_main
from divot_llm.config import CONF_DIR, ConfigError, compose_config, save_resolved_config
from divot_llm.config.loading import load_saved_config
from divot_llm.config.schema import Precision
from tests.helpers import run_main


def error_of(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as err:
        compose_config(overrides)
    return str(err.value)


def test_out_of_range_values_fail_naming_every_key():
    message = error_of(
        [
            "data.batch_size=0",
            "model.lora.r=-4",
            "model.lora.dropout=1.5",
            "optim.lr=0",
            "optim.betas=[0.9,1.0]",
            "data.sources.video_comp.num_clips=0",
            "train.grad_accum_steps=0",
            "detokenizer.cond_drop_prob=nan",
        ]
    )
    for line in (
        "data.batch_size=0 must be >= 1",
        "model.lora.r=-4 must be >= 1",
        "model.lora.dropout=1.5 must be in [0, 1]",
        "optim.lr=0.0 must be > 0",
        "optim.betas[1]=1.0 must be in [0, 1)",
        "data.sources.video_comp.num_clips=0 must be >= 1",
        "train.grad_accum_steps=0 must be >= 1",
        "detokenizer.cond_drop_prob=nan must be in [0, 1]",
    ):
        assert line in message, message


def test_boundary_values_and_nulls_pass():
    cfg = compose_config(
        [
            "model.lora.dropout=0",
            "data.num_workers=0",
            "train.eval_every=0",
            "train.keep_last=0",
            "optim.min_lr_ratio=1",
            "data.pack_length=null",
            "train.peak_tflops=null",
        ]
    )
    assert cfg.model.lora.dropout == 0 and cfg.data.num_workers == 0


def test_choices_are_checked():
    assert "model.lora.bias='some' must be one of 'none', 'all', 'lora_only'" in error_of(
        ["model.lora.bias=some"]
    )


@pytest.mark.parametrize(
    "override, named",
    [
        ("+model.lora.rnak=3", "unknown key model.lora.rnak: Key 'rnak' not in 'LoraConfig'"),
        (
            "+video_tokenizer.vit_layerz=2",
            "Key 'vit_layerz' not in 'DivotTokenizerConfig'",
        ),  # per-option schema
        ("+data.sources.video_comp.num_clip=3", "unknown key data.sources.video_comp.num_clip"),
        ("+train.max_step=10", "(did you mean train.max_steps?)"),
        ("+experiment_nmae=x", "unknown key experiment_nmae: Key 'experiment_nmae' not in 'DivotConfig'"),
        ("+model.llm.extra.deep=1", "unknown key model.llm.extra"),
    ],
)
def test_keys_added_with_plus_must_be_in_the_schema(override, named):
    """Hydra's ``+`` appends a key even to a strict schema; validation refuses it."""
    assert named in error_of([override])


def test_every_shipped_config_is_valid():
    for experiment in sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")):
        compose_config([f"experiment={experiment}"])  # raises on an out-of-range default


def test_divot_config_reports_plus_typos_and_ranges(capsys):
    code, _, err = run_main(
        config_main, "+model.lora.rnak=3", "data.batch_size=0", capsys=capsys, check=False
    )
    assert code == 2 and "rnak" in err and "data.batch_size=0 must be >= 1" in err
    assert "Traceback" not in err


def test_divot_config_check_paths(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(config_main, "model.llm.path=/nowhere/mistral", capsys=capsys, check=False)
    assert code == 0  # paths of another machine are fine unless asked for
    code, _, err = run_main(
        config_main, "--check-paths", "model.llm.path=/nowhere/mistral", f"data.root={tmp_path}",
        capsys=capsys, check=False,
    )  # fmt: skip
    assert code == 2
    assert err.strip() == "config error: no such file or directory: /nowhere/mistral (model.llm.path)"


# ------------------------------------------------------------------ saved configs


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run's resolved config.yaml, as divot-train writes it."""
    return save_resolved_config(compose_config(), tmp_path_factory.mktemp("run"))


def test_saved_config_is_read_back_typed(saved):
    cfg = load_saved_config(saved, ["model.lora.r=4", "model.llm.path=/moved/base"])
    assert cfg.model.lora.r == 4 and cfg.model.llm.path == "/moved/base"
    assert cfg.deepspeed.precision is Precision.fp32  # enums, as a composed config has them


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.lora.rnak=3", "Key 'rnak' not in 'LoraConfig'"),
        ("video_tokenizer.vit_layerz=2", "Key 'vit_layerz' not in 'DivotTokenizerConfig'"),
        ("detokenizer.num_framez=2", "Key 'num_framez' not in 'DynamiCrafterConfig'"),
        ("data.sources.video_comp.num_clip=3", "'data.sources.video_comp.num_clip=3': Key 'num_clip' not in"),
        (
            "optim.lr=fast",
            "override 'optim.lr=fast': Value 'fast' of type 'str' could not be converted to Float",
        ),
        ("data.batch_size=0", "data.batch_size=0 must be >= 1"),
        ("model=tiny", "model is a config group"),
        ("model.lora.r", "is not KEY=VALUE"),
        ("+model.lora.rnak=3", "is not KEY=VALUE"),
    ],
)
def test_saved_config_overrides_are_strict(saved, override, named):
    with pytest.raises(ConfigError) as err:
        load_saved_config(saved, [override])
    assert named in str(err.value)


def test_a_saved_config_this_version_cannot_read_names_the_file(saved, tmp_path):
    data = yaml.safe_load(saved.read_text())
    data["train"]["retired_option"] = 1
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_saved_config(path)
    assert str(path) in str(err.value) and "retired_option" in str(err.value)
    path.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="config.yaml"):
        load_saved_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="config.yaml"):
        load_saved_config(path)
    assert OmegaConf.load(saved).stage.name == "pretrain"  # the source file is untouched


def test_a_saved_config_of_an_unknown_component_names_its_arch(saved, tmp_path):
    data = yaml.safe_load(saved.read_text())
    data["video_tokenizer"]["arch"] = "magvit"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(
        ConfigError, match="video_tokenizer.arch='magvit' names no component.*tokenizers/magvit.py"
    ):
        load_saved_config(path)
