"""Find ``conf/``, register the structured schemas, compose, validate, load and save configs."""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    InterpolationResolutionError,
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from divot_llm.config.components import (
    COMPONENT_PACKAGES,
    OPTIONAL_GROUPS,
    component_schema,
    register_component_schemas,
)
from divot_llm.config.schema import CHECK, DivotConfig

RESOLVED_CONFIG_NAME = "config.yaml"


class ConfigError(ValueError):
    """A config that cannot be used as given (unknown keys, values out of range or still
    ``???``, bad combinations, local paths that are not there: ``paths.PathError``)."""


def _find_conf_dir() -> Path:
    # An explicit env var wins (installed wheels, custom config trees); otherwise the
    # checkout this package lives in (the README installs with `pip install -e .`).
    env = os.environ.get("DIVOT_CONF_DIR")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2] / "conf"


CONF_DIR = _find_conf_dir()


def register_configs(conf_dir: str | os.PathLike | None = None) -> None:
    """Register the schemas Hydra merges the YAML files onto (idempotent): ``DivotConfig``
    as ``divot_schema``, and the schema of every component that the options under
    ``conf_dir`` (default ``CONF_DIR``) name, by importing its module (see ``components``)."""
    store = ConfigStore.instance()
    if "divot_schema.yaml" not in store.repo:  # once: structuring the schema takes ~30 ms
        store.store(name="divot_schema", node=DivotConfig)
    register_component_schemas(Path(conf_dir) if conf_dir is not None else CONF_DIR)


def compose_config(
    overrides: Sequence[str] = (), config_name: str = "config", conf_dir: str | os.PathLike | None = None
) -> DivotConfig:
    """Compose the entry config with command-line style overrides, outside a Hydra app
    (tests, notebooks, tools), validate it (``validate_config``) and type it (``to_typed``).

    Raises:
        ConfigError: a key the schema does not have (also one added with ``+key=``), or a
            value out of its field's range, naming the key.
        hydra.errors.HydraException: an override Hydra cannot apply (unknown key, wrong
            type), naming the key.
    """
    return to_typed(compose_dictconfig(overrides, config_name, conf_dir))


def compose_dictconfig(
    overrides: Sequence[str] = (), config_name: str = "config", conf_dir: str | os.PathLike | None = None
) -> DictConfig:
    """``compose_config`` before typing: the validated DictConfig, interpolations not yet
    resolved, for callers that show or check a config as written (``divot-config`` prints
    ``${...}`` and ``???`` as they are; ``missing_keys`` of it names a missing value where
    it is set, not also every value interpolated from it). Raises as ``compose_config``."""
    from hydra import compose, initialize_config_dir

    conf = Path(conf_dir).resolve() if conf_dir is not None else CONF_DIR
    if not conf.is_dir():
        raise ConfigError(
            f"config directory {conf} not found; run from a checkout installed with "
            "`pip install -e .` or set DIVOT_CONF_DIR"
        )
    register_configs(conf)
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    validate_config(cfg)
    return cfg


def validate_config(cfg: DictConfig | DivotConfig) -> None:
    """Check what types alone cannot: every key is a field of its schema (Hydra's
    ``+key=value`` adds keys even to a strict schema) and every value satisfies its
    field's ``Check`` (``checked(...)`` in schema.py). Values still ``???`` are left to
    ``missing_keys``.

    Raises:
        ConfigError: every problem found, one line each, naming the key.
    """
    problems: list[str] = []
    for key, node, schema in schema_nodes(config_node(cfg), ""):
        problems += _unknown_keys(key, node, schema)
        problems += _out_of_range(key, node, schema)
    if problems:
        raise ConfigError("\n  ".join(problems))


def config_node(cfg: DictConfig | DivotConfig) -> DictConfig:
    """``cfg`` as an OmegaConf node typed by the schemas, ``???`` values missing again (a
    DictConfig passes through): what validation walks."""
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)


def schema_nodes(node: DictConfig, key: str) -> Iterator[tuple[str, DictConfig, type]]:
    """(dotted key, node, schema dataclass) of ``node`` and every node below it that a
    schema dataclass types (``data.sources.<name>`` included)."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        yield key, node, schema
    for child_key in node.keys():
        if OmegaConf.is_missing(node, child_key) or OmegaConf.is_interpolation(node, child_key):
            continue
        child = node[child_key]
        if isinstance(child, DictConfig):
            yield from schema_nodes(child, _join(key, child_key))


def _join(prefix: str, key) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _unknown_keys(key: str, node: DictConfig, schema: type) -> list[str]:
    fields = [f.name for f in dataclasses.fields(schema)]
    allowed = {*fields, "hydra"} if not key else set(fields)  # Hydra's own node at the root
    problems = []
    for name in (str(k) for k in node.keys() if str(k) not in allowed):
        close = difflib.get_close_matches(name, fields, n=1)
        hint = f" (did you mean {_join(key, close[0])}?)" if close else ""
        problems.append(f"unknown key {_join(key, name)}: Key '{name}' not in '{schema.__name__}'{hint}")
    return problems


def _out_of_range(key: str, node: DictConfig, schema: type) -> list[str]:
    problems = []
    for field in dataclasses.fields(schema):
        check = field.metadata.get(CHECK)
        if check is None or field.name not in node or OmegaConf.is_missing(node, field.name):
            continue
        try:
            value = node[field.name]
        except (MissingMandatoryValue, InterpolationResolutionError):  # refers to a missing value
            continue
        items = enumerate(value) if isinstance(value, ListConfig) else [(None, value)]
        for index, item in items:
            why = check.violation(item) if item is not None else None
            if why:
                where = _join(key, field.name) + (f"[{index}]" if index is not None else "")
                problems.append(f"{where}={item!r} {why}")
    return problems


def missing_keys(cfg: DictConfig | DivotConfig) -> list[str]:
    """Dotted keys still set to ``???`` (values the user must provide). In a DictConfig a
    value interpolated from a missing one is not listed (the missing value itself is); in a
    ``DivotConfig`` it is ``???`` too (see ``to_typed``)."""
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

    walk(config_node(cfg), "")
    return found


def load_saved_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> DivotConfig:
    """The resolved config a run or a release saved (``config.yaml``), read back onto the
    schema (types, enums, strict keys; a component's schema found by its ``arch``), with
    ``overrides`` applied, validated and typed.

    Args:
        overrides: ``KEY=VALUE`` changes (``divot-merge --set``, ``divot-infer --set``);
            a key the schema does not have fails, naming it.

    Raises:
        ConfigError: the file is not a config this version can read, or an override is
            malformed, unknown, of the wrong type or out of range.
    """
    path = Path(path)
    try:
        node = _onto_schema(OmegaConf.load(path))
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as exc:
        raise ConfigError(
            f"{path} is not a config this divot-llm can read: {describe_config_error(exc)}"
        ) from exc
    return to_typed(_with_overrides(node, overrides))


def _onto_schema(saved: DictConfig) -> DictConfig:
    if not isinstance(saved, DictConfig):
        raise ValueError("expected a mapping of config groups")
    typed = OmegaConf.structured(DivotConfig)
    for group, package in COMPONENT_PACKAGES.items():
        if group in OPTIONAL_GROUPS and OmegaConf.select(saved, group, default=None) is None:
            continue  # an optional group left empty (or a config written before it existed)
        arch = OmegaConf.select(saved, f"{group}.arch", default=None)
        schema = component_schema(group, arch) if isinstance(arch, str) else None
        if schema is None:
            raise ValueError(
                f"{group}.arch={arch!r} names no component of this divot-llm "
                f"(expected {package.replace('.', '/')}/{arch}.py)"
            )
        typed[group] = OmegaConf.structured(schema)
    return OmegaConf.merge(typed, saved)


def apply_overrides(cfg: DivotConfig, overrides: Sequence[str]) -> DivotConfig:
    """``cfg`` (composed or read back by ``load_saved_config``) with ``KEY=VALUE``
    overrides merged in, strictly: a key the schema does not have, a wrong type or an
    out-of-range value raises ``ConfigError`` naming the key."""
    return to_typed(_with_overrides(config_node(cfg), overrides))


def _with_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    for item in overrides:  # one at a time, so that an error names its override
        key, sep, _ = item.partition("=")
        if not sep or not key or key.startswith(("+", "~")):
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. model.llm.path=/models/mistral)")
        if isinstance(OmegaConf.select(cfg, key, default=None), DictConfig) and "." not in key:
            raise ConfigError(
                f"override {item!r}: {key} is a config group, which a saved config cannot swap; "
                f"set its fields instead ({key}.<field>=VALUE)"
            )
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            reason = str(exc).splitlines()[0]  # the rest repeats the key and the schema's types
            raise ConfigError(f"override {item!r}: {reason}") from exc
    validate_config(cfg)
    return cfg


def to_typed(cfg: DictConfig | DivotConfig) -> DivotConfig:
    """The composed config as ``DivotConfig`` dataclasses (interpolations resolved, enum
    fields as Enum members): what library functions take. A value still ``???`` becomes the
    string ``"???"`` (``omegaconf.MISSING``; ``OmegaConf.to_object`` refuses it), and so
    does one interpolated from it (the 7B SFT experiments' ``${stage.init_from}/llm``).
    A ``DivotConfig`` passes through."""
    if isinstance(cfg, DivotConfig):
        return cfg
    return _as_objects(cfg)


def _as_objects(node: DictConfig | ListConfig):
    """``node`` as its schema's dataclass (a dict when it has none, a list)."""
    if isinstance(node, ListConfig):
        return [_child_as_object(node, index) for index in range(len(node))]
    values = {str(key): _child_as_object(node, key) for key in node.keys()}
    schema = OmegaConf.get_type(node)
    return schema(**values) if dataclasses.is_dataclass(schema) else values


def _child_as_object(node: DictConfig | ListConfig, key):
    try:
        child = node[key]
    except (MissingMandatoryValue, InterpolationToMissingValueError):  # ??? or refers to one
        return MISSING
    return _as_objects(child) if OmegaConf.is_config(child) else child


def config_to_dict(cfg: DictConfig | DivotConfig) -> dict:
    """Plain, fully resolved values (enums as their names, no ``hydra`` node): for saving,
    hashing and comparing configs."""
    plain = OmegaConf.to_container(config_node(cfg), resolve=True, enum_to_str=True)
    plain.pop("hydra", None)
    return plain


def config_to_yaml(cfg: DictConfig | DivotConfig) -> str:
    """``config_to_dict`` as YAML, as a run's ``config.yaml`` holds it."""
    return OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg)))


def save_resolved_config(cfg: DivotConfig, out_dir: str | os.PathLike) -> Path:
    """Write the fully resolved config (no interpolations left) beside a run's outputs."""
    missing = missing_keys(cfg)
    if missing:
        raise ConfigError("config values must be set: " + ", ".join(missing))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESOLVED_CONFIG_NAME
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(config_to_yaml(cfg))
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
