"""How much a large JSON-schema enum costs the other streams (issue 26).

Starts gemma-serve on the bundled model, runs a plain streamed chat (the bystander) and, once it
is flowing, a request whose schema is one property with an enum of `--values` strings. Prints
the enum request's time and output, and the bystander's longest gap between chunks before and
while the enum request ran. Acceptance: the longest gap while it runs stays under one second.

    .venv/bin/python bench/grammar_gap.py --values 5000
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from tests.conftest import MODEL_ID, start_server, stop_server, wait_healthy


def bystander(base_url: str, chunks: list[float], done: threading.Event) -> None:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        "max_tokens": 2000,
        "stream": True,
        "temperature": 0.8,
    }
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                chunks.append(time.monotonic())
            if done.is_set():
                return


def longest_gap(times: list[float], start: float, end: float) -> float:
    inside = [t for t in times if start <= t <= end]
    return max((b - a for a, b in itertools.pairwise(inside)), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=int, default=5000)
    parser.add_argument("--server-args", default="", help="extra gemma-serve flags")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), "--ctx", "4096", *args.server_args.split())
        try:
            wait_healthy(server, timeout=300)
            chunks: list[float] = []
            done = threading.Event()
            reader = threading.Thread(target=bystander, args=(server.base_url, chunks, done))
            reader.start()
            while len(chunks) < 20:
                time.sleep(0.05)
            calm_start = time.monotonic()
            time.sleep(4)
            calm = longest_gap(chunks, calm_start, time.monotonic())
            enum = [f"value-{i}" for i in range(args.values)]
            schema = {
                "type": "object",
                "properties": {"v": {"type": "string", "enum": enum}},
                "required": ["v"],
                "additionalProperties": False,
            }
            body = {
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": "Pick a value."}],
                "max_tokens": 40,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "pick", "schema": schema},
                },
            }
            started = time.monotonic()
            answer = httpx.post(
                f"{server.base_url}/v1/chat/completions", json=body, timeout=900
            ).json()
            ended = time.monotonic()
            done.set()
            reader.join(60)
            content = answer["choices"][0]["message"]["content"]
            result = {
                "values": args.values,
                "enum_request_s": round(ended - started, 2),
                "output": content,
                "valid": json.loads(content)["v"] in enum,
                "bystander_longest_gap_before_s": round(calm, 3),
                "bystander_longest_gap_during_s": round(longest_gap(chunks, started, ended), 3),
            }
            print(json.dumps(result, indent=2))
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
