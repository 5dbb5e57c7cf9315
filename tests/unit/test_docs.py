"""The user documentation is held to the code: every `gemma-serve` command line and every flag
written in README.md, CONTRIBUTING.md and docs/*.md exists in the CLI, the settings table lists
exactly the settings (flag, environment variable, literal defaults), and the hardware tables show
what the planner picks (tests/unit/test_planner.py's table) with the registry's download sizes.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from server.cli import build_parser
from server.registry import load_registry
from server.settings import Settings
from tests.unit.test_planner import HARDWARE_TABLE

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]

# Flags of other programs that the docs show on their own (`--build-arg ...` for docker build).
FOREIGN_FLAGS = {"--build-arg", "--fit-target"}

_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")
# `gemma-serve <command>` as a program, not `gemma-serve.service`, `gemma-serve_models` or the
# compose service name in `docker compose exec gemma-serve nvidia-smi`.
_COMMAND = re.compile(r"(?<![\w.-])(?<!exec )gemma-serve[ \t]+([a-z][a-z-]*)")
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _snippets(text: str) -> list[str]:
    """Each code block line (continuations joined) and each inline code span, one line each."""
    snippets = []
    for block in _FENCE.findall(text):
        snippets += block.replace("\\\n", " ").splitlines()
    snippets += [span.replace("\n", " ") for span in _INLINE.findall(_FENCE.sub("", text))]
    return snippets


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    actions = build_parser()._subparsers._group_actions  # type: ignore[union-attr]
    return next(a for a in actions if isinstance(a, argparse._SubParsersAction)).choices


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _doc_flags_not_in_cli(text: str) -> list[str]:
    commands = _subcommands()
    wrong = []
    for snippet in _snippets(text):
        # The part after `gemma-serve CMD`: its flags must be CMD's (up to a pipe or `&&`).
        for match in _COMMAND.finditer(snippet):
            command = match.group(1)
            if command not in commands:
                wrong.append(f"unknown command `gemma-serve {command}` in `{snippet}`")
                continue
            tail = re.split(r"\||&&|;", snippet[match.end() :])[0]
            wrong += [
                f"`{flag}` is not a flag of `gemma-serve {command}` (in `{snippet}`)"
                for flag in _FLAG.findall(tail)
                if flag not in _options(commands[command])
            ]
        # `make serve ARGS="..."` passes its flags to `gemma-serve serve`.
        for args in re.findall(r'ARGS="([^"]*)"', snippet):
            wrong += [
                f"`{flag}` is not a flag of `gemma-serve serve` (in `{snippet}`)"
                for flag in _FLAG.findall(args)
                if flag not in _options(commands["serve"])
            ]
        # A flag on its own (`--plan-ctx 8192`) names one of gemma-serve's.
        if snippet.startswith("--") and not _COMMAND.search(snippet):
            flag = _FLAG.match(snippet)
            known = set().union(*(_options(p) for p in commands.values()))
            if flag and flag.group() not in known | FOREIGN_FLAGS:
                wrong.append(f"`{flag.group()}` is no flag of gemma-serve (in `{snippet}`)")
    return wrong


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_and_flag_in_the_docs_exists(path: Path) -> None:
    assert _doc_flags_not_in_cli(path.read_text()) == []


def test_the_check_catches_a_wrong_command_or_flag() -> None:
    text = (
        "```sh\n.venv/bin/gemma-serve doctorr\ngemma-serve plan --gpu-mem 8GiB\n```\n"
        'Run `make serve ARGS="--portt 1"` or `--no-such-flag 3`; `gemma-serve serve --port 1`.'
    )
    assert len(_doc_flags_not_in_cli(text)) == 4


def _table(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header line starts with `header`, as cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_the_settings_table_lists_every_setting() -> None:
    rows = _table((ROOT / "docs" / "configuration.md").read_text(), "| flag | env | default |")
    documented = {row[0].strip("`"): row for row in rows}
    expected = {f"--{name.replace('_', '-')}": name for name in Settings.model_fields}
    assert sorted(documented) == sorted(expected)
    for flag, (_, env, default, _meaning) in documented.items():
        name = expected[flag]
        assert env == f"`GEMMA_SERVE_{name.upper()}`"
        value = Settings.model_fields[name].default
        # Literal defaults written as code are the field's (sizes such as `1GiB` are parsed).
        if default.startswith("`") and not re.search(r"[KMG]iB", default):
            written = default.strip("`")
            if isinstance(value, bool | str):
                assert written == str(value).lower(), flag
            elif isinstance(value, int | float):
                assert float(written) == value, flag


def _gib(cell: str) -> tuple[float, ...]:
    if cell.startswith("no GPU"):
        return ()
    count, size = re.fullmatch(r"(?:(\d+) x )?(\d+) GiB.*", cell).groups()  # type: ignore[union-attr]
    return (float(size),) * int(count or 1)


@pytest.mark.parametrize(
    ("path", "header"),
    [("README.md", "| free GPU memory | model |"), ("docs/planning.md", "| free GPU memory |")],
)
def test_the_hardware_tables_show_what_the_planner_picks(path: str, header: str) -> None:
    rows = _table((ROOT / path).read_text(), header)
    expected = [(tuple(map(float, g)), m, c, p) for g, m, c, _layers, p in HARDWARE_TABLE]
    # "4 or more, measured at load" on the CPU: the planner's floor (calibration adds the rest)
    shown = [(_gib(r[0]), r[1].strip("`"), int(r[2]), int(r[3].split()[0])) for r in rows]
    assert shown == expected


def test_the_readme_shows_each_models_download_size() -> None:
    sizes = {spec.id: spec.file_size for spec in load_registry().models}
    rows = _table((ROOT / "README.md").read_text(), "| free GPU memory | model |")
    for row in rows:
        shown = float(row[4].split()[0])
        assert shown == round(sizes[row[1].strip("`")] / 1e9, 2 if shown < 0.5 else 1), row
