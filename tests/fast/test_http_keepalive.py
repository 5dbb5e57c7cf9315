"""A keep-alive connection outlives a request's failure: after a 500 (a bug in a handler) or a
400, the next request on the same connection is answered. Starlette's catch-all answered a bug
and then re-raised it, and uvicorn closed the connection for that: the client's next request on
it failed. Driven with http.client, which keeps one socket and says when it is closed."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from server.engine.contract import GenerationRequest
from tests.fast.conftest import CHAT, FastServer


@pytest.fixture
def connection(fast_server: FastServer) -> Iterator[http.client.HTTPConnection]:
    address = urlsplit(fast_server.base_url)
    conn = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    yield conn
    conn.close()


def post(
    conn: http.client.HTTPConnection, path: str, body: object
) -> tuple[int, dict[str, object]]:
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_a_500_leaves_the_connection_usable(
    fast_server: FastServer, connection: http.client.HTTPConnection
) -> None:
    def bug(request: GenerationRequest) -> None:
        raise RuntimeError("a bug in the engine")

    path, body = CHAT
    assert post(connection, path, body)[0] == 200
    socket = connection.sock
    fast_server.engine.on_prepare = bug
    status, answer = post(connection, path, body)
    assert status == 500
    assert answer["error"] == {
        "message": "The server had an internal error.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    fast_server.engine.on_prepare = None
    assert post(connection, path, body)[0] == 200
    assert connection.sock is socket  # the same connection, not a new one


def test_a_400_leaves_the_connection_usable(connection: http.client.HTTPConnection) -> None:
    path, body = CHAT
    bad = {**body, "temperature": "hot"}
    assert post(connection, path, bad)[0] == 400
    socket = connection.sock
    assert post(connection, path, body)[0] == 200
    assert connection.sock is socket
