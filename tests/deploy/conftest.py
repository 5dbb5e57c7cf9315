"""Fixtures shared by the deployment tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .fake_machine import Machine


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    machine = Machine(tmp_path)
    machine.bin.mkdir()
    return machine
