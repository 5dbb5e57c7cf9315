"""Safe defaults over real HTTP: API keys (401 in OpenAI's shape, the SDK with a key gets 200,
/health stays open), CORS closed unless an origin is allowed, the Host allow-list against DNS
rebinding, and the request body limit (413 with and without Content-Length).

The shared `server` runs with the defaults; `secured` adds keys, a CORS origin, an extra host name
and prompt logging."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from server.api.security import HostPolicy, load_api_keys
from tests.conftest import MODEL_ID, RunningServer, start_server, stop_server, wait_healthy

from .test_errors import assert_error

KEYS = ("sk-first-0123456789", "sk-second-9876543210")
ALLOWED_ORIGIN = "http://app.example:3000"
CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("secured")
    keys_file = tmp / "keys"
    keys_file.write_text(f"# the second client\n{KEYS[1]}\n")
    running = start_server(
        tmp,
        *("--ctx", "1024", "--api-keys-file", str(keys_file)),
        *("--cors-origins", ALLOWED_ORIGIN, "--allowed-hosts", "gemma.lan"),
        *("--log-prompts", "true"),
        env={"GEMMA_SERVE_API_KEYS": KEYS[0]},
    )
    try:
        wait_healthy(running)
        yield running
    finally:
        stop_server(running)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- API keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("sk-wrong"),
        bearer(KEYS[0][:-1]),
        {"Authorization": KEYS[0]},
        {"Authorization": "Basic eDp5"},
    ],
    ids=["none", "wrong", "prefix", "no-scheme", "basic"],
)
def test_a_request_without_a_valid_key_is_401(
    secured: RunningServer, headers: dict[str, str]
) -> None:
    response = httpx.post(f"{secured.base_url}/v1/chat/completions", json=CHAT, headers=headers)
    error = assert_error(response, 401, code="invalid_api_key")
    assert error["type"] == "authentication_error"
    assert response.headers["www-authenticate"].startswith("Bearer")
    for path in ("/v1/models", "/metrics", "/no/such/path", "/docs"):
        assert_error(httpx.get(f"{secured.base_url}{path}", headers=headers), 401)


def test_every_configured_key_works_with_the_sdk(secured: RunningServer) -> None:
    for key in KEYS:  # one from the environment, one from the key file
        client = openai.OpenAI(
            base_url=f"{secured.base_url}/v1", api_key=key, max_retries=0, timeout=120
        )
        completion = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert completion.usage.completion_tokens >= 1
    wrong = openai.OpenAI(base_url=f"{secured.base_url}/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
        wrong.models.list()


def test_health_is_open_and_metrics_need_a_key(secured: RunningServer) -> None:
    assert httpx.get(f"{secured.base_url}/health").json()["status"] == "ok"
    metrics = httpx.get(f"{secured.base_url}/metrics", headers=bearer(KEYS[0]))
    assert metrics.status_code == 200
    assert "gemma_serve_requests_total" in metrics.text


def test_key_files_are_read_and_checked(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("a-key  # laptop\n\n# old: none\nb-key\na-key\n")
    assert load_api_keys(("c-key",), keys) == ("c-key", "a-key", "b-key")
    keys.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no key"):
        load_api_keys((), keys)
    with pytest.raises(ValueError, match="cannot read"):
        load_api_keys((), tmp_path / "missing")


def test_a_bad_key_file_stops_the_server_with_one_line(tmp_path: Path) -> None:
    running = start_server(tmp_path, "--api-keys-file", str(tmp_path / "missing"))
    assert running.process.wait(timeout=60) == 2
    assert "gemma-serve: error: cannot read the API key file" in running.log()
    assert "Traceback" not in running.log()


# --- CORS ----------------------------------------------------------------------------------------


def preflight(base_url: str, origin: str) -> httpx.Response:
    return httpx.options(
        f"{base_url}/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def test_cors_is_closed_by_default(server: RunningServer) -> None:
    assert cors_headers(preflight(server.base_url, "http://evil.example")) == {}
    assert cors_headers(preflight(server.base_url, ALLOWED_ORIGIN)) == {}
    models = httpx.get(f"{server.base_url}/v1/models", headers={"Origin": "http://evil.example"})
    assert models.status_code == 200 and cors_headers(models) == {}


def test_only_an_allowed_origin_gets_cors_headers(secured: RunningServer) -> None:
    assert cors_headers(preflight(secured.base_url, "http://evil.example")) == {}
    allowed = preflight(secured.base_url, ALLOWED_ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    # The 401 a browser gets without a key is readable by the page (CORS headers on errors too).
    refused = httpx.get(f"{secured.base_url}/v1/models", headers={"Origin": ALLOWED_ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


# --- Host allow-list (DNS rebinding) -------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example"])
def test_a_foreign_host_is_refused(server: RunningServer, host: str) -> None:
    for path in ("/v1/models", "/health"):
        response = httpx.get(f"{server.base_url}{path}", headers={"Host": host})
        error = assert_error(response, 421, code="invalid_host")
        assert "--allowed-hosts" in error["message"]


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:1", "[::1]:8000"])
def test_loopback_hosts_are_accepted(server: RunningServer, host: str) -> None:
    assert httpx.get(f"{server.base_url}/v1/models", headers={"Host": host}).status_code == 200


def test_an_allowed_host_name_is_accepted(secured: RunningServer) -> None:
    headers = {"Host": "GEMMA.lan:8000", **bearer(KEYS[0])}
    assert httpx.get(f"{secured.base_url}/v1/models", headers=headers).status_code == 200
    headers["Host"] = "other.lan"
    assert_error(httpx.get(f"{secured.base_url}/v1/models", headers=headers), 421)


@pytest.mark.parametrize(
    ("bind", "extra", "host", "allowed"),
    [
        ("127.0.0.1", (), "localhost:8000", True),
        ("127.0.0.1", (), "127.0.0.1", True),
        ("127.0.0.1", (), "[::1]:80", True),
        ("127.0.0.1", (), "192.168.1.10:8000", False),  # loopback only: loopback names only
        ("127.0.0.1", (), "attacker.example", False),
        ("127.0.0.1", ("gemma.lan",), "gemma.lan.:8000", True),
        ("127.0.0.1", ("*",), "anything.example", True),
        ("0.0.0.0", (), "192.168.1.10:8000", True),  # beyond loopback: any IP address
        ("0.0.0.0", (), "[fe80::1]:8000", True),
        ("0.0.0.0", (), "localhost", True),
        ("0.0.0.0", (), "attacker.example", False),  # names must be listed
        ("0.0.0.0", (), "192.168.1.10.attacker.example", False),
        ("::", ("gemma.lan",), "gemma.lan", True),
        ("192.168.1.10", (), "192.168.1.10:8000", True),
    ],
)
def test_host_policy(bind: str, extra: tuple[str, ...], host: str, allowed: bool) -> None:
    assert HostPolicy(bind, extra).allows(host) is allowed


# --- body limit and bounds -----------------------------------------------------------------------

OVER_LIMIT = (4 << 20) + 1  # the default --max-body-size is 4 MiB


def test_a_body_over_the_limit_is_413(server: RunningServer) -> None:
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=b" " * OVER_LIMIT,
        headers={"Content-Type": "application/json"},
    )
    assert "content-length" in {k.lower() for k in response.request.headers}
    assert_error(response, 413, code="request_too_large")


def test_a_chunked_body_over_the_limit_is_413(server: RunningServer) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        yield b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "'
        for _ in range(5):
            yield b"x" * (1 << 20)
        yield b'"}]}'

    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, code="request_too_large")


def test_a_body_under_the_limit_is_served(server: RunningServer) -> None:
    # About 1 MiB of text: accepted by the body limit, refused for the context (not for size).
    body = {**CHAT, "messages": [{"role": "user", "content": "word " * 200_000}]}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)
    assert_error(response, 400, code="context_length_exceeded")


def test_an_absurd_max_tokens_is_refused_by_the_context(server: RunningServer) -> None:
    body = {**CHAT, "max_tokens": 10**12}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body)
    assert_error(response, 400, code="context_length_exceeded")


def test_log_prompts_logs_the_messages_escaped(secured: RunningServer) -> None:
    marker = f"marker-{uuid.uuid4().hex}"
    body = {**CHAT, "messages": [{"role": "user", "content": f"first line\n{marker}"}]}
    response = httpx.post(
        f"{secured.base_url}/v1/chat/completions", json=body, headers=bearer(KEYS[0]), timeout=120
    )
    assert response.status_code == 200
    assert f"prompt: user: first line\\n{marker}" in secured.log()
