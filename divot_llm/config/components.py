"""Config groups whose options are components chosen by ``arch`` (``divot_llm.registry``),
and how each component's schema reaches Hydra's ConfigStore.

A component ``<arch>`` of such a group is one module, ``<package>/<arch>.py``, whose class
registers itself with the group's registry; registering stores the class's config dataclass
as ``<group>/schema_<arch>``, the name each option's yaml puts in its defaults list::

    # conf/video_tokenizer/divot_tiny.yaml
    defaults:
      - schema_divot
      - _self_

Before Hydra composes, ``register_component_schemas`` imports the module of every
``schema_<arch>`` that the config dir's options name, so a new component is its module plus
its yaml: nothing in ``schema.py`` or ``loading.py`` lists it. A config read back from a
file finds its schema the same way, by its ``arch`` (``component_schema``).

A component whose module is slow to import may register its config dataclass from a light
``<package>/<arch>_config.py`` (the built-in ones do: importing transformers and diffusers
would take ``divot-config`` from under a second to several); that module is imported first.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.object_type import ObjectType
from omegaconf import OmegaConf

# group -> the package holding its components, one ``<arch>.py`` module each.
COMPONENT_PACKAGES: dict[str, str] = {
    "video_tokenizer": "divot_llm.tokenizers",
    "detokenizer": "divot_llm.detokenizers",
    "motion_tokenizer": "divot_llm.tokenizers.motion",
    "keyframe_tokenizer": "divot_llm.tokenizers.keyframe",
    "motion_detokenizer": "divot_llm.detokenizers.motion",
}
# groups a config may leave empty (null): only the stages that use them need one
OPTIONAL_GROUPS: frozenset[str] = frozenset({"motion_tokenizer", "keyframe_tokenizer", "motion_detokenizer"})
SCHEMA_PREFIX = "schema_"  # an option's defaults list names its schema schema_<arch>
CONFIG_MODULE_SUFFIX = "_config"  # <arch>_config.py: a component's schema alone


def store_schema(group: str, arch: str, schema: type) -> None:
    """Make ``schema`` (a dataclass) the ``<group>/schema_<arch>`` config Hydra merges
    ``arch``'s options onto."""
    ConfigStore.instance().store(group=group, name=SCHEMA_PREFIX + arch, node=schema)


def component_schema(group: str, arch: str) -> type | None:
    """The schema dataclass of component ``arch`` of ``group``, importing its
    ``<arch>_config.py`` or else its ``<arch>.py`` if it has not registered yet; None when
    there is no such component."""
    if not arch.isidentifier():
        return None
    for module in (arch + CONFIG_MODULE_SUFFIX, arch):
        schema = _stored_schema(group, arch)
        if schema is not None:
            return schema
        _import_if_present(f"{COMPONENT_PACKAGES[group]}.{module}")
    return _stored_schema(group, arch)


def _stored_schema(group: str, arch: str) -> type | None:
    store, path = ConfigStore.instance(), f"{group}/{SCHEMA_PREFIX}{arch}.yaml"
    if store.get_type(path) != ObjectType.CONFIG:
        return None
    return OmegaConf.get_type(store.load(path).node)


def import_component_module(group: str, arch: str) -> None:
    """Import ``<package>/<arch>.py`` of ``group``'s components if it exists (importing it
    registers its class and schema); a name that is no module is left to the caller."""
    if arch.isidentifier():
        _import_if_present(f"{COMPONENT_PACKAGES[group]}.{arch}")


def _import_if_present(module: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:  # the module exists but one of its imports is missing
            raise


def register_component_schemas(conf_dir: Path) -> None:
    """Import the components whose schemas the options under ``conf_dir`` name (and that
    have not registered yet), so that Hydra finds every ``<group>/schema_<arch>``. A name
    no module provides is left for Hydra to report when an option using it is chosen."""
    store = ConfigStore.instance()
    for group in COMPONENT_PACKAGES:
        for arch in sorted(_schemas_named(conf_dir / group)):
            if store.get_type(f"{group}/{SCHEMA_PREFIX}{arch}.yaml") != ObjectType.CONFIG:
                component_schema(group, arch)


def _schemas_named(group_dir: Path) -> set[str]:
    """The ``<arch>`` of every ``schema_<arch>`` in the defaults lists of ``group_dir/*.yaml``."""
    found = set()
    for option in group_dir.glob("*.yaml"):
        stat = option.stat()
        found.update(_option_schemas(option, stat.st_mtime_ns, stat.st_size))
    return found


@functools.lru_cache(maxsize=1024)
def _option_schemas(option: Path, mtime_ns: int, size: int) -> frozenset[str]:
    """The ``<arch>`` of the ``schema_<arch>`` entries in one option's defaults list, read
    once per version of the file: every compose registers, and parsing all the options
    again was a quarter of a compose's time (tests compose hundreds of times)."""
    data = yaml.safe_load(option.read_text())
    defaults = (data.get("defaults") or []) if isinstance(data, dict) else []
    return frozenset(
        entry.removeprefix(SCHEMA_PREFIX)
        for entry in defaults
        if isinstance(entry, str) and entry.startswith(SCHEMA_PREFIX)
    )
