"""bench/sync.py: the sessions-keeping-up benchmark runs end to end and prints its JSON object."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.agent_process import REPO

ENV = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}


def test_a_short_run_reports_the_check_and_the_time_a_change_takes_to_reach_the_other_session() -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "sync.py"), "--runs", "5", "--memories", "20"],
                            capture_output=True, text=True, timeout=120, check=False, env=ENV)  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    sqlite = json.loads(result.stdout)["sqlite"]
    assert sqlite["memories"] == 25  # 20 seeds and the 5 keys saved
    for name in ("check_idle_ms", "check_one_change_ms", "cas_save_ms", "save_to_visible_ms"):
        assert 0 < sqlite[name]["median"] <= sqlite[name]["p95"]
