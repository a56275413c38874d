"""The README's screenshot script runs as written (Debian's Chromium, a fictional person) and makes a small PNG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent_process import REPO, clean_env
from tests.inspector.browser import require_chromium


@pytest.mark.slow
def test_the_screenshot_script_makes_a_small_png_of_the_memories_page(tmp_path: Path) -> None:
    require_chromium()
    out = tmp_path / "memories.png"
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "inspector_screenshot.py"), str(out)],
        cwd=tmp_path, env=clean_env(tmp_path), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-2_000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 20_000 < out.stat().st_size < 400_000
