"""The HTTP layer over a scripted engine, in seconds: stream error events, 499 and a stopped
generation when the client hangs up, the drain on SIGTERM, and cached-token usage.

What needs the model stays in tests/e2e; errors and the fields they name are in
test_http_errors.py.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.engine.contract import (
    Finished,
    TextDelta,
    Usage,
)
from tests.fast.conftest import (
    CHAT,
    COMPLETIONS,
    ENDPOINTS,
    RESPONSES,
    FastServer,
    data_lines,
    error_of,
    serve,
    wait_for,
)
from tests.fast.scripted import Hold, Script, ScriptedEngine

pytestmark = pytest.mark.fast


# --- streams, disconnects, the drain ---------------------------------------------------------


def failing_script() -> Script:
    return Script([TextDelta("Hel"), RuntimeError("decode failed")])


@pytest.mark.parametrize(("path", "body"), [CHAT, COMPLETIONS])
def test_an_error_after_the_stream_started_is_an_error_event_then_done(
    fast_server: FastServer, path: str, body: dict[str, Any]
) -> None:
    fast_server.engine.enqueue(failing_script())
    with (
        fast_server.client() as client,
        client.stream("POST", path, json={**body, "stream": True}) as response,
    ):
        assert response.status_code == 200
        lines = data_lines(response)
    assert lines[-1] == "[DONE]"
    error = json.loads(lines[-2])["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")


def test_a_responses_stream_error_is_an_error_event_then_response_failed(
    fast_server: FastServer,
) -> None:
    fast_server.engine.enqueue(failing_script())
    with (
        fast_server.client() as client,
        client.stream("POST", RESPONSES[0], json={**RESPONSES[1], "stream": True}) as response,
    ):
        events = [json.loads(line) for line in data_lines(response)]
    assert [event["type"] for event in events[-2:]] == ["error", "response.failed"]
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Hel"


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
def test_a_generation_ended_without_finishing_is_503_or_a_shutdown_event(
    fast_server: FastServer, path: str, body: dict[str, Any]
) -> None:
    fast_server.engine.enqueue(Script([TextDelta("Hel")]), Script([TextDelta("Hel")]))
    with fast_server.client() as client:
        assert error_of(client.post(path, json=body), 503)["code"] == "server_unavailable"
        with client.stream("POST", path, json={**body, "stream": True}) as response:
            lines = data_lines(response)
    assert "server_shutting_down" in "".join(lines)


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
def test_a_client_that_hangs_up_gets_499_and_its_generation_stops(
    fast_server: FastServer, path: str, body: dict[str, Any]
) -> None:
    hold = Hold()  # never released: only the hang-up can end this generation
    fast_server.engine.enqueue(Script([TextDelta("a"), hold, Finished("stop", Usage(1, 1))]))
    fast_server.hang_up_once_held(path, body, held=lambda: fast_server.engine.running == 1)
    wait_for(lambda: fast_server.engine.cancelled == 1)
    assert fast_server.engine.running == 0
    gone = f'path="{path}",status="499"'
    with fast_server.client() as client:
        # the access log counts it once the response has ended, a few loop steps after the stop
        wait_for(lambda: gone in client.get("/metrics").text.replace('method="POST",', ""))


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
def test_hanging_up_on_a_stream_stops_its_generation(
    fast_server: FastServer, path: str, body: dict[str, Any]
) -> None:
    fast_server.engine.enqueue(Script([TextDelta("a"), Hold(), Finished("stop", Usage(1, 1))]))
    with (
        fast_server.client() as client,
        client.stream("POST", path, json={**body, "stream": True}) as response,
    ):
        lines = response.iter_lines()  # NOTE: kept: a collected iterator closes the stream
        next(lines)
        wait_for(lambda: fast_server.engine.running == 1)
        del lines
    wait_for(lambda: fast_server.engine.cancelled == 1)
    assert fast_server.engine.running == 0


@pytest.fixture
def draining(tmp_path: Path) -> Iterator[FastServer]:
    yield from serve(tmp_path, ScriptedEngine())  # grace: 1 s


@pytest.fixture
def patient(tmp_path: Path) -> Iterator[FastServer]:
    """A server whose grace outlasts any test step, so the drain never ends a request early."""
    yield from serve(tmp_path, ScriptedEngine(), shutdown_grace=60)


def test_sigterm_lets_running_requests_finish_and_refuses_new_ones(patient: FastServer) -> None:
    hold = Hold()
    patient.engine.enqueue(Script([TextDelta("a"), hold, Finished("stop", Usage(1, 1))]))
    results: list[httpx.Response] = []
    with patient.client(timeout=60) as client:
        running = threading.Thread(
            target=lambda: results.append(client.post(CHAT[0], json=CHAT[1]))
        )
        running.start()
        wait_for(lambda: patient.engine.running == 1)
        patient.uvicorn.handle_exit(signal.SIGTERM, None)
        wait_for(lambda: patient.drain.draining)
        with patient.client() as late:
            assert error_of(late.post(CHAT[0], json=CHAT[1]), 503)["code"] == "server_shutting_down"
        hold.release()
        running.join(60)
    assert results[0].status_code == 200
    assert results[0].json()["choices"][0]["message"]["content"] == "a"


def test_sigterm_ends_a_stream_that_outlasts_the_grace_period(draining: FastServer) -> None:
    draining.engine.enqueue(Script([TextDelta("a"), Hold(), Finished("stop", Usage(1, 1))]))
    with (
        draining.client() as client,
        client.stream("POST", CHAT[0], json={**CHAT[1], "stream": True}) as response,
    ):
        wait_for(lambda: draining.engine.running == 1)
        draining.uvicorn.handle_exit(signal.SIGTERM, None)  # grace: 1 s, then the engine closes
        lines = data_lines(response)
    assert lines[-1] == "[DONE]"
    assert json.loads(lines[-2])["error"]["code"] == "server_shutting_down"
    assert draining.engine.closed


# --- usage -----------------------------------------------------------------------------------


def cached_script() -> Script:
    return Script([TextDelta("a"), Finished("stop", Usage(10, 1, cached_tokens=8))])


@pytest.mark.parametrize(("path", "body"), [CHAT, COMPLETIONS])
def test_cached_prompt_tokens_are_reported(
    fast_server: FastServer, path: str, body: dict[str, Any]
) -> None:
    fast_server.engine.enqueue(cached_script(), cached_script())
    stream_body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with fast_server.client() as client:
        whole = client.post(path, json=body).json()["usage"]
        with client.stream("POST", path, json=stream_body) as response:
            streamed = json.loads(data_lines(response)[-2])["usage"]
    for usage in (whole, streamed):
        assert usage["prompt_tokens"] == 10
        assert usage["prompt_tokens_details"] == {"cached_tokens": 8}


def test_cached_input_tokens_are_reported_by_responses(fast_server: FastServer) -> None:
    fast_server.engine.enqueue(cached_script())
    with fast_server.client() as client:
        usage = client.post(RESPONSES[0], json=RESPONSES[1]).json()["usage"]
    assert usage["input_tokens_details"]["cached_tokens"] == 8
