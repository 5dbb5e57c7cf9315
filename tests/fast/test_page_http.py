"""The chat page over plain HTTP (no browser, no model, no Playwright): served at `/` with its
security headers, never shadowing the API, open without an API key while the API stays keyed,
behind the Host check, off with `--no-ui`; the vendored files match their recorded sha256.
The page itself, in Chromium, is tested in tests/browser/."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.capability import LlamaBuild
from server.cli import parse_settings
from server.engine.contract import Engine
from server.planner import PlanOptions, plan
from server.registry import load_registry
from server.settings import Settings
from server.ui import CONTENT_SECURITY_POLICY, STATIC_DIR

VENDOR = STATIC_DIR / "vendor"


def _not_loaded() -> Engine:
    raise RuntimeError("no model in these tests")


def client_for(**settings: object) -> Iterator[TestClient]:
    chosen = plan([], load_registry(), PlanOptions(ctx=1024), LlamaBuild(gpu_offload=False))
    app = create_app(
        Settings(**settings),  # type: ignore[arg-type]
        chosen,
        load_engine=_not_loaded,
        on_fatal=lambda message: None,
    )
    with TestClient(app, base_url="http://localhost") as client:
        yield client


@pytest.fixture
def client() -> Iterator[TestClient]:
    yield from client_for()


def test_the_page_is_served_with_a_strict_csp(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>gemma-serve chat</title>" in page.text
    csp = page.headers["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["img-src"] == "'self' data: blob:"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp and "http" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    # No inline script or handler in the page itself: the CSP would block them.
    assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)
    assert not re.search(r"\son[a-z]+=", page.text)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/vendor/marked.esm.js", "text/javascript"),
        ("/ui/vendor/purify.es.mjs", "text/javascript"),
        ("/ui/vendor/highlight.min.js", "text/javascript"),
    ],
)
def test_the_pages_files_carry_the_same_headers(
    client: TestClient, path: str, content_type: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    # Module scripts are refused by browsers (nosniff) unless served as JavaScript.
    assert response.headers["content-type"].startswith(content_type)
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"


def test_the_page_never_shadows_the_api(client: TestClient) -> None:
    models = client.get("/v1/models")
    assert models.status_code == 200
    assert models.json()["data"][0]["id"] == "gemma-3-270m"
    assert client.get("/health").status_code == 503  # loading, or failed to load
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")
    assert client.get("/v1/chat/completions").status_code == 405  # the route's own answer
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and "error" in missing.json()
    assert "content-security-policy" not in models.headers


@pytest.mark.parametrize("path", ["/ui", "/ui/"])
def test_the_ui_folder_leads_to_the_page(client: TestClient, path: str) -> None:
    moved = client.get(path, follow_redirects=False)
    assert moved.status_code == 308 and moved.headers["location"] == "/"
    page = client.get(path)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_files_outside_the_static_folder_are_not_served(client: TestClient) -> None:
    assert client.get("/ui/nothing.js").status_code == 404
    assert client.get("/ui/../settings.py").status_code == 404
    assert client.get("/ui/%2e%2e/__init__.py").status_code == 404
    assert client.get("/index.html").status_code == 404  # the page lives at / only


def test_no_ui_turns_the_page_off() -> None:
    assert parse_settings(["--no-ui"]).ui is False
    assert parse_settings(["--ui", "false"]).ui is False
    assert parse_settings([]).ui is True
    for client in client_for(ui=False):
        page = client.get("/")
        assert page.status_code == 404
        assert page.json()["error"]["type"] == "invalid_request_error"
        assert client.get("/ui/app.js").status_code == 404
        assert client.get("/v1/models").status_code == 200


def test_no_ui_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMMA_SERVE_UI", "false")
    assert parse_settings([]).ui is False


def test_the_page_loads_without_a_key_and_the_api_stays_keyed() -> None:
    for client in client_for(api_keys=("sekrit",)):
        assert client.get("/").status_code == 200
        assert client.get("/ui/app.js").status_code == 200
        assert client.head("/ui/style.css").status_code == 200
        assert client.get("/ui").status_code == 200  # through the redirect, no key either
        assert client.get("/v1/models").status_code == 401
        assert client.get("/metrics").status_code == 401
        assert client.post("/").status_code == 401  # only reading the page is open
        assert client.post("/ui/app.js").status_code == 401
        keyed = client.get("/v1/models", headers={"Authorization": "Bearer sekrit"})
        assert keyed.status_code == 200
    for client in client_for(api_keys=("sekrit",), ui=False):
        assert client.get("/").status_code == 401  # nothing is open without the page


def test_the_page_is_behind_the_host_check(client: TestClient) -> None:
    assert client.get("/", headers={"Host": "attacker.example"}).status_code == 421
    assert client.get("/ui/app.js", headers={"Host": "attacker.example"}).status_code == 421


def _recorded_hashes() -> dict[str, str]:
    readme = (VENDOR / "README.md").read_text()
    return dict(re.findall(r"^\| `([^`]+)` \|.*\| `([0-9a-f]{64})` \|$", readme, re.MULTILINE))


def test_every_vendored_file_is_recorded_with_its_sha256_and_license() -> None:
    recorded = _recorded_hashes()
    shipped = {
        path.name
        for path in VENDOR.iterdir()
        if path.name != "README.md" and not path.name.endswith(".LICENSE")
    }
    assert set(recorded) == shipped
    for name, digest in recorded.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    for license_file in ("marked.LICENSE", "dompurify.LICENSE", "highlight.js.LICENSE"):
        assert (VENDOR / license_file).stat().st_size > 500


def test_the_page_names_only_files_that_exist() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    scripts = "".join(path.read_text() for path in STATIC_DIR.glob("*.js"))
    referenced = re.findall(r'(?:href|src)="/ui/([^"]+)"', html)
    referenced += re.findall(r'from "\./([^"]+)"', scripts)
    assert len(referenced) >= 10
    for name in referenced:
        assert (STATIC_DIR / name).is_file(), name
    assert Path(STATIC_DIR / "favicon.svg").is_file()
