"""The container's health check: `python -m server.healthcheck` (docker/Dockerfile, compose).

Healthy (exit 0) when `/health` answers 200, and also while the server is getting its model
ready: a 503 whose `status` says it is downloading, verifying or loading. A first start can
download 16 GB for an hour, longer than any fixed start period; the download itself fails (and
the server exits or falls back) when no bytes arrive, so those states mean progress, and a
front-end waiting for "healthy" starts meanwhile (its requests get 503 "not ready yet" until the
model is loaded). Unhealthy: no answer, a failed load, anything else.

Standard library only, and nothing of gemma-serve imported: it runs every few seconds.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

PROGRESSING = frozenset({"downloading", "verifying", "loading", "starting"})


def verdict(status: int, body: bytes) -> tuple[bool, str]:
    """(healthy, why) for an answer of /health."""
    if status == 200:
        return True, "ready"
    try:
        state = json.loads(body).get("status")
    except (ValueError, AttributeError):
        state = None
    if status == 503 and state in PROGRESSING:
        return True, f"not ready yet: {state}"
    return False, f"/health answered {status} ({state or 'no status'})"


def main() -> int:
    port = os.environ.get("GEMMA_SERVE_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as answer:
            healthy, why = verdict(answer.status, answer.read())
    except urllib.error.HTTPError as exc:
        healthy, why = verdict(exc.code, exc.read())
    except OSError as exc:
        healthy, why = False, f"no answer on port {port}: {exc}"
    print(why, file=sys.stderr)  # noqa: T201 - docker inspect shows the check's output
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
