"""Readers for the deployment files, shared by the deployment tests.

- `dockerfile_stages()`: docker/Dockerfile split into build stages (dockerfile-parse does the
  lexing: continuation lines, comments, JSON forms), with the global `ARG` defaults substituted
  into `FROM` lines as Docker does.
- `dockerignore_includes()`: Docker's .dockerignore rules (patterns matched against the path and
  each parent directory, `**` for any depth, `!` re-includes, the last matching pattern wins).
- `unit_directives()`: a systemd unit as (section, key, value) triples; unlike configparser it keeps
  repeated keys (`DeviceAllow=` twice) and empty assignments (`CapabilityBoundingSet=`).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
DOCKER_ENV_EXAMPLE = ROOT / "docker" / "gemma-serve.env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
UNIT_FILE = ROOT / "systemd" / "gemma-serve.service"
UNIT_ENV_EXAMPLE = ROOT / "systemd" / "gemma-serve.env.example"

# Where the image installs gemma-serve; the systemd unit uses the same documented location.
INSTALL_PREFIX = "/opt/gemma-serve"


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [value for name, value in self.instructions if name == instruction]

    def last(self, instruction: str) -> str:
        found = self.values(instruction)
        assert found, f"stage {self.name} has no {instruction}"
        return found[-1]

    def env(self) -> dict[str, str]:
        """The stage's ENV, as Docker sets it (later assignments win)."""
        env: dict[str, str] = {}
        for value in self.values("ENV"):
            for pair in shlex.split(value):
                key, sep, val = pair.partition("=")
                assert sep, f"ENV {pair!r}: use the KEY=value form"
                env[key] = val
        return env

    def exec_form(self, instruction: str) -> list[str]:
        """ENTRYPOINT/CMD in JSON (exec) form: shell form would put /bin/sh in front of the
        server, and sh does not forward SIGTERM, so the server would never drain."""
        value = self.last(instruction)
        parsed = json.loads(value)
        assert isinstance(parsed, list), f"{instruction} must be a JSON array: {value}"
        return [str(item) for item in parsed]

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """HEALTHCHECK options (--interval=30s ...) and its CMD in exec form."""
        value = self.last("HEALTHCHECK")
        options_text, sep, command = value.partition("CMD ")
        assert sep, f"HEALTHCHECK without CMD: {value}"
        options = dict(opt.removeprefix("--").split("=", 1) for opt in options_text.split())
        parsed = json.loads(command)
        assert isinstance(parsed, list), "HEALTHCHECK CMD must be in exec form"
        return options, [str(item) for item in parsed]


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def global_args(path: Path = DOCKERFILE) -> dict[str, str]:
    """The ARG defaults declared before the first FROM (the only ones FROM lines can use)."""
    args: dict[str, str] = {}
    for item in DockerfileParser(str(path)).structure:
        if item["instruction"] == "FROM":
            break
        if item["instruction"] == "ARG":
            name, _, default = item["value"].partition("=")
            args[name] = shlex.split(default)[0] if default else ""
    return args


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    args = global_args(path)
    stages: list[Stage] = []
    for item in DockerfileParser(str(path)).structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "FROM":
            image, _, name = value.partition(" AS ")
            stages.append(Stage(name=name.strip(), base=_substitute(image.strip(), args)))
        elif instruction != "COMMENT" and stages:
            stages[-1].instructions.append((instruction, value))
    return stages


def stage(name: str) -> Stage:
    for candidate in dockerfile_stages():
        if candidate.name == name:
            return candidate
    raise AssertionError(f"docker/Dockerfile has no stage {name!r}")


def _dockerignore_pattern(pattern: str) -> re.Pattern[str]:
    parts = []
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        if token == "**/":
            parts.append("(?:.*/)?")
        elif token == "**":
            parts.append(".*")
        elif token == "*":
            parts.append("[^/]*")
        elif token == "?":
            parts.append("[^/]")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def dockerignore_includes(relative_path: str, path: Path = DOCKERIGNORE) -> bool:
    """Whether `relative_path` (from the build context root) reaches the Docker build context."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        rules.append((negate, _dockerignore_pattern(pattern)))
    parts = relative_path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            included = negate
    return included


def unit_directives(path: Path = UNIT_FILE) -> list[tuple[str, str, str]]:
    directives: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a KEY=value line in {path.name}: {raw!r}"
        directives.append((section, key.strip(), value.strip()))
    return directives
