"""README.md and the user docs it points to stay true: size, commands, options, extras, links, paths.

Commands (``pipeline <sub>``, ``medanomaly <sub>``) are read from code blocks and code spans and
checked against the argparse parser of ``pipeline/cli.py``; install extras (``.[a,b]``,
``medanomaly[a]``) against ``[project.optional-dependencies]``; relative links and repository
paths against the files of the repository.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from conftest import ROOT

from pipeline.cli import _parser
from pipeline.runner import STAGE_NAMES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (requires-python >= 3.10): no TOML reader in the standard library
    tomllib = None

README = ROOT / "README.md"
DOCS = (README, ROOT / "docs" / "DATA.md", ROOT / "docs" / "OUTPUTS.md")
MAX_README_BYTES = 8192

FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```[^\n]*$", re.M | re.S)
SPAN = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?:^|[\s/(])(?:pipeline|medanomaly)\s+([a-z][\w-]*(?:\|[a-z][\w-]*)*)(.*)$")
OPTION = re.compile(r"(?<![\w-])--[a-z][\w-]*")
END_OF_COMMAND = re.compile(r"\s(?:#|\||;|&&)\s?")
EXTRA = re.compile(r"(?:\.|\bmedanomaly)\[([\w\s,-]+)\]")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
REPO_PATH = re.compile(r"^(?:benchmarks|configs|docs|evaluation|models|pipeline|preprocessing|sample_data|tests)/[\w./*-]*$")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _code_lines(markdown: str) -> list[str]:
    """The lines of fenced code blocks (backslash continuations joined), then every inline code span outside them."""
    lines: list[str] = []
    for block in FENCE.findall(markdown):
        lines += block.replace("\\\n", " ").splitlines()
    lines += SPAN.findall(FENCE.sub("", markdown))
    return lines


def _subcommand_options() -> dict[str, set[str]]:
    """Every subcommand of the CLI parser and the option strings it accepts."""
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {opt for action in sp._actions for opt in action.option_strings} for name, sp in sub.choices.items()}


def command_problems(lines: list[str], commands: dict[str, set[str]]) -> list[str]:
    """Unknown subcommands and options on the ``pipeline``/``medanomaly`` command lines among ``lines``."""
    problems = []
    for line in lines:
        m = COMMAND.search(line)
        if not m:
            continue
        rest = END_OF_COMMAND.split(m.group(2))[0]
        for name in m.group(1).split("|"):
            if name not in commands:
                problems.append(f"{line!r}: no subcommand {name!r}")
                continue
            problems += [f"{line!r}: {name} has no option {opt}" for opt in OPTION.findall(rest) if opt not in commands[name]]
    return problems


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(h) for h in HEADING.findall(FENCE.sub("", _text(path)))}


def link_problems(path: Path) -> list[str]:
    """Relative links of a markdown file that point at no file, or at no heading of a markdown file."""
    problems = []
    for target in LINK.findall(FENCE.sub("", _text(path))):
        if re.match(r"[a-z][\w+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{path.name}: link {target!r}: {dest} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            problems.append(f"{path.name}: link {target!r}: no heading #{anchor} in {dest.name}")
    return problems


def path_problems(path: Path) -> list[str]:
    """Repository paths (``configs/...``, ``docs/...``, ...) named in code that match no file or folder."""
    problems = []
    for line in _code_lines(_text(path)):
        for token in line.split():
            token = token.strip("`'\"(),;:")
            if REPO_PATH.match(token) and "<" not in token and not list(ROOT.glob(token.rstrip("/"))):
                problems.append(f"{path.name}: {token} does not exist")
    return problems


def test_readme_is_short() -> None:
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes (at most {MAX_README_BYTES}): move detail into docs/"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_commands_exist_in_the_cli(doc: Path) -> None:
    lines = _code_lines(_text(doc))
    assert doc != README or any(COMMAND.search(line) for line in lines), "README.md shows no pipeline command"
    assert command_problems(lines, _subcommand_options()) == []


def test_command_check_can_fail() -> None:
    lines = ["pipeline frobnicate CONFIG", "pipeline run CONFIG --no-such-option", "pipeline ingest|nope CONFIG"]
    assert len(command_problems(lines, _subcommand_options())) == 3
    assert command_problems(["pipeline run CONFIG --force  # --not-an-option in a comment"], _subcommand_options()) == []


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_install_extras_exist() -> None:
    declared = set(tomllib.loads(_text(ROOT / "pyproject.toml"))["project"]["optional-dependencies"])
    named = {e.strip() for group in EXTRA.findall(_text(README)) for e in group.split(",")}
    assert named, "README.md names no install extras"
    assert named <= declared, f"extras not in pyproject.toml: {sorted(named - declared)}"
    make_extras = {e for group in EXTRA.findall(_text(ROOT / "Makefile")) for e in group.split(",")}
    assert make_extras <= named, f"README.md does not show the Makefile's install extras {sorted(make_extras - named)}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    assert link_problems(doc) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_named_repository_paths_exist(doc: Path) -> None:
    assert path_problems(doc) == []


def test_link_and_path_checks_can_fail(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n[a](missing.md) [b](doc.md#no-such-heading) [c](#title) [d](https://x.org)\n`configs/nope.yaml`\n")
    assert len(link_problems(doc)) == 2
    assert len(path_problems(doc)) == 1


def test_readme_lists_the_stages_in_order() -> None:
    assert " → ".join(STAGE_NAMES) in _text(README)


def test_readme_layout_names_every_detector_family() -> None:
    families = sorted(p.parent.name for p in (ROOT / "models" / "detectors").glob("*/params.py"))
    assert families, "no detector families found"
    missing = [f for f in families if not re.search(rf"\b{f}\b", _text(README))]
    assert missing == []
