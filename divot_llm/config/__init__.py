"""Config schemas, the Hydra config store and helpers to compose, validate, load and save
configs; local paths are checked by ``divot_llm.config.paths``."""

from divot_llm.config.loading import (
    CONF_DIR,
    ConfigError,
    apply_overrides,
    compose_config,
    compose_dictconfig,
    config_to_dict,
    config_to_yaml,
    load_saved_config,
    missing_keys,
    register_configs,
    save_resolved_config,
    to_typed,
    validate_config,
)
from divot_llm.config.schema import DivotConfig

__all__ = [
    "CONF_DIR",
    "ConfigError",
    "DivotConfig",
    "apply_overrides",
    "compose_config",
    "compose_dictconfig",
    "config_to_dict",
    "config_to_yaml",
    "load_saved_config",
    "missing_keys",
    "register_configs",
    "save_resolved_config",
    "to_typed",
    "validate_config",
]
