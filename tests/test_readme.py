"""The README's Python example runs as written, on the SQLite default, against a local OpenAI-compatible fake."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.agent_process import REPO, clean_env
from tests.fakes.openai_server import FakeOpenAIServer


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## The memory brain, from a Python shell", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_the_readme_example_runs_on_the_sqlite_default(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=lambda body: "Ana has a sister, Maya, who lives in Lisbon.") as fake:
        env = clean_env(tmp_path, OPENAI_BASE_URL=fake.base_url, PYTHONPATH=str(REPO))
        del env["DATABASE_URL"]  # the default: ./data/companion.db in the working directory
        result = subprocess.run(
            [sys.executable, "-c", readme_example()], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    assert "name='Ana'" in result.stdout
    assert "My sister Maya lives in Lisbon" in result.stdout
    assert result.stdout.strip().endswith("Ana has a sister, Maya, who lives in Lisbon.")
    assert (tmp_path / "data" / "companion.db").exists()
