"""Every runtime dependency declared in pyproject.toml is imported by the package
(divot_llm/ or data_recipes/): an unused one fails here instead of being installed forever."""

from __future__ import annotations

import ast
import re

import pytest

from tests import helpers

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PACKAGES = ("divot_llm", "data_recipes")

# Distributions whose import name is not their normalised distribution name. tensorboard
# serves through torch's writer, which imports it.
IMPORTED_AS: dict[str, tuple[str, ...]] = {
    "pillow": ("PIL",),
    "hydra-core": ("hydra",),
    "pyyaml": ("yaml",),
    "tensorboard": ("tensorboard", "torch.utils.tensorboard"),
    "open-clip-torch": ("open_clip",),
    "flash-attn": ("flash_attn",),
}


def runtime_dependencies() -> list[str]:
    """Distribution names of ``[project].dependencies``, lower-cased, ``_`` as ``-``."""
    project = tomllib.loads((helpers.REPO_ROOT / "pyproject.toml").read_text())["project"]
    names = [re.match(r"[A-Za-z0-9._-]+", spec.strip()).group(0) for spec in project["dependencies"]]
    return [name.lower().replace("_", "-") for name in names]


def imported_modules() -> set[str]:
    """Every absolute module name imported anywhere in the package (function-local too)."""
    modules: set[str] = set()
    for package in PACKAGES:
        for path in (helpers.REPO_ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    modules.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module)
                    modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def is_imported(module: str, modules: set[str]) -> bool:
    return any(m == module or m.startswith(module + ".") for m in modules)


def test_every_runtime_dependency_is_imported():
    modules = imported_modules()
    unused = [
        name
        for name in runtime_dependencies()
        if not any(is_imported(m, modules) for m in IMPORTED_AS.get(name, (name.replace("-", "_"),)))
    ]
    assert not unused, (
        f"declared in pyproject.toml but imported nowhere in {PACKAGES}: {unused} "
        "(remove them, or add their import name to IMPORTED_AS)"
    )


def test_the_check_sees_what_it_claims():
    """The scan finds imports of each form the package uses, and a name nothing imports
    (accelerate, dropped as unused) is reported as such."""
    modules = imported_modules()
    assert is_imported("torch", modules) and is_imported("PIL", modules)
    assert is_imported("torch.utils.tensorboard", modules)  # a function-local `from` import
    assert not is_imported("accelerate", modules)
    assert "accelerate" not in runtime_dependencies()
