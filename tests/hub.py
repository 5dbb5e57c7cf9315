"""A loopback HTTP server standing in for the Hugging Face hub (point HF_ENDPOINT at it).

It serves real files the way the hub's `resolve` endpoint does for a file stored in LFS: HEAD
with `X-Repo-Commit`, an `ETag` that is a git hash, `X-Linked-Etag` (the LFS object id: the
file's sha256) and `X-Linked-Size`; GET with `Range` support. Knobs make it misbehave the ways a
real download can: cut the connection mid-transfer, send slowly, serve corrupted bytes, announce
a wrong sha256, demand a token. Another FakeHub can stand in for the CDN the hub redirects
LFS files to (`cdn`): its links are signed, and it can let them expire mid-download.
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
    authorizations: list[str | None] = field(default_factory=list)  # each request's header
    # As the hub does for LFS files: answer HEAD (with the metadata) and GET with a redirect to
    # this server, the link signed; `redirect_head=False` redirects only GET.
    cdn: FakeHub | None = None
    redirect_head: bool = True
    # As a CDN: the signatures it accepts (None: any); `expire_links_on_cut` clears them when
    # `cut_after` cuts a transfer, as a signed link that expires mid-download.
    signatures: set[str] | None = None
    expire_links_on_cut: bool = False
    host_name: str = "127.0.0.1"  # the name in `url` (another name for a different host)
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
        self.url = f"http://{self.host_name}:{self._server.server_address[1]}"
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
        self.authorizations.append(handler.headers.get("Authorization"))
        if self.fail_with:
            self._error(handler, self.fail_with, "ServiceUnavailable")
            return
        # /{org}/{repo}/resolve/{revision}/{file}
        path, _, query = handler.path.partition("?")
        if self.signatures is not None and query.removeprefix("signature=") not in self.signatures:
            self._error(handler, 403, "SignatureExpired")
            return
        parts = path.strip("/").split("/")
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
        if self.cdn is not None and (self.redirect_head or not head):
            self._redirect(handler, file, path)
            return
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
            if self.expire_links_on_cut and self.signatures is not None:
                self.signatures.clear()
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

    def _redirect(self, handler: BaseHTTPRequestHandler, file: HubFile, path: str) -> None:
        """A 302 to the CDN with a freshly signed link, and the file's metadata as the hub's."""
        assert self.cdn is not None
        signature = f"s{len(self.requests)}"
        if self.cdn.signatures is not None:
            self.cdn.signatures.add(signature)
        handler.send_response(302)
        handler.send_header("Location", f"{self.cdn.url}{path}?signature={signature}")
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{file.git_hash}"')
        handler.send_header("X-Linked-Etag", f'"{self.announced_sha256 or file.sha256}"')
        handler.send_header("X-Linked-Size", str(len(file.data)))
        handler.send_header("Content-Length", "0")
        handler.end_headers()
