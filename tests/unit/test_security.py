"""The security settings' pure parts (server/api/security.py): API key files, and which Host
headers the allow-list accepts for each bind address."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.api.security import HostPolicy, load_api_keys


def test_key_files_are_read_and_checked(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("a-key  # laptop\n\n# old: none\nb-key\na-key\n")
    assert load_api_keys(("c-key",), keys) == ("c-key", "a-key", "b-key")
    keys.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no key"):
        load_api_keys((), keys)
    with pytest.raises(ValueError, match="cannot read"):
        load_api_keys((), tmp_path / "missing")


@pytest.mark.parametrize(
    ("bind", "extra", "host", "allowed"),
    [
        ("127.0.0.1", (), "localhost:8000", True),
        ("127.0.0.1", (), "127.0.0.1", True),
        ("127.0.0.1", (), "[::1]:80", True),
        ("127.0.0.1", (), "192.168.1.10:8000", False),  # loopback only: loopback names only
        ("127.0.0.1", (), "attacker.example", False),
        ("127.0.0.1", ("gemma.lan",), "gemma.lan.:8000", True),
        ("127.0.0.1", ("*",), "anything.example", True),
        ("0.0.0.0", (), "192.168.1.10:8000", True),  # beyond loopback: any IP address
        ("0.0.0.0", (), "[fe80::1]:8000", True),
        ("0.0.0.0", (), "localhost", True),
        ("0.0.0.0", (), "attacker.example", False),  # names must be listed
        ("0.0.0.0", (), "192.168.1.10.attacker.example", False),
        ("::", ("gemma.lan",), "gemma.lan", True),
        ("192.168.1.10", (), "192.168.1.10:8000", True),
    ],
)
def test_host_policy(bind: str, extra: tuple[str, ...], host: str, allowed: bool) -> None:
    assert HostPolicy(bind, extra).allows(host) is allowed
