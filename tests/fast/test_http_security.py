"""Safe defaults over real HTTP, on the scripted engine: API keys (401 in OpenAI's shape, /health
stays open), CORS closed unless an origin is allowed, the Host allow-list against DNS rebinding,
and the request body limit (413 with and without Content-Length).

`fast_server` runs with the defaults; `secured` adds keys (one from the settings, one from a key
file), a CORS origin and an extra host name. What needs the model (the SDK's completions with a
key, a body under the limit refused by the context, prompt logging) stays in
tests/e2e/test_security.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.fast.conftest import CHAT, FastServer, error_of, serve
from tests.fast.scripted import ScriptedEngine

KEYS = ("sk-first-0123456789", "sk-second-9876543210")
ALLOWED_ORIGIN = "http://app.example:3000"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastServer]:
    tmp = tmp_path_factory.mktemp("secured")
    keys_file = tmp / "keys"
    keys_file.write_text(f"# the second client\n{KEYS[1]}\n")
    yield from serve(
        tmp,
        ScriptedEngine(),
        api_keys=(KEYS[0],),
        api_keys_file=keys_file,
        cors_origins=(ALLOWED_ORIGIN,),
        allowed_hosts=("gemma.lan",),
    )


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
def test_a_request_without_a_valid_key_is_401(secured: FastServer, headers: dict[str, str]) -> None:
    with secured.client() as client:
        response = client.post(CHAT[0], json=CHAT[1], headers=headers)
        error = error_of(response, 401)
        assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
        assert response.headers["www-authenticate"].startswith("Bearer")
        for path in ("/v1/models", "/metrics", "/no/such/path", "/docs"):
            error_of(client.get(path, headers=headers), 401)
    assert secured.engine.history == []


def test_every_configured_key_is_accepted(secured: FastServer) -> None:
    with secured.client() as client:
        for key in KEYS:  # one from the settings, one from the key file
            assert client.post(CHAT[0], json=CHAT[1], headers=bearer(key)).status_code == 200


def test_health_is_open_and_metrics_need_a_key(secured: FastServer) -> None:
    with secured.client() as client:
        assert client.get("/health").json()["status"] == "ok"
        metrics = client.get("/metrics", headers=bearer(KEYS[0]))
    assert metrics.status_code == 200
    assert "gemma_serve_requests_total" in metrics.text


# --- CORS ----------------------------------------------------------------------------------------


def preflight(client: httpx.Client, origin: str) -> httpx.Response:
    return client.options(
        CHAT[0],
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def test_cors_is_closed_by_default(fast_server: FastServer) -> None:
    with fast_server.client() as client:
        assert cors_headers(preflight(client, "http://evil.example")) == {}
        assert cors_headers(preflight(client, ALLOWED_ORIGIN)) == {}
        models = client.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert models.status_code == 200 and cors_headers(models) == {}


def test_only_an_allowed_origin_gets_cors_headers(secured: FastServer) -> None:
    with secured.client() as client:
        assert cors_headers(preflight(client, "http://evil.example")) == {}
        allowed = preflight(client, ALLOWED_ORIGIN)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        # The 401 a browser gets without a key is readable by the page (CORS headers on errors).
        refused = client.get("/v1/models", headers={"Origin": ALLOWED_ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


# --- Host allow-list (DNS rebinding) -------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example"])
def test_a_foreign_host_is_refused(fast_server: FastServer, host: str) -> None:
    with fast_server.client() as client:
        for path in ("/v1/models", "/health"):
            error = error_of(client.get(path, headers={"Host": host}), 421)
            assert error["code"] == "invalid_host"
            assert "--allowed-hosts" in error["message"]


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:1", "[::1]:8000"])
def test_loopback_hosts_are_accepted(fast_server: FastServer, host: str) -> None:
    with fast_server.client() as client:
        assert client.get("/v1/models", headers={"Host": host}).status_code == 200


def test_an_allowed_host_name_is_accepted(secured: FastServer) -> None:
    headers = {"Host": "GEMMA.lan:8000", **bearer(KEYS[0])}
    with secured.client() as client:
        assert client.get("/v1/models", headers=headers).status_code == 200
        headers["Host"] = "other.lan"
        error_of(client.get("/v1/models", headers=headers), 421)


# --- body limit ----------------------------------------------------------------------------------

OVER_LIMIT = (4 << 20) + 1  # the default --max-body-size is 4 MiB


def test_a_body_over_the_limit_is_413(fast_server: FastServer) -> None:
    with fast_server.client() as client:
        response = client.post(
            CHAT[0], content=b" " * OVER_LIMIT, headers={"Content-Type": "application/json"}
        )
    assert "content-length" in {k.lower() for k in response.request.headers}
    assert error_of(response, 413)["code"] == "request_too_large"
    assert fast_server.engine.history == []


def test_a_chunked_body_over_the_limit_is_413(fast_server: FastServer) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        yield b'{"model": "gemma-3-270m", "messages": [{"role": "user", "content": "'
        for _ in range(5):
            yield b"x" * (1 << 20)
        yield b'"}]}'

    with fast_server.client(timeout=60) as client:
        response = client.post(
            CHAT[0], content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert error_of(response, 413)["code"] == "request_too_large"
    assert fast_server.engine.history == []
