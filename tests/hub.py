"""A loopback HTTP server standing in for the Hugging Face hub (point HF_ENDPOINT at it).

It serves real files the way the hub's `resolve` endpoint does for a file stored in LFS: HEAD
with `X-Repo-Commit`, an `ETag` that is a git hash, `X-Linked-Etag` (the LFS object id: the
file's sha256) and `X-Linked-Size`; GET with `Range` support. Knobs make it misbehave the ways a
real download can: cut the connection mid-transfer, send slowly, serve corrupted bytes, announce
a wrong sha256, demand a token.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    data: bytes
    sha256: str = ""  # the LFS object id
    git_hash: str = ""  # what git stores: the LFS pointer file's blob hash

    def __post_init__(self) -> None:
        self.sha256 = self.sha256 or hashlib.sha256(self.data).hexdigest()
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
        self.git_hash = self.git_hash or hashlib.sha1(pointer.encode()).hexdigest()


@dataclass
class FakeHub:
    files: dict[str, HubFile] = field(default_factory=dict)  # "org/repo/file" -> content
    gated: dict[str, str] = field(default_factory=dict)  # "org/repo" -> the token that opens it
    cut_after: int | None = None  # close the first GET after this many bytes
    corrupt: bool = False  # flip a byte in the middle of every GET
    bytes_per_second: int | None = None  # send file bodies this slowly
    announced_sha256: str | None = None  # announce this sha256 instead of the file's
    fail_with: int | None = None  # answer every request with this HTTP status
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def add(self, repo: str, name: str, path: Path) -> None:
        self.files[f"{repo}/{name}"] = HubFile(path.read_bytes())

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._serve(self, head=True)

            def do_GET(self) -> None:
                hub._serve(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def _error(self, handler: BaseHTTPRequestHandler, status: int, code: str) -> None:
        handler.send_response(status)
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Error-Message", code)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _serve(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        self.requests.append((handler.command, handler.path, handler.headers.get("Range")))
        if self.fail_with:
            self._error(handler, self.fail_with, "ServiceUnavailable")
            return
        # /{org}/{repo}/resolve/{revision}/{file}
        parts = handler.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            self._error(handler, 404, "RepoNotFound")
            return
        repo, name = "/".join(parts[:2]), "/".join(parts[4:])
        token = self.gated.get(repo)
        if token is not None and handler.headers.get("Authorization") != f"Bearer {token}":
            self._error(handler, 401, "GatedRepo")
            return
        file = self.files.get(f"{repo}/{name}")
        if file is None:
            self._error(handler, 404, "EntryNotFound")
            return
        data = file.data
        if self.corrupt:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        start = 0
        range_header = handler.headers.get("Range")
        if range_header and not head:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{file.git_hash}"')
        handler.send_header("X-Linked-Etag", f'"{self.announced_sha256 or file.sha256}"')
        handler.send_header("X-Linked-Size", str(len(data)))
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Length", str(len(data) - start))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if head:
            return
        body = data[start:]
        if self.cut_after is not None:
            cut, self.cut_after = self.cut_after, None
            handler.wfile.write(body[:cut])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(2)  # the transfer breaks off mid-file
            return
        if self.bytes_per_second:
            step = max(1, self.bytes_per_second // 20)
            try:
                for offset in range(0, len(body), step):
                    handler.wfile.write(body[offset : offset + step])
                    time.sleep(0.05)
            except OSError:  # the client went away
                handler.close_connection = True
            return
        handler.wfile.write(body)
