"""docker/compose.yaml: valid against the Compose Specification's JSON schema, and safe.

The schema is the one check-jsonschema (pinned in the dev extra) vendors as
`check_jsonschema/builtin_schemas/vendor/compose-spec.json`, beside its sha256, so validation runs
offline. The rules checked are issue 6's: the port published on loopback only, the GPU reserved
with `deploy.resources.reservations.devices`, models on a named volume, HF_TOKEN only from an env
file that git and the build context never see, `restart: unless-stopped`, and a
`stop_grace_period` longer than the server's own drain time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
from importlib import resources
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from server.api.security import HostPolicy
from server.settings import Settings

from .files import (
    COMPOSE_FILE,
    DOCKER_ENV_EXAMPLE,
    ROOT,
    dockerignore_includes,
    global_args,
    stage,
)


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    text = (vendor / "compose-spec.json").read_bytes()
    # check-jsonschema ships the digest it vendored the schema with: the file is intact.
    expected = (vendor / "sha256" / "compose-spec.sha256").read_text().strip()
    assert hashlib.sha256(text).hexdigest() == expected
    schema = json.loads(text)
    assert isinstance(schema, dict) and schema["title"] == "Compose Specification"
    return schema


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = Draft202012Validator(compose_schema())
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def drain_grace_s() -> float:
    """The server's drain grace period (`--shutdown-grace`) by default."""
    return float(Settings.model_fields["shutdown_grace"].default)


def test_valid_against_the_compose_specification() -> None:
    assert schema_errors(compose()) == []


def test_the_schema_catches_mistakes() -> None:
    broken = copy.deepcopy(compose())
    devices = broken["services"]["gemma-serve"]["deploy"]["resources"]["reservations"]["devices"]
    devices[0]["capabilities"] = "gpu"  # a string where the spec wants a list
    broken["services"]["gemma-serve"]["gpu_count"] = 1  # no such key
    errors = schema_errors(broken)
    assert any("capabilities" in e for e in errors), errors
    assert any("gpu_count" in e for e in errors), errors


@pytest.mark.parametrize("name", ["gemma-serve", "gemma-serve-cpu"])
def test_service_rules(name: str) -> None:
    service = compose()["services"][name]
    target = "cuda" if name == "gemma-serve" else "cpu"
    build = {key: value for key, value in service["build"].items() if key != "args"}
    assert build == {"context": "..", "dockerfile": "docker/Dockerfile", "target": target}
    runtime_env = stage(target).env()

    # Published on loopback only: Docker's port rules bypass the host firewall.
    assert service["ports"] == [f"127.0.0.1:{runtime_env['GEMMA_SERVE_PORT']}:8000"]
    assert runtime_env["GEMMA_SERVE_PORT"] == "8000"

    # Models on a named volume at the image's cache directory.
    volume, _, target_dir = service["volumes"][0].partition(":")
    assert volume in compose()["volumes"] and target_dir == runtime_env["GEMMA_SERVE_CACHE_DIR"]

    assert service["restart"] == "unless-stopped"
    grace = seconds(service["stop_grace_period"])
    assert grace >= 2 * drain_grace_s() + 5, "time to drain streams and free the GPU"
    assert service["stop_signal"] == stage(target).last("STOPSIGNAL")

    # The same health check as the image's: it passes while a download makes progress, so the
    # start period only covers the interpreter's start.
    image_options, image_check = stage(target).healthcheck()
    assert service["healthcheck"]["test"] == ["CMD", *image_check]
    assert image_check[-2:] == ["-m", "server.healthcheck"]
    assert seconds(service["healthcheck"]["start_period"]) == seconds(image_options["start-period"])

    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]


def test_gpu_reserved_the_compose_way() -> None:
    services = compose()["services"]
    devices = services["gemma-serve"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["capabilities"] == ["gpu"]
    assert devices[0]["count"] == "all" or devices[0]["count"] >= 1
    # The CPU service reserves nothing and starts only when asked for.
    assert "deploy" not in services["gemma-serve-cpu"]
    assert services["gemma-serve-cpu"]["profiles"] == ["cpu"]
    assert "profiles" not in services["gemma-serve"]


def test_secrets_come_from_an_env_file_only() -> None:
    for name, service in compose()["services"].items():
        assert "environment" not in service, f"{name}: settings belong in the env file"
        assert service["env_file"] == [{"path": "./gemma-serve.env", "required": False}]
    assert "HF_TOKEN" not in COMPOSE_FILE.read_text().replace("HF_TOKEN and", "")
    env_file = "docker/gemma-serve.env"
    # Never committed, never sent to the image build.
    ignored = subprocess.run(["git", "check-ignore", "-q", env_file], cwd=ROOT, check=False)
    assert ignored.returncode == 0, f"{env_file} is not in .gitignore"
    assert not dockerignore_includes(env_file)
    # The example names HF_TOKEN but holds no value.
    example = DOCKER_ENV_EXAMPLE.read_text().splitlines()
    assert "#HF_TOKEN=hf_..." in example
    assert not [line for line in example if line.startswith("HF_TOKEN")]


def test_env_example_names_real_settings() -> None:
    for line in DOCKER_ENV_EXAMPLE.read_text().splitlines():
        for key in re.findall(r"\bGEMMA_SERVE_([A-Z_]+)=", line):
            assert key.lower() in Settings.model_fields, key


def test_env_example_lets_other_containers_call_by_service_name() -> None:
    """A front-end on the compose network sends `Host: gemma-serve:8000`: refused (421) by the
    image's defaults, allowed by the line the env example shows."""
    [line] = [
        line
        for line in DOCKER_ENV_EXAMPLE.read_text().splitlines()
        if line.startswith("#GEMMA_SERVE_ALLOWED_HOSTS=")
    ]
    allowed = Settings(allowed_hosts=line.partition("=")[2]).allowed_hosts
    assert "gemma-serve" in compose()["services"]
    host = stage("cuda").env()["GEMMA_SERVE_HOST"]
    header = "gemma-serve:8000"
    assert not HostPolicy(host).allows(header)
    assert HostPolicy(host, allowed).allows(header)
    assert "http://gemma-serve:8000" in COMPOSE_FILE.read_text()


# ${NAME:-default}: compose's interpolation, from the shell's environment or docker/.env.
_INTERPOLATION = re.compile(r"^\$\{(\w+):-([^}]*)\}$")


@pytest.mark.parametrize("name", ["gemma-serve", "gemma-serve-cpu"])
def test_build_arguments_come_from_docker_env_with_the_dockerfiles_defaults(name: str) -> None:
    """An older driver's build arguments written once in docker/.env are used by every later
    `docker compose up -d --build` (the documented upgrade); unset, the Dockerfile's own."""
    service = compose()["services"][name]
    defaults = global_args()
    args = service["build"]["args"]
    for key, value in args.items():
        match = _INTERPOLATION.match(value)
        assert match, f"{key}: {value} is not read from docker/.env"
        assert match.group(1) == key and key in defaults, key
        assert match.group(2) == defaults[key], f"{key}: compose's default is not the Dockerfile's"
    wanted = {"UBUNTU_VERSION", "BUILD_JOBS", "CPU_NATIVE"}
    if name == "gemma-serve":
        wanted |= {"CUDA_VERSION", "CUDA_ARCHITECTURES"}
    assert set(args) == wanted
    # Every variable the older-driver table puts in docker/.env reaches the GPU image's build.
    if name == "gemma-serve":
        docs = (ROOT / "docs" / "docker.md").read_text()
        rows = re.findall(r"^\| [^|]+ \| `([A-Z_]+=[^`]*)` \|$", docs, re.M)
        assert rows
        for assignment in " ".join(rows).split():
            assert assignment.split("=")[0] in args, assignment


def test_open_webui_in_another_project_reaches_the_server() -> None:
    """docker/open-webui.compose.yaml: valid, on gemma-serve's project network, calling the
    service by a name the env example admits, its own port on loopback only."""
    front = yaml.safe_load((ROOT / "docker" / "open-webui.compose.yaml").read_text())
    assert schema_errors(front) == []
    ours = compose()
    [network] = front["networks"].values()
    assert network == {"name": f"{ours['name']}_default", "external": True}
    service = front["services"]["open-webui"]
    assert service["networks"] == list(front["networks"])
    base = service["environment"]["OPENAI_API_BASE_URL"]
    host = re.match(r"http://([^/]+)/v1$", base)
    assert host, base
    name, _, port = host.group(1).partition(":")
    assert name in ours["services"] and port == stage("cuda").env()["GEMMA_SERVE_PORT"]
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])
    # The Host it sends is refused by the image's defaults and admitted by the env example's line.
    [line] = [
        line
        for line in DOCKER_ENV_EXAMPLE.read_text().splitlines()
        if line.startswith("#GEMMA_SERVE_ALLOWED_HOSTS=")
    ]
    bind = stage("cuda").env()["GEMMA_SERVE_HOST"]
    assert not HostPolicy(bind).allows(host.group(1))
    assert HostPolicy(bind, Settings(allowed_hosts=line.partition("=")[2]).allowed_hosts).allows(
        host.group(1)
    )
    # Its own variables are not gemma-serve's (an unknown GEMMA_SERVE_* stops a start).
    text = (ROOT / "docker" / "open-webui.compose.yaml").read_text()
    assert not re.findall(r"\$\{GEMMA_SERVE_", text)
