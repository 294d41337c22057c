"""Prepare a GPU machine without network access for ``tools/bench/gpu_7b.sh``: on a
machine with network (and the project's dev environment), download the wheels of every
package ``pip install -e .`` needs that the GPU machine's image lacks, into a folder that
travels with the working tree.

    python tools/bench/gpu_prep.py                         # -> wheels/ (git-ignored)
    python tools/bench/gpu_prep.py --out wheels --have image-packages.txt

The packages are the closure of pyproject.toml's dependencies, walked through each
wheel's own requirements (markers evaluated for the target: CPython ``--python-version``
on x86-64 Linux), minus the ones ``--have`` lists (one name per line, ``pip freeze``
lines too; default ``tools/bench/gpu_image.txt``, the image of our H200 test machine).
Versions are constraints.txt's pins where it has one. Wheels are binary for the target
where PyPI has them; packages that ship only a source archive (DeepSpeed, the ANTLR
runtime) are built here into pure-Python wheels (DeepSpeed JIT-builds its ops, and
training uses torch's fused AdamW, so none is needed). The Mistral ``tokenizer.model``
(from mistral-common, a dev dependency) is copied to ``<out>/mistral_tokenizer``.
On the GPU machine ``tools/bench/gpu_7b.sh`` installs from the folder with
``pip install --no-index --find-links <out> -e .``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[2]
# pip matches each manylinux tag exactly: offer every glibc the target may have.
PLATFORMS = ["manylinux2014_x86_64", "linux_x86_64"] + [f"manylinux_2_{n}_x86_64" for n in range(17, 40)]
CARRY_LIMIT_MIB = 64  # what travels to the GPU machine, working tree included


def read_names(path: Path) -> set[str]:
    """Package names of a list (``name``, ``name==1.0`` or ``pip freeze`` lines, # comments)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(canonicalize_name(re.split(r"[\s=<>!~;\[@]", line, maxsplit=1)[0]))
    return names


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.strip()
    return pins


def project_requirements() -> list[Requirement]:
    import tomllib  # Python >= 3.11 (the dev environment's)

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


def wheel_requirements(wheel: Path, environment: dict[str, str]) -> list[Requirement]:
    """The wheel's Requires-Dist that apply on the target (no extras)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    requirements = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({**environment, "extra": ""})]


def fetch(name: str, pin: str | None, out: Path, python_version: str) -> Path:
    """The target's wheel of ``name`` in ``out``: a binary one downloaded, or (source
    archive only) a pure-Python one built here."""
    spec = f"{name}=={pin}" if pin else name
    before = set(out.glob("*.whl"))
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                "--implementation", "cp", "--python-version", python_version, "--dest", str(out)]  # fmt: skip
    for platform in PLATFORMS:
        download += ["--platform", platform]
    if subprocess.run([*download, spec], capture_output=True, text=True).returncode != 0:
        # no wheel on the index: build one here (--no-build-isolation: DeepSpeed's
        # setup.py imports torch, which this environment has)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "--wheel-dir", str(out), spec],
            check=True,
        )  # fmt: skip
    new = [
        w
        for w in set(out.glob("*.whl")) - before
        if canonicalize_name(parse_wheel_filename(w.name)[0]) == name
    ]
    found = new or [
        w for w in out.glob("*.whl") if canonicalize_name(parse_wheel_filename(w.name)[0]) == name
    ]
    if len(found) != 1:
        raise SystemExit(f"{name}: expected one wheel in {out}, found {[w.name for w in found]}")
    tags = parse_wheel_filename(found[0].name)[3]
    if not any(t.platform == "any" or "x86_64" in t.platform for t in tags):
        raise SystemExit(f"{found[0].name} does not run on x86-64 Linux (built here for another platform)")
    return found[0]


def copy_tokenizer(out: Path) -> Path | None:
    try:
        import importlib.resources

        model = importlib.resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    except ModuleNotFoundError:
        return None
    folder = out / "mistral_tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    with importlib.resources.as_file(model) as source:
        shutil.copyfile(source, folder / "tokenizer.model")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "wheels"), help="wheel folder (default: wheels/)")
    parser.add_argument(
        "--have", default=str(REPO / "tools" / "bench" / "gpu_image.txt"), help="packages the GPU image has"
    )
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python (major.minor)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    have = read_names(Path(args.have))
    pins = read_pins(REPO / "constraints.txt")
    environment = {
        **default_environment(),
        "python_version": args.python_version,
        "python_full_version": f"{args.python_version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
    }
    todo = [canonicalize_name(r.name) for r in project_requirements()]
    done: dict[str, Path] = {}
    while todo:
        name = todo.pop(0)
        if name in have or name in done:
            continue
        wheel = fetch(name, pins.get(name), out, args.python_version)
        done[name] = wheel
        print(f"{wheel.name}  ({wheel.stat().st_size / 2**20:.1f} MiB)", flush=True)
        todo += [canonicalize_name(r.name) for r in wheel_requirements(wheel, environment)]
    stale = [w for w in out.glob("*.whl") if w not in done.values()]
    for wheel in stale:  # two versions of one package would stop the install
        wheel.unlink()
    tokenizer = copy_tokenizer(out)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"{len(done)} wheels in {out} ({total:.1f} MiB with the tokenizer)")
    print(
        f"tokenizer: {tokenizer or 'mistral-common is not installed here: pass --tokenizer on the GPU machine'}"
    )
    if total > CARRY_LIMIT_MIB - 8:
        print(f"warning: over {CARRY_LIMIT_MIB - 8} MiB; the GPU machine takes {CARRY_LIMIT_MIB} MiB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
