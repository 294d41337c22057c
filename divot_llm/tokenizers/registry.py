"""Pick a video tokenizer by the ``arch`` name in its config.

Convention: the tokenizer ``<arch>`` lives in ``divot_llm/tokenizers/<arch>.py`` and
registers itself with ``@register_video_tokenizer("<arch>")``. Its module is imported on
first use, so a new tokenizer is one file plus one ``conf/video_tokenizer/*.yaml``, and
importing this package never pulls in transformers.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, MissingMandatoryValue, OmegaConf

from divot_llm.config.loading import ConfigError
from divot_llm.tokenizers.base import VideoTokenizer

T = TypeVar("T", bound=type[VideoTokenizer])

_REGISTRY: dict[str, type[VideoTokenizer]] = {}


def register_video_tokenizer(arch: str) -> Callable[[T], T]:
    """Class decorator: make ``build_video_tokenizer`` build this class for ``arch``."""

    def register(cls: T) -> T:
        if arch in _REGISTRY and _REGISTRY[arch] is not cls:
            raise ValueError(f"video tokenizer arch {arch!r} is already registered by {_REGISTRY[arch]}")
        _REGISTRY[arch] = cls
        return cls

    return register


def video_tokenizer_class(arch: str) -> type[VideoTokenizer]:
    """The class registered for ``arch``, importing ``divot_llm.tokenizers.<arch>`` if needed.

    Raises:
        ValueError: no such tokenizer.
    """
    if arch not in _REGISTRY and arch.isidentifier():
        module = f"{__package__}.{arch}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # the module exists but one of its imports is missing
                raise
    if arch not in _REGISTRY:
        raise ValueError(
            f"unknown video tokenizer arch {arch!r} (registered: {sorted(_REGISTRY)}); "
            f"expected divot_llm/tokenizers/{arch}.py with @register_video_tokenizer({arch!r})"
        )
    return _REGISTRY[arch]


def build_video_tokenizer(config: Any) -> VideoTokenizer:
    """Build the frozen tokenizer a ``video_tokenizer`` config describes, weights loaded.

    Args:
        config: the composed ``cfg.video_tokenizer`` node, a plain mapping, or an instance
            of the tokenizer's config dataclass. Its ``arch`` picks the implementation.

    Returns:
        The tokenizer, frozen, in fp32 on the CPU; move it with ``.to(device, dtype)``.

    Raises:
        ConfigError: a required value (e.g. a weights path) is still ``???``.
        ValueError: unknown ``arch``.
    """
    arch = config.arch if not isinstance(config, Mapping) else config["arch"]
    cls = video_tokenizer_class(arch)
    return cls.from_config(_as_config(cls.config_class, config))


def _as_config(config_class: type, config: Any) -> Any:
    """``config_class`` instance from a composed DictConfig, a mapping or an instance."""
    if isinstance(config, DictConfig):
        try:
            config = OmegaConf.to_container(config, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as err:
            raise ConfigError(f"video_tokenizer.{err.key} must be set (it is ???)") from err
    if not isinstance(config, config_class):
        names = {f.name for f in dataclasses.fields(config_class)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ConfigError(f"unknown keys for {config_class.__name__}: {unknown}")
        config = config_class(**config)
    # A dataclass built in code keeps the schema's ``???`` defaults (e.g. weight paths).
    missing = [f.name for f in dataclasses.fields(config) if getattr(config, f.name) == MISSING]
    if missing:
        raise ConfigError(f"video_tokenizer.{missing[0]} must be set (it is ???)")
    return config
