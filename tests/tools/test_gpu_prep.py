"""``tools/bench/gpu_prep.py``'s offline parts: which requirements of a wheel apply on the
GPU machine, and the package lists it reads. (Downloading needs network: not tested.)"""

from __future__ import annotations

import zipfile

from tests import helpers


def test_requirements_are_evaluated_for_the_target_not_this_machine(tmp_path):
    prep = helpers.load_tool("tools/bench/gpu_prep.py")
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    requires = [
        "hjson",
        "pydantic>=2.0.0",
        "tomli; python_version < '3.11'",  # this machine may be 3.10; the target is 3.12
        "pywin32; sys_platform == 'win32'",
        "pytest<8.4.0,>=7.2.0; extra == 'dev'",
        "typing-extensions>=4.6; python_version >= '3.12'",
    ]
    metadata = "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo-1.0.dist-info/METADATA", metadata)
    env = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}  # fmt: skip
    names = [r.name for r in prep.wheel_requirements(wheel, env)]
    assert names == ["hjson", "pydantic", "typing-extensions"]


def test_package_lists_and_pins_are_read_by_canonical_name(tmp_path):
    prep = helpers.load_tool("tools/bench/gpu_prep.py")
    listed = tmp_path / "have.txt"
    listed.write_text(
        "# the image\nTyping_Extensions\nhuggingface-hub==1.33.0\npydantic_core>=2  # pinned\n\n"
    )
    assert prep.read_names(listed) == {"typing-extensions", "huggingface-hub", "pydantic-core"}
    image = prep.read_names(helpers.REPO_ROOT / "tools" / "bench" / "gpu_image.txt")
    assert {"torch", "transformers", "peft", "safetensors"} <= image and "deepspeed" not in image
    pins = prep.read_pins(helpers.REPO_ROOT / "constraints.txt")
    assert pins["deepspeed"] and pins["hydra-core"] and pins["antlr4-python3-runtime"]
