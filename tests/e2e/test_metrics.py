"""Observability over real HTTP: /metrics parses with prometheus-client's own parser and counts
requests, tokens, time to first token and the gaps between tokens; the engine's load is there
and GPU memory is absent without a GPU. The access log has one escaped line per request and
never the prompt (unless --log-prompts asks)."""

from __future__ import annotations

import time
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MODEL_ID, RunningServer


def scrape(base_url: str) -> dict[str, float]:
    """Every sample as 'name{label="value",...}' -> value (labels sorted)."""
    text = httpx.get(f"{base_url}/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def wait_for_log(server: RunningServer, needle: str, timeout: float = 60) -> str:
    """The server's log once it holds `needle` (the access line is written after the response)."""
    deadline = time.monotonic() + timeout
    while needle not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.log()


CHAT_OK = 'gemma_serve_requests_total{method="POST",path="/v1/chat/completions",status="200"}'


def test_metrics_count_a_streamed_completion(server: RunningServer) -> None:
    before = scrape(server.base_url)
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Count: one, two,"}],
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    usage = httpx.Response(200, content=lines[-1][6:]).json()["usage"]
    # The request is counted when its ASGI call returns, a moment after the last byte is sent.
    deadline = time.monotonic() + 60  # a guard against a hang
    while (after := scrape(server.base_url)).get(CHAT_OK, 0) == before.get(CHAT_OK, 0):
        assert time.monotonic() < deadline, "the request was not counted"
        time.sleep(0.05)

    def delta(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert delta(CHAT_OK) == 1
    assert delta("gemma_serve_prompt_tokens_total{}") == usage["prompt_tokens"]
    assert delta("gemma_serve_completion_tokens_total{}") == usage["completion_tokens"] == 6
    assert delta("gemma_serve_time_to_first_token_seconds_count{}") == 1
    assert delta("gemma_serve_time_to_first_token_seconds_sum{}") > 0
    # One gap per piece of text after the first (6 tokens: up to 5 gaps; fewer if held back).
    assert 1 <= delta("gemma_serve_inter_token_latency_seconds_count{}") <= 5
    assert delta('gemma_serve_request_duration_seconds_count{path="/v1/chat/completions"}') == 1
    assert after["gemma_serve_active_sequences{}"] == 0
    assert after["gemma_serve_queued_requests{}"] == 0
    assert after["gemma_serve_parallel_sequences{}"] >= 1
    assert after["gemma_serve_requests_in_progress{}"] == 1  # the scrape itself
    assert not [name for name in after if name.startswith("gemma_serve_gpu_")]  # no GPU here


def test_unknown_paths_share_one_label(server: RunningServer) -> None:
    for path in ("/a", "/b/c", f"/{uuid.uuid4().hex}"):
        assert httpx.get(f"{server.base_url}{path}").status_code == 404
    samples = scrape(server.base_url)
    assert samples['gemma_serve_requests_total{method="GET",path="other",status="404"}'] >= 3
    assert not [name for name in samples if "/b/c" in name]
    assert samples['gemma_serve_requests_total{method="GET",path="/metrics",status="200"}'] >= 1


def test_one_access_line_per_request_without_the_prompt(server: RunningServer) -> None:
    secret = f"my-secret-{uuid.uuid4().hex}"
    agent = f"agent-{uuid.uuid4().hex}"
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": secret}], "max_tokens": 3}
    response = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json=body,
        headers={"User-Agent": agent},
        timeout=120,
    )
    usage = response.json()["usage"]
    log = wait_for_log(server, agent)
    lines = [line for line in log.splitlines() if agent in line]
    assert len(lines) == 1
    line = lines[0]
    assert '"POST /v1/chat/completions" 200' in line
    assert f"prompt_tokens={usage['prompt_tokens']} completion_tokens=3" in line
    assert "first_token=" in line and "duration=" in line
    assert secret not in log


def test_control_characters_in_paths_and_headers_are_escaped(server: RunningServer) -> None:
    marker = uuid.uuid4().hex
    # A percent-encoded newline and terminal escape in the path: decoded by the server, so a
    # naive log line would be split in two and recolour the operator's terminal.
    path = f"/v1/{marker}%0D%0A2026-01-01 INFO forged line%1B[31m"
    response = httpx.get(f"{server.base_url}{path}", headers={"User-Agent": 'x" injected="1'})
    assert response.status_code == 404
    log = wait_for_log(server, marker)
    lines = [line for line in log.splitlines() if marker in line]
    assert len(lines) == 1
    assert f"/v1/{marker}\\r\\n2026-01-01 INFO forged line\\x1b[31m" in lines[0]
    assert 'agent="x\\" injected=\\"1"' in lines[0]
    assert not [line for line in log.splitlines() if line.startswith("2026-01-01 INFO forged")]
    assert "\x1b" not in log
