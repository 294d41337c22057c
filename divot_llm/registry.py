"""Components chosen by name from config: one registry per kind (video tokenizers,
de-tokenizers, ...).

Convention: the component ``<arch>`` of a kind lives in ``<package>/<arch>.py`` and
registers itself with the kind's decorator. Its module is imported on first use, so a
new component is one file plus one yaml under the kind's config group, and importing the
package stays cheap (no transformers/diffusers until a component is built).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from omegaconf import MISSING, DictConfig, MissingMandatoryValue, OmegaConf

from divot_llm.config.loading import ConfigError

C = TypeVar("C")


class ComponentRegistry(Generic[C]):
    """Classes of one kind by ``arch`` name.

    Args:
        kind: what the components are, for messages ("video tokenizer").
        package: where ``<arch>.py`` modules live ("divot_llm.tokenizers").
        config_group: the config group, for messages ("video_tokenizer").
    """

    def __init__(self, kind: str, package: str, config_group: str):
        self.kind, self.package, self.config_group = kind, package, config_group
        self._classes: dict[str, type[C]] = {}

    def register(self, arch: str) -> Callable[[type[C]], type[C]]:
        """Class decorator: build this class for configs whose ``arch`` is ``arch``."""

        def register(cls: type[C]) -> type[C]:
            if arch in self._classes and self._classes[arch] is not cls:
                raise ValueError(f"{self.kind} arch {arch!r} is already registered by {self._classes[arch]}")
            self._classes[arch] = cls
            return cls

        return register

    def get(self, arch: str) -> type[C]:
        """The class registered for ``arch``, importing ``<package>.<arch>`` if needed.

        Raises:
            ValueError: no such component.
        """
        if arch not in self._classes and arch.isidentifier():
            module = f"{self.package}.{arch}"
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as err:
                if err.name != module:  # the module exists but one of its imports is missing
                    raise
        if arch not in self._classes:
            raise ValueError(
                f"unknown {self.kind} arch {arch!r} (registered: {sorted(self._classes)}); expected "
                f"{self.package.replace('.', '/')}/{arch}.py registering itself for {arch!r}"
            )
        return self._classes[arch]

    def resolve(self, config: Any) -> tuple[type[C], Any]:
        """The class a config names and the config as that class's dataclass.

        Args:
            config: a composed DictConfig node, a plain mapping, or a dataclass instance.

        Raises:
            ConfigError: a required value is still ``???``, or unknown keys.
            ValueError: unknown ``arch``.
        """
        arch = config["arch"] if isinstance(config, Mapping) else config.arch
        cls = self.get(arch)
        return cls, self._as_config(cls.config_class, config)

    def _as_config(self, config_class: type, config: Any) -> Any:
        if isinstance(config, DictConfig):
            try:
                config = OmegaConf.to_container(config, resolve=True, throw_on_missing=True)
            except MissingMandatoryValue as err:
                raise ConfigError(f"{self.config_group}.{err.key} must be set (it is ???)") from err
        if not isinstance(config, config_class):
            names = {f.name for f in dataclasses.fields(config_class)}
            unknown = sorted(set(config) - names)
            if unknown:
                raise ConfigError(f"unknown keys for {config_class.__name__}: {unknown}")
            config = config_class(**config)
        # A dataclass built in code keeps the schema's ``???`` defaults (e.g. weight paths).
        missing = [f.name for f in dataclasses.fields(config) if getattr(config, f.name) == MISSING]
        if missing:
            raise ConfigError(f"{self.config_group}.{missing[0]} must be set (it is ???)")
        return config

    def load_saved(self, path: str | os.PathLike, config_file: str) -> C:
        """A component folder written by its ``save_pretrained``; the ``arch`` in its
        ``config_file`` picks the class.

        Raises:
            FileNotFoundError: no ``config_file`` in ``path``.
        """
        file = Path(path) / config_file
        if not file.is_file():
            raise FileNotFoundError(f"{path} is not a saved {self.kind} (no {config_file})")
        return self.get(json.loads(file.read_text())["arch"]).from_pretrained(path)
