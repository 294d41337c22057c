"""Components chosen by name from config: one registry per kind (video tokenizers,
de-tokenizers, ...).

Convention: the component ``<arch>`` of a kind lives in ``<package>/<arch>.py`` and
registers itself with the kind's decorator; registering also stores its config dataclass
(``config_class``) as the kind's ``<group>/schema_<arch>`` Hydra config. A new component is
that module plus one yaml under the kind's config group whose defaults list names
``schema_<arch>``: composing a config imports the modules those yamls name
(``divot_llm.config.components``); otherwise a module is imported on first use. A module
that is slow to import (transformers, diffusers) may keep its config dataclass in
``<package>/<arch>_config.py``, registered with ``register_config``: composing then
imports only that.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from omegaconf import MISSING

from divot_llm.config.components import COMPONENT_PACKAGES, import_component_module, store_schema
from divot_llm.config.loading import ConfigError

C = TypeVar("C")


class ComponentRegistry(Generic[C]):
    """Classes of one kind by ``arch`` name.

    Args:
        kind: what the components are, for messages ("video tokenizer").
        config_group: the kind's config group ("video_tokenizer"); its ``<arch>.py``
            modules live in ``COMPONENT_PACKAGES[config_group]`` ("divot_llm.tokenizers").
    """

    def __init__(self, kind: str, config_group: str):
        self.kind, self.config_group = kind, config_group
        self.package = COMPONENT_PACKAGES[config_group]
        self._classes: dict[str, type[C]] = {}

    def register(self, arch: str) -> Callable[[type[C]], type[C]]:
        """Class decorator: build this class for configs whose ``arch`` is ``arch``, and
        make its ``config_class`` (a dataclass Hydra can merge YAML onto) the schema of
        the ``<config_group>/schema_<arch>`` config."""

        def register(cls: type[C]) -> type[C]:
            if arch in self._classes and self._classes[arch] is not cls:
                raise ValueError(f"{self.kind} arch {arch!r} is already registered by {self._classes[arch]}")
            store_schema(self.config_group, arch, cls.config_class)
            self._classes[arch] = cls
            return cls

        return register

    def register_config(self, arch: str) -> Callable[[type], type]:
        """Dataclass decorator: make this the schema of ``arch``'s options before its
        class is imported (in ``<arch>_config.py``; the class's ``config_class`` is it)."""

        def register_config(schema: type) -> type:
            store_schema(self.config_group, arch, schema)
            return schema

        return register_config

    def get(self, arch: str) -> type[C]:
        """The class registered for ``arch``, importing ``<package>.<arch>`` if needed.

        Raises:
            ValueError: no such component.
        """
        if arch not in self._classes:
            import_component_module(self.config_group, arch)
        if arch not in self._classes:
            raise ValueError(
                f"unknown {self.kind} arch {arch!r} (registered: {sorted(self._classes)}); expected "
                f"{self.package.replace('.', '/')}/{arch}.py registering itself for {arch!r}"
            )
        return self._classes[arch]

    def resolve(self, config: Any) -> tuple[type[C], Any]:
        """The class a config names and the config as that class's dataclass.

        Args:
            config: the class's config dataclass (as a composed config holds it) or a
                plain mapping of its fields.

        Raises:
            ConfigError: a required value is still ``???``, or unknown keys.
            ValueError: unknown ``arch``.
        """
        arch = config["arch"] if isinstance(config, Mapping) else config.arch
        cls = self.get(arch)
        return cls, self._as_config(cls.config_class, config)

    def _as_config(self, config_class: type, config: Any) -> Any:
        if not isinstance(config, config_class):
            names = {f.name for f in dataclasses.fields(config_class)}
            unknown = sorted(set(config) - names)
            if unknown:
                raise ConfigError(f"unknown keys for {config_class.__name__}: {unknown}")
            config = config_class(**config)
        # A composed config keeps ``???`` values as MISSING, and so does a dataclass built in
        # code with the schema's defaults (e.g. weight paths).
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
