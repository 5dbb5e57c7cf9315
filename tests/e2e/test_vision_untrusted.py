"""Untrusted images against a real server (the bundled model with the tiny projector): damaged
files are 400s naming the part and never cost the keep-alive connection, a fuzz of damaged files
over HTTP gets no 5xx, pictures over the pixel budget are refused from their header, resident
memory comes back after a burst of large pictures, and image URLs (`--image-urls`) are fetched
from the loopback only because the test allows it, within their deadline.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image, ImageDraw

from tests.conftest import MODEL_ID, RunningServer, serving
from tests.images import animated_gif, data_url, encode, mutations, picture, png_header_only
from tests.projector import write_tiny_projector

PARAM = "messages[0].content[1]"
TRICKLE_BYTES = 200


class ImageHost(http.server.ThreadingHTTPServer):
    """A loopback web server with a picture (`/cat.png`) and one that trickles (`/slow.png`: a
    byte every 0.1 s, so every read is quick but the whole takes 20 s)."""

    daemon_threads = True
    trickled = 0  # bytes of /slow.png sent
    requests = 0

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ImageHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    server: ImageHost

    def do_GET(self) -> None:
        self.server.requests += 1
        if self.path == "/cat.png":
            body = encode(picture(9), "PNG")
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(TRICKLE_BYTES))
        self.end_headers()
        try:
            for _ in range(TRICKLE_BYTES):
                self.wfile.write(b"x")
                self.wfile.flush()
                self.server.trickled += 1
                time.sleep(0.1)
        except OSError:
            pass  # the fetch was cut

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[ImageHost]:
    host = ImageHost()
    yield host
    host.shutdown()


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("untrusted")
    projector = write_tiny_projector(tmp / "mmproj-tiny.gguf")
    with serving(
        tmp,
        *("--ctx", "2048", "--mmproj", str(projector), "--max-body-size", "32MiB"),
        # No saved prompt states: memory they hold (by design, up to --cache-ram) would hide
        # what the decoder keeps.
        *("--cache-ram", "0"),
        *("--image-urls", "--image-url-timeout", "2"),
        *("--image-url-allowed-networks", "127.0.0.1"),  # the test's own image host only
    ) as running:
        yield running


class Connection:
    """One keep-alive HTTP connection (http.client keeps one socket; `same` checks it)."""

    def __init__(self, server: RunningServer) -> None:
        address = urlsplit(server.base_url)
        self.conn = http.client.HTTPConnection(address.hostname or "", address.port, timeout=120)
        self.socket: object = None

    def chat(self, url: str) -> tuple[int, dict[str, Any]]:
        content = [{"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": url}]
        body = {
            "model": MODEL_ID,
            "max_tokens": 1,
            "messages": [{"role": "user", "content": content}],
        }
        return self.post("/v1/chat/completions", body)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = self.conn.getresponse()
        answer = json.loads(response.read())
        self.socket = self.socket or self.conn.sock
        assert self.conn.sock is self.socket, "the server closed the keep-alive connection"
        return response.status, answer


@pytest.fixture
def connection(vision_server: RunningServer) -> Iterator[Connection]:
    opened = Connection(vision_server)
    yield opened
    opened.conn.close()


def test_the_probes_cut_files_are_400s_and_the_connection_stays(connection: Connection) -> None:
    for url in [
        "data:image/webp;base64,UklGRvoAAABXRUJQVlA4IA==",
        "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==",
        data_url(animated_gif()[:119], "image/gif"),
    ]:
        status, answer = connection.chat(url)
        assert status == 400, answer
        assert (answer["error"]["param"], answer["error"]["code"]) == (PARAM, "invalid_image")
        status, answer = connection.chat(data_url(encode(picture(1), "PNG")))
        assert status == 200, answer


def test_responses_name_their_own_part(connection: Connection) -> None:
    part = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="}
    body = {"model": MODEL_ID, "input": [{"role": "user", "content": [part]}]}
    status, answer = connection.post("/v1/responses", body)
    assert (status, answer["error"]["param"]) == (400, "input[0].content[0]")


def test_fuzzed_images_over_http_get_no_5xx(connection: Connection) -> None:
    statuses: dict[int, int] = {}
    for name, data in mutations(seed=2626, count=160):
        status, answer = connection.chat(data_url(data))
        assert status in (200, 400), (name, status, answer)
        if status == 400:
            assert answer["error"]["param"] == PARAM, (name, answer)
        statuses[status] = statuses.get(status, 0) + 1
    assert statuses.get(400, 0) > 16, statuses


@pytest.mark.parametrize(
    ("width", "height", "color_type"),
    [(1, 49_000_000, 0), (7000, 7000, 6)],
    ids=["1x49M-grey", "7000x7000-rgba"],
)
def test_pictures_over_the_budget_are_refused_from_their_header(
    connection: Connection, width: int, height: int, color_type: int
) -> None:
    # Garbage pixel data: decoded, it would be `invalid_image`.
    status, answer = connection.chat(data_url(png_header_only(width, height, color_type)))
    assert (status, answer["error"]["code"]) == (400, "image_too_large"), answer
    assert "--image-max-" in answer["error"]["message"]


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def large_picture(seed: int) -> str:
    """A 4000 x 4000 RGBA PNG (16 MP, inside the default budget) that compresses well."""
    image = Image.new("RGBA", (4000, 4000), (seed * 40 % 256, 90, 200, 255))
    ImageDraw.Draw(image).rectangle((seed * 100, 0, seed * 100 + 500, 3999), (0, 0, 0, 128))
    return data_url(encode(image, "PNG", compress_level=1))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_resident_memory_comes_back_after_a_burst_of_large_pictures(
    vision_server: RunningServer, connection: Connection
) -> None:
    assert connection.chat(data_url(encode(picture(2), "PNG")))[0] == 200  # the image path warm
    pid = vision_server.process.pid
    before = resident_bytes(pid)
    urls = [large_picture(seed) for seed in range(20)]

    def send(url: str) -> int:
        opened = Connection(vision_server)
        try:
            return opened.chat(url)[0]
        finally:
            opened.conn.close()

    with ThreadPoolExecutor(4) as pool:  # four at once: several threads, several malloc arenas
        assert list(pool.map(send, urls)) == [200] * 20
    after = resident_bytes(pid)
    assert after - before < 200 << 20, (before >> 20, after >> 20)


def test_an_image_url_is_fetched_from_an_allowed_network(
    connection: Connection, image_host: ImageHost
) -> None:
    status, answer = connection.chat(f"http://127.0.0.1:{image_host.port}/cat.png")
    assert status == 200, answer


def test_a_loopback_url_is_refused_unless_allowed(
    connection: Connection, image_host: ImageHost
) -> None:
    # 127.0.0.2 is the loopback too, and not in --image-url-allowed-networks.
    status, answer = connection.chat(f"http://127.0.0.2:{image_host.port}/cat.png")
    assert (status, answer["error"]["code"]) == (400, "invalid_image_url"), answer
    assert "--image-url-allowed-networks" in answer["error"]["message"]


def test_a_trickling_server_is_cut_at_the_deadline(
    connection: Connection, image_host: ImageHost
) -> None:
    status, answer = connection.chat(f"http://127.0.0.1:{image_host.port}/slow.png")
    assert (status, answer["error"]["code"]) == (400, "invalid_image_url"), answer
    assert "not fetched within 2 s" in answer["error"]["message"]
    assert image_host.trickled < TRICKLE_BYTES  # cut before the body was whole


def test_the_whole_request_is_checked_before_any_fetch(
    connection: Connection, image_host: ImageHost
) -> None:
    url = f"http://127.0.0.1:{image_host.port}/slow.png"
    parts = [{"type": "image_url", "image_url": url} for _ in range(9)]
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": parts}]}
    requests = image_host.requests
    status, answer = connection.post("/v1/chat/completions", body)
    assert (status, answer["error"]["code"]) == (400, "too_many_images")
    assert image_host.requests == requests  # nothing was fetched
