"""bench/turn.py --quick: the turn benchmark runs end to end and prints its JSON object (as tools read it)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.agent_process import REPO

ENV = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
KEYS = {"p50_on_ms", "p95_on_ms", "p99_on_ms", "p50_off_ms", "p95_off_ms", "p99_off_ms", "miss_rate",
        "rss_mb_prewarm", "rss_mb_after_turns", "pss_mb_prewarm", "pss_mb_after_turns", "max_stall_ms"}  # fmt: skip


@pytest.mark.slow
def test_a_quick_run_reports_each_turn_timing_memory_and_stalls_for_one_session() -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "turn.py"), "--quick"],
                            capture_output=True, text=True, timeout=120, check=False, env=ENV)  # fmt: skip

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["machine"]["cpus"] >= 1
    [(count, numbers)] = report["sessions"].items()
    assert count == "1"
    assert set(numbers) >= KEYS
    assert numbers["turns_on"] == numbers["turns_off"] == 3  # every turn's request reached the server
    assert numbers["turns_without_request"] == 0
    assert numbers["memories_per_user"] == 200
    for key in ("p50_on_ms", "p95_on_ms", "p50_off_ms", "p95_off_ms", "rss_mb_prewarm", "pss_mb_after_turns"):
        assert numbers[key] > 0, key
    assert numbers["p50_on_ms"] <= numbers["p95_on_ms"] <= numbers["p99_on_ms"]
    assert numbers["p95_on_ms"] < 5_000  # a request, not a timeout
    assert 0.0 <= numbers["miss_rate"] <= 1.0
    assert numbers["rss_mb_after_turns"] >= numbers["pss_mb_after_turns"] >= numbers["uss_mb_after_turns"] > 0
    assert 0 <= numbers["max_stall_ms"] < 5_000
    assert 5 <= numbers["words_per_turn_median"] <= 60
