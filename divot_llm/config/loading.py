"""Find ``conf/``, register the structured schemas, compose and save configs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from divot_llm.config.schema import DivotConfig, DivotTokenizerConfig, DynamiCrafterConfig

RESOLVED_CONFIG_NAME = "config.yaml"


class ConfigError(ValueError):
    """A config that cannot be used as given (missing values, bad combinations)."""


def _find_conf_dir() -> Path:
    # An explicit env var wins (installed wheels, custom config trees); otherwise the
    # checkout this package lives in (the README installs with `pip install -e .`).
    env = os.environ.get("DIVOT_CONF_DIR")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2] / "conf"


CONF_DIR = _find_conf_dir()


def register_configs() -> None:
    """Register the schemas Hydra merges the YAML files onto (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="divot_schema", node=DivotConfig)
    cs.store(group="video_tokenizer", name="schema_divot", node=DivotTokenizerConfig)
    cs.store(group="detokenizer", name="schema_dynamicrafter", node=DynamiCrafterConfig)


def compose_config(
    overrides: Sequence[str] = (), config_name: str = "config", conf_dir: str | os.PathLike | None = None
) -> DictConfig:
    """Compose the entry config with command-line style overrides, outside a Hydra app
    (tests, notebooks, tools). Unknown keys raise, naming the key."""
    from hydra import compose, initialize_config_dir

    conf = Path(conf_dir).resolve() if conf_dir is not None else CONF_DIR
    if not conf.is_dir():
        raise ConfigError(
            f"config directory {conf} not found; run from a checkout installed with "
            "`pip install -e .` or set DIVOT_CONF_DIR"
        )
    register_configs()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def missing_keys(cfg: DictConfig) -> list[str]:
    """Dotted keys still set to ``???`` (values the user must provide)."""
    found: list[str] = []

    def walk(node, prefix: str) -> None:
        for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
            full = f"{prefix}.{key}" if prefix else str(key)
            if OmegaConf.is_missing(node, key):
                found.append(full)
                continue
            try:
                child = node[key]
            except (MissingMandatoryValue, InterpolationResolutionError):  # refers to a missing value
                continue  # the missing value itself is reported where it lives
            if OmegaConf.is_config(child):
                walk(child, full)

    walk(cfg, "")
    return found


def save_resolved_config(cfg: DictConfig, out_dir: str | os.PathLike) -> Path:
    """Write the fully resolved config (no interpolations left) beside a run's outputs."""
    missing = missing_keys(cfg)
    if missing:
        raise ConfigError("config values must be set: " + ", ".join(missing))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESOLVED_CONFIG_NAME
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    resolved.pop("hydra", None)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)))
    tmp.replace(path)
    return path


def describe_config_error(exc: BaseException) -> str:
    """One readable message from Hydra/OmegaConf's exception chain. Hydra's own message
    for a misspelt key suggests ``+key=...`` (append); with strict schemas the useful part
    is the cause, e.g. "Key 'rnak' not in 'LoraConfig'"."""
    lines: list[str] = []
    while exc is not None and not any(line.startswith("full_key:") for line in lines):
        for line in str(exc).splitlines():
            line = line.strip()
            noise = (
                line.startswith(("To append to your config", "reference_type", "object_type"))
                or "$VALUE" in line
            )
            if line and not noise and line not in lines:
                lines.append(line)
        exc = exc.__cause__ or exc.__context__
    return "\n  ".join(lines)
