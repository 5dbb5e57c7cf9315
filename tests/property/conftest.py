"""Fixtures of the property suites: one HTTP client on the shared real server.

The client is module-scoped (hypothesis runs many examples per test function, and refuses
function-scoped fixtures). Its timeout is the "never a hang" bound: every generated request is
capped at a few tokens, so one that takes longer than this is a bug, not a slow machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RunningServer

REQUEST_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=REQUEST_TIMEOUT_S) as http:
        yield http
