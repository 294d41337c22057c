"""Docs are executable: every command line shown in the shell blocks of README.md and of
every docs/*.md page, and in each CLI's ``--help``, goes through the real argument parser
of what it runs, without doing the work. argparse CLIs stop right after ``parse_args``; Hydra overrides (``divot-train``, the
launch scripts, ``deepspeed``/``torchrun``/``python -m divot_llm.train``, and every
parsed ``overrides`` list: ``divot-config``, ``divot-data features``, ``--set``) are
composed through ``divot_llm.config``, where ``???`` values and paths that do not exist
are fine but unknown keys, groups and bad syntax fail. The launchers' own options go
through DeepSpeed's and torchrun's parsers, and what their ranks run through its own
(``divot_llm.train``, or ``data_recipes``: ``divot-data``'s, as for ``launch/features.sh``);
``make`` targets must exist in the Makefile.

A command whose form is not known here fails, so a new example is either checked or
refused, never skipped. An example followed by ``# config error: ...`` comment lines
documents a failure: it must fail, with those lines in its message.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import io
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from tests.helpers import REPO_ROOT

README = REPO_ROOT / "README.md"
DOC_PAGES = sorted((REPO_ROOT / "docs").glob("*.md"))
SHELL_FENCES = ("bash", "sh", "shell", "console")
# Other tools' commands the docs show (installing): not ours to parse.
OTHER_TOOLS = (("pip",), ("python3", "-m", "venv"), (".",))
HYDRA_CLIS = ("divot-train",)  # Hydra apps: their arguments are overrides
TRAIN_MODULE = "divot_llm.train"
RECIPES_MODULE = "data_recipes"  # divot-data's recipes, under a launcher (launch/features.sh)
RANK_MODULES = (TRAIN_MODULE, RECIPES_MODULE)
# The first word of a help-text line that shows a command (help texts also hold layouts).
COMMAND_LIKE = re.compile(r"^(divot-[\w-]+|(\./)?launch/\S+|python3?|deepspeed|torchrun)$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
OPERATORS = ("&&", "||", ";", "|")


@dataclass(frozen=True)
class Example:
    where: str  # README.md:LINE, docs/data.md:LINE or "divot-infer comprehend --help"
    line: str
    documented_error: tuple[str, ...] = ()  # "# config error: ..." lines after it


# ------------------------------------------------------------------- extraction


def doc_examples(page: Path) -> list[Example]:
    """Every command line of a markdown page's code blocks, continuations joined: each line
    of a shell block, and lines that start with a command word in other blocks (layouts)."""
    name = page.relative_to(REPO_ROOT).as_posix()
    examples: list[Example] = []
    fence: str | None = None
    pending: list[str] = []  # a command still being continued with "\"
    start = last = 0  # page lines of the command being read / of the last example's end
    for number, raw in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.strip().removeprefix("$ ")
        if text.startswith("```"):
            fence = text[3:].strip() if fence is None else None
        elif fence is None or not text:
            continue
        elif fence not in SHELL_FENCES and not pending and not _is_command(text):
            continue
        elif pending or not text.startswith("#"):
            start = start if pending else number
            pending.append(text.removesuffix("\\").strip())
            if not text.endswith("\\"):
                examples.append(Example(f"{name}:{start}", " ".join(pending)))
                pending, last = [], number
        elif number == last + 1 and (text.startswith("# config error") or examples[-1].documented_error):
            # the documented output of the example above
            example = examples[-1]
            examples[-1] = Example(
                example.where, example.line, (*example.documented_error, text.lstrip("# "))
            )
            last = number
    return examples


def help_examples(text: str, where: str) -> list[Example]:
    """Lines of a help text that show a command: indented, starting with a command word."""
    return [
        Example(where, line.strip())
        for line in text.splitlines()
        if line.startswith("    ") and _is_command(line)
    ]


def _is_command(line: str) -> bool:
    words = _drop_env(line.split())
    return bool(words) and COMMAND_LIKE.match(words[0]) is not None


@functools.cache
def console_scripts() -> dict[str, importlib.metadata.EntryPoint]:
    """The project's console scripts, from its installed metadata: a new CLI is covered."""
    scripts = importlib.metadata.distribution("divot-llm").entry_points
    return {ep.name: ep for ep in scripts if ep.group == "console_scripts"}


def help_texts(name: str) -> dict[str, str]:
    """``--help`` of a console script and of each of its sub-commands (a Hydra app: its
    module docstring, which is what documents it)."""
    entry = console_scripts()[name]
    if name in HYDRA_CLIS:
        return {f"{name} (module docstring)": importlib.import_module(entry.module).__doc__}
    main = entry.load()
    texts = {f"{name} --help": _help_output(main, [])}
    # sub-commands are listed on a line of their own under "positional arguments:"
    positionals = texts[f"{name} --help"].partition("positional arguments:")[2]
    choices = re.search(r"^\s+\{([\w,-]+)\}\s*$", positionals, flags=re.M)
    for command in choices.group(1).split(",") if choices else []:
        texts[f"{name} {command} --help"] = _help_output(main, [command])
    return texts


def _help_output(main: Callable, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return out.getvalue()


# ---------------------------------------------------------------------- parsing


class _Parsed(Exception):
    """Raised right after a real ``parse_args``: the namespace, and no work done."""

    def __init__(self, namespace: argparse.Namespace):
        super().__init__("parsed")
        self.namespace = namespace


def parse_only(main: Callable, argv: list[str] | None, program: str) -> argparse.Namespace:
    """Run ``main`` until its argparse parser has parsed the command line."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    err = io.StringIO()
    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_and_stop):
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main() if argv is None else main(argv)
            except _Parsed as parsed:
                return parsed.namespace
            except SystemExit as exc:
                pytest.fail(f"{program}: its parser refused the command (exit {exc.code}):\n{err.getvalue()}")
    pytest.fail(f"{program}: returned without parsing a command line")


@functools.cache
def compose_error(overrides: tuple[str, ...]) -> str | None:
    """The config error composing ``overrides`` gives, or None (each set composed once)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from divot_llm.config import ConfigError, compose_config
    from divot_llm.config.loading import describe_config_error

    try:
        compose_config(list(overrides))
    except (HydraException, OmegaConfBaseException, ConfigError) as exc:
        return describe_config_error(exc)
    return None


def _drop_env(words: list[str]) -> list[str]:
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    return words


def commands(line: str) -> list[tuple[dict[str, str], list[str]]]:
    """(environment assignments, words) of each command of a shell line: comments,
    ``...`` (more arguments) and the brackets of optional parts (``[--shards]``) dropped."""
    found = []
    words: list[str] = []
    for word in [*shlex.split(line, comments=True), ";"]:
        if word not in OPERATORS:
            words.append(word)
            continue
        env = {}
        while words and ENV_ASSIGNMENT.match(words[0]):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        if words:
            found.append((env, _without_placeholders(words)))
        words = []
    return found


def _without_placeholders(words: list[str]) -> list[str]:
    kept, optional = [], False
    for word in words:
        if word == "...":
            continue
        if word.startswith("[-"):  # "[--flag value]": an optional part, shown with its value
            word, optional = word[1:], True
        if optional and word.endswith("]"):
            word, optional = word[:-1], False
        kept.append(word)
    return kept


def check_command(env: dict[str, str], words: list[str]) -> tuple[str, ...] | None:
    """Parse one command with the real parser of what it runs. Returns the Hydra
    overrides it passes, if any (composed by the caller); fails on an unknown form."""
    program, args = words[0], words[1:]
    if any(tuple(words[: len(tool)]) == tool for tool in OTHER_TOOLS):
        return None
    if program == "make":
        targets = {arg for arg in args if not arg.startswith("-") and "=" not in arg}
        assert targets <= makefile_targets(), f"make: no rule for {sorted(targets - makefile_targets())}"
        return None
    if program == "bash" and args and re.match(r"^(\./)?launch/[\w.-]+\.sh$", args[0]):
        return check_command(env, args)
    if program in HYDRA_CLIS:
        return tuple(args)
    if program in console_scripts():
        namespace = parse_only(console_scripts()[program].load(), args, program)
        return tuple(getattr(namespace, "overrides", None) or ()) or None
    if program in ("python", "python3"):
        return _check_python(args)
    if program == "deepspeed":
        from deepspeed.launcher.runner import parse_args as deepspeed_args

        parsed = deepspeed_args(args)
        assert parsed.module and parsed.user_script in RANK_MODULES, f"deepspeed runs {parsed.user_script}"
        return _rank_overrides(parsed.user_script, parsed.user_args)
    if program == "torchrun":
        from torch.distributed.run import get_args_parser

        parsed = get_args_parser().parse_args(args)
        assert parsed.module and parsed.training_script in RANK_MODULES, (
            f"torchrun runs {parsed.training_script}"
        )
        return _rank_overrides(parsed.training_script, parsed.training_script_args)
    if re.match(r"^(\./)?launch/[\w.-]+\.sh$", program):
        module, fixed = launch_script_command(REPO_ROOT / program.removeprefix("./"), env)
        return _rank_overrides(module, [*fixed, *args])
    pytest.fail(f"a command form this test does not know: {shlex.join(words)!r}")


def _rank_overrides(module: str, args: list[str]) -> tuple[str, ...] | None:
    """What a launcher's ranks run: training (its arguments are overrides), or a
    ``divot-data`` recipe (``python -m data_recipes features ...``: its parser's)."""
    if module == TRAIN_MODULE:
        return tuple(args)
    return check_command({}, ["divot-data", *args])


@functools.cache
def makefile_targets() -> frozenset[str]:
    """The targets the Makefile has rules for (``name ...: prerequisites`` lines)."""
    targets: set[str] = set()
    for line in (REPO_ROOT / "Makefile").read_text().splitlines():
        rule = re.match(r"^([^\s#:=][^:=]*):(?!=)", line)
        if rule:
            targets.update(rule[1].split())
    return frozenset(targets)


def _check_python(args: list[str]) -> tuple[str, ...] | None:
    if args[:2] == ["-m", TRAIN_MODULE]:
        return tuple(args[2:])
    if args and args[0].startswith("tools/") and args[0].endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"docs_{Path(args[0]).stem}", REPO_ROOT / args[0])
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        try:
            spec.loader.exec_module(module)
            with mock.patch.object(sys, "argv", args):
                parse_only(module.main, None, args[0])
        finally:
            del sys.modules[spec.name]
        return None
    pytest.fail(f"a python command this test does not know: python {shlex.join(args)!r}")


def launch_script_command(script: Path, env: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """What a launch script's ranks run -- ``divot_llm.train`` or ``data_recipes`` -- and
    the arguments it puts before the user's (``"experiment=${EXPERIMENT:-x}"``, ``features``)
    in its launcher line, with the command line's environment applied."""
    assert script.is_file(), f"no launch script {script}"
    for line in script.read_text().splitlines():
        words = shlex.split(line, comments=True)
        launcher = next((w for w in ("divot_deepspeed", *RANK_MODULES) if w in words), None)
        if "$@" not in words or launcher is None:
            continue
        fixed = words[words.index(launcher) + 1 : words.index("$@")]
        module = TRAIN_MODULE if launcher == "divot_deepspeed" else launcher
        return module, tuple(re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m[1], m[2]), w) for w in fixed)
    pytest.fail(f"{script.name}: no line that launches {' or '.join(RANK_MODULES)} with the user's arguments")


def check_example(example: Example) -> None:
    overrides_list = [check_command(env, words) for env, words in commands(example.line)]
    for overrides in overrides_list:
        if overrides is None:
            continue
        error = compose_error(overrides)
        if example.documented_error:
            assert error is not None, f"{example.where}: documented to fail, but composes: {example.line}"
            for documented in example.documented_error:
                assert documented.removeprefix("config error: ") in error, (
                    f"{example.where}: documented output {documented!r} not in the error:\n{error}"
                )
        else:
            assert error is None, f"{example.where}: {example.line}\nconfig error: {error}"


# ------------------------------------------------------------------------ tests

DOC_EXAMPLES = [example for page in (README, *DOC_PAGES) for example in doc_examples(page)]


@pytest.mark.parametrize("example", DOC_EXAMPLES, ids=[e.where for e in DOC_EXAMPLES])
def test_doc_command_parses(example):
    check_example(example)


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_help_examples_parse(name):
    texts = help_texts(name)
    examples = [e for where, text in texts.items() for e in help_examples(text, where)]
    assert examples or name == "divot-config", f"{name}: no example in its help"
    for example in examples:
        check_example(example)


def test_the_extraction_finds_the_documented_commands():
    """A broken extractor would make every test above pass on nothing."""
    assert {page.name for page in DOC_PAGES} >= {
        "data.md",
        "training.md",
        "detokenizer.md",
        "export-and-inference.md",
        "development.md",
        "architecture.md",
    }
    lines = [e.line for e in DOC_EXAMPLES]
    assert len(lines) >= 35
    programs = {words[0] for line in lines for _, words in commands(line)}
    assert {"divot-config", "divot-data", "divot-export", "divot-merge", "divot-infer", "make"} <= programs
    assert {"deepspeed", "torchrun", "launch/train_cpu.sh", "launch/pretrain.sh", "python"} <= programs
    assert any(e.documented_error for e in DOC_EXAMPLES)  # the misspelt-key example
    readme = [e.line for e in DOC_EXAMPLES if e.where.startswith("README.md:")]
    assert any(line.startswith("make demo") for line in readme)
    assert any(line.startswith("make test") for line in readme)
    shell_fences = {f"```{fence}" for fence in SHELL_FENCES}
    for page in DOC_PAGES:  # every page with a shell block yields its commands
        shell = any(line.strip() in shell_fences for line in page.read_text().splitlines())
        assert not shell or any(e.where.startswith(f"docs/{page.name}:") for e in DOC_EXAMPLES), page.name


def test_the_config_group_table_lists_every_option():
    """docs/training.md's table of config groups names exactly the yaml files of conf/."""
    table = (REPO_ROOT / "docs" / "training.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", table, flags=re.M)
    documented = {group: set(re.findall(r"`(\w+)`", options)) for group, options in rows}
    on_disk = {
        group.name: {yaml.stem for yaml in group.glob("*.yaml")}
        for group in (REPO_ROOT / "conf").iterdir()
        if group.is_dir()
    }
    assert documented == on_disk


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", [README, *DOC_PAGES], ids=lambda page: page.name)
def test_links_between_pages_resolve(page):
    """Every relative link of a page names a file that exists, and a heading of it when it
    has an ``#anchor``: pages can be split and renamed without leaving dead links."""
    for target, anchor in re.findall(r"\]\((?!https?:)([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text()):
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: link to a missing file {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{page.name}: no heading #{anchor} in {target}"


def test_an_unknown_command_form_and_a_bad_flag_fail():
    with pytest.raises(pytest.fail.Exception, match="does not know"):
        check_example(Example("test", "divot-frobnicate --now"))
    with pytest.raises(AssertionError, match="no rule"):
        check_example(Example("test", "make frobnicate"))
    with pytest.raises(AssertionError, match="rnak"):
        check_example(Example("test", "bash launch/train_cpu.sh model.lora.rnak=16"))
    with pytest.raises(pytest.fail.Exception, match="refused"):
        check_example(Example("test", "divot-infer generate --release r --caption 'a red circle'"))
    with pytest.raises(AssertionError, match="rnak"):
        check_example(Example("test", "launch/train_cpu.sh model.lora.rnak=16"))
    with pytest.raises(AssertionError, match="rnak"):
        check_example(Example("test", "divot-merge --checkpoint run --out rel --set model.lora.rnak=16"))
    with pytest.raises(pytest.fail.Exception, match="refused"):
        check_example(Example("test", "python tools/demo_report.py outputs/demo --dta data/synthetic"))
    check_example(Example("test", "python tools/demo_report.py outputs/demo --data data/synthetic"))
