"""server/download.py against a loopback hub that redirects to a loopback CDN, as the real hub
does for LFS files: a signed link that expires mid-download is renewed and the file resumed, two
downloads of one file at once do not both write it, and the token never follows a redirect to
another host. In-process: huggingface_hub's endpoint is pointed at the loopback hub."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from server import download
from tests.hub import FakeHub, HubFile

REPO, FILE = "test-org/tiny-GGUF", "tiny.gguf"
GATED = "google-test/tiny-gated"
DATA = os.urandom(3 * download.CHUNK + 1234)


@pytest.fixture
def cdn() -> Iterator[FakeHub]:
    running = FakeHub(host_name="localhost", signatures=set()).start()
    yield running
    running.stop()


@pytest.fixture
def hub(cdn: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    from huggingface_hub import constants

    running = FakeHub(cdn=cdn).start()
    running.files[f"{REPO}/{FILE}"] = running.files[f"{GATED}/{FILE}"] = HubFile(DATA)
    running.gated[GATED] = "hf_secret"
    cdn.files = running.files
    monkeypatch.setattr(constants, "ENDPOINT", running.url)
    template = running.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    yield running
    running.stop()


def file_gets(server: FakeHub) -> list[str | None]:
    return [rng for method, path, rng in server.requests if method == "GET"]


def test_an_expired_cdn_link_is_renewed_and_the_download_resumes(
    hub: FakeHub, cdn: FakeHub, tmp_path: Path
) -> None:
    cdn.cut_after, cdn.expire_links_on_cut = download.CHUNK + 100, True
    remote = download.metadata(REPO, FILE)
    assert remote.url.startswith(cdn.url)  # the signed CDN link, as the real hub's
    path = download.download(remote, tmp_path / "cache")
    assert path.read_bytes() == DATA
    gets = file_gets(cdn)
    # the first GET is cut, the old link refused, the fresh one resumes where the cut left off
    assert gets[0] is None and gets[-1] is not None and len(gets) == 3
    assert cdn.authorizations.count(None) == len(cdn.authorizations)


def test_two_downloads_of_one_file_at_once_transfer_it_once(
    hub: FakeHub, cdn: FakeHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cdn.bytes_per_second = len(DATA)  # about a second per transfer
    remote = download.metadata(REPO, FILE)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(download.download(remote, tmp_path)))
        for _ in range(2)
    ]
    with caplog.at_level(logging.INFO, logger="gemma_serve.fetch"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert [path.read_bytes() == DATA for path in results] == [True, True]
    assert len(file_gets(cdn)) == 1
    assert "waiting for another download" in caplog.text


def test_the_token_does_not_follow_a_redirect_to_another_host(
    hub: FakeHub, cdn: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    hub.redirect_head = False  # the download URL is the hub's, which redirects the GET
    remote = download.metadata(GATED, FILE)
    assert remote.url.startswith(hub.url)
    path = download.download(remote, tmp_path / "cache")
    assert path.read_bytes() == DATA
    assert "Bearer hf_secret" in hub.authorizations  # the hub got the token...
    assert file_gets(cdn) and cdn.authorizations == [None] * len(cdn.authorizations)  # not the CDN
