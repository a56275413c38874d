"""bench/scale.py --quick: two workers, one user's two sessions on them, one PostgreSQL and one Redis; the benchmark
runs end to end, prints its JSON object, and a fact saved in one session reaches the other's next LLM request."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.agent_process import REPO
from tests.conftest import admin_dsn
from tests.redis_servers import OwnRedisServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ENV = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
SECTIONS = {"machine", "config", "session_open", "turns", "database_connections", "memory_per_job_process",
            "propagation", "llm_requests"}  # fmt: skip


def test_a_quick_run_opens_sessions_on_two_workers_and_a_saved_fact_reaches_the_other_session(
    own_redis: OwnRedisServer,
) -> None:
    command = [sys.executable, str(REPO / "bench" / "scale.py"), "--quick", "--postgres", admin_dsn(),
               "--redis", own_redis.url]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False, env=ENV)

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(report) >= SECTIONS
    assert report["config"]["turn_detector"] == "vad"
    assert report["config"]["job_processes"] == 2
    opened = report["session_open"]
    assert opened["sessions"] == 2
    assert set(opened["per_worker"]) == {"w0", "w1"}
    assert opened["sessions_per_s"] > 0
    assert opened["memories_loaded_per_session"] == 200
    turns = report["turns"]
    assert turns["turns_on"] == turns["turns_off"] == 6  # 3 + 3 in each of the two sessions
    assert turns["turns_without_request"] == 0
    assert {"memory_share_p50_ms", "memory_share_p95_ms"} <= set(turns)
    connections = report["database_connections"]
    assert connections["samples"] > 0
    assert 1 <= connections["per_process_max"] <= connections["max"]  # each job process's pool, seen by the server
    assert 1 <= connections["pool_size_max"] <= report["config"]["pool_max_size"]
    assert connections["redis_connections_per_process_max"] >= 1  # the profile, read through the shared cache
    memory = report["memory_per_job_process"]
    assert memory["rss_mb_after_turns_max"] >= memory["pss_mb_after_turns_max"] > 0
    propagation = report["propagation"]
    assert propagation["saves"] == propagation["saves_won"] == 2  # each session saved one fact for the other
    assert propagation["held"] == 2  # the other session's catch-up held it
    assert propagation["asked"] == propagation["carried"] == 2  # and its next LLM request carried it
    assert propagation["misses"] == 0
    assert propagation["to_held_p50_ms"] > 0
    assert propagation["to_request_p50_ms"] > 0
