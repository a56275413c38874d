"""Runs ``agent.py`` the way a user does: a fresh process, an environment of our choosing, no ``.env`` around."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AGENT = REPO / "agent.py"


def clean_env(home: Path, **variables: str) -> dict[str, str]:
    """Only what a shell needs plus ``variables``: none of the developer's own settings leak in."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8", "TERM": "xterm", "HF_HUB_OFFLINE": "1"}
    env["DATABASE_URL"] = f"sqlite:///{home}/companion.db"
    env.update(variables)
    return env


def run_agent(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(AGENT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
