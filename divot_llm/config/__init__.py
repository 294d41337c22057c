"""Config schemas, the Hydra config store and helpers to compose / save configs."""

from divot_llm.config.loading import (
    CONF_DIR,
    ConfigError,
    compose_config,
    missing_keys,
    register_configs,
    save_resolved_config,
)
from divot_llm.config.schema import DivotConfig

__all__ = [
    "CONF_DIR",
    "ConfigError",
    "DivotConfig",
    "compose_config",
    "missing_keys",
    "register_configs",
    "save_resolved_config",
]
