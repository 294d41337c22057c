"""The house's shape, checked from the source: packages import only in the allowed
directions (docs/architecture.md), modules form no import cycle, and the thin CLIs
outside the library (data_recipes/, tools/) use only the library's public names.

Every import counts: module level, inside functions and under ``TYPE_CHECKING``. A lazy
import that hides a back-arrow is still a back-arrow."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

# What each part of divot_llm may import, besides itself. The bottom layer (runtime, layout,
# config, registry, text, metrics, _compat, launch_guard) knows nothing of models, data or training;
# model/ and data/ never see each other; train/ wires them; infer/ and export/ sit above;
# cli/ is the top.
BOTTOM = ("_compat", "runtime", "layout", "launch_guard")
ALLOWED: dict[str, set[str]] = {
    "__init__": {*BOTTOM},
    "_compat": set(),
    "runtime": set(),
    "layout": set(),
    "launch_guard": set(),
    "config": {*BOTTOM},
    "metrics": {*BOTTOM, "config"},  # PSNR/SSIM/LPIPS/FVD: scored by tokenizers up to export
    "registry": {*BOTTOM, "config"},
    "text": {*BOTTOM, "config"},  # encoders.py reads stage.text_encoder
    "data": {*BOTTOM, "config", "text"},
    "tokenizers": {*BOTTOM, "config", "registry", "metrics"},
    "detokenizers": {*BOTTOM, "config", "registry", "metrics", "tokenizers"},
    "model": {*BOTTOM, "config", "registry", "metrics", "text", "tokenizers", "detokenizers"},
    "train": {
        *BOTTOM,
        "config",
        "registry",
        "metrics",
        "text",
        "data",
        "tokenizers",
        "detokenizers",
        "model",
    },
    "infer": {
        *BOTTOM,
        "config",
        "registry",
        "metrics",
        "text",
        "data",
        "tokenizers",
        "detokenizers",
        "model",
    },
    "export": {
        *BOTTOM,
        "config",
        "registry",
        "metrics",
        "text",
        "data",
        "tokenizers",
        "detokenizers",
        "model",
        "train",
        "infer",
    },
    "cli": {"*"},
}


def module_name(path: Path, root: Path = REPO_ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = REPO_ROOT) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """(line, module, names) of every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield node.lineno, base, tuple(alias.name for alias in node.names)


def part_of(module: str) -> str | None:
    """``divot_llm.train.stages.llm`` -> ``train``; ``divot_llm`` -> ``__init__``; None
    outside the library."""
    parts = module.split(".")
    if parts[0] != "divot_llm":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def library_files(root: Path = REPO_ROOT) -> list[Path]:
    return sorted((root / "divot_llm").rglob("*.py"))


def test_every_part_of_the_library_is_placed():
    parts = {part_of(module_name(f)) for f in library_files()} - {None}
    assert parts <= set(ALLOWED), f"add {sorted(parts - set(ALLOWED))} to ALLOWED with its direction"


def back_arrows(root: Path = REPO_ROOT) -> list[str]:
    """``file:line: source -> target`` for every import against ``ALLOWED``."""
    found = []
    for file in library_files(root):
        if file.name == "__main__.py":
            continue  # `python -m divot_llm.train` shims run a CLI: they are entry points, not library
        source = part_of(module_name(file, root))
        allowed = ALLOWED.get(source, set())
        for line, target, _ in imported_modules(file, root):
            to = part_of(target)
            if to is None or to == source or "*" in allowed or to in allowed:
                continue
            found.append(f"{file.relative_to(root)}:{line}: {source} -> {to} ({target})")
    return found


def test_packages_import_only_in_the_allowed_directions():
    found = back_arrows()
    assert not found, "imports against the allowed direction:\n" + "\n".join(found)


def import_graph() -> dict[str, set[str]]:
    """Module -> library modules it imports (``from pkg import name`` counts as importing
    ``pkg.name`` when that is a module)."""
    modules = {module_name(f): f for f in library_files()}
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        edges = set()
        for _, target, names in imported_modules(file):
            if target in modules:
                edges.add(target)
            edges |= {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among modules, ignoring a package's edges to its own submodules
    (``pkg/__init__`` re-exporting ``pkg.x`` is not a cycle with ``pkg.x``)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own submodules
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_modules_import_each_other_without_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("folder", ["data_recipes", "tools"])
def test_thin_clis_use_only_public_library_names(folder):
    private = []
    for file in sorted((REPO_ROOT / folder).rglob("*.py")):
        for line, target, names in imported_modules(file):
            if not target.startswith("divot_llm"):
                continue
            hidden = [n for n in names if n.startswith("_")]
            hidden += [p for p in target.split(".") if p.startswith("_")]
            if hidden:
                private.append(f"{file.relative_to(REPO_ROOT)}:{line}: {target} {hidden}")
    assert not private, "private library names used outside the library:\n" + "\n".join(private)


def test_the_checks_see_a_back_arrow_and_a_cycle(tmp_path):
    """The checks themselves can fail: a planted back-arrow and a planted cycle are found."""
    planted = tmp_path / "divot_llm" / "model" / "bad.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("def late():\n    from ..train import trainer\n")
    assert back_arrows(tmp_path) == ["divot_llm/model/bad.py:2: model -> train (divot_llm.train)"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"p": {"p.x"}, "p.x": {"p"}}) is None
