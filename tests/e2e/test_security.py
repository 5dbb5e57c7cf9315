"""Safe defaults over real HTTP that need the real server and model: every configured API key
works with the official SDK and a wrong one is its AuthenticationError, a bad key file stops the
server with one line, a body under the size limit is served (and refused only by the context),
an absurd max_tokens is refused by the context, and prompt logging escapes what it logs.

The HTTP-only checks (401s, CORS, the Host allow-list, 413) run on the scripted engine in
tests/fast/test_http_security.py; the pure ones in tests/unit/test_security.py. `secured` adds
keys, a CORS origin, an extra host name and prompt logging to the defaults."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import MODEL_ID, RunningServer, serving, start_server

from .test_errors import assert_error

KEYS = ("sk-first-0123456789", "sk-second-9876543210")
ALLOWED_ORIGIN = "http://app.example:3000"
CHAT = {"model": MODEL_ID, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("secured")
    keys_file = tmp / "keys"
    keys_file.write_text(f"# the second client\n{KEYS[1]}\n")
    with serving(
        tmp,
        *("--ctx", "1024", "--api-keys-file", str(keys_file)),
        *("--cors-origins", ALLOWED_ORIGIN, "--allowed-hosts", "gemma.lan"),
        *("--log-prompts", "true"),
        env={"GEMMA_SERVE_API_KEYS": KEYS[0]},
    ) as running:
        yield running


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- API keys ------------------------------------------------------------------------------------


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


def test_a_bad_key_file_stops_the_server_with_one_line(tmp_path: Path) -> None:
    running = start_server(tmp_path, "--api-keys-file", str(tmp_path / "missing"))
    assert running.process.wait(timeout=60) == 2
    assert "gemma-serve: error: cannot read the API key file" in running.log()
    assert "Traceback" not in running.log()


# --- body limit and bounds -----------------------------------------------------------------------


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
