"""The browser tests' set-up (tests/browser/conftest.py): without Chromium they skip with one
line, except in CI, where they fail (a skip there would hide a broken set-up). Runs pytest on
one browser test in a subprocess; needs Playwright installed, not Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.process
@pytest.mark.parametrize(("ci", "outcome"), [("", "1 skipped"), ("true", "1 error")])
def test_without_chromium_browser_tests_skip_but_fail_in_ci(ci: str, outcome: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rs",
            "tests/browser/test_conversations.py::test_pictures_are_hidden_for_a_text_model",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "GEMMA_SERVE_CHROMIUM": "/nonexistent/chromium", "CI": ci},
        timeout=120,
        check=False,
    )
    assert outcome in result.stdout, result.stdout
    assert "chromium is not installed (apt-get install chromium)" in result.stdout
    if ci:
        assert "CI must run the browser tests" in result.stdout
