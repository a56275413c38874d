"""Our /metrics: per-turn histograms summed over LiveKit job processes (prometheus-client's multiprocess mode), or
this process's own when the session runs here (the console)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client import REGISTRY

from infrastructure.metrics_server import MetricsServer, archive_exited_processes
from infrastructure.turn_metrics import TurnMetrics, TurnTimings
from tests.agent_process import REPO

A_JOB_PROCESS = """
from infrastructure.turn_metrics import TurnMetrics, TurnTimings
TurnMetrics().record(TurnTimings(llm_ttft=0.2, retrieval=0.01, retrieval_in_time=True))
TurnMetrics().record(TurnTimings(llm_ttft=0.4, retrieval=0.3, retrieval_in_time=False))
from infrastructure.metrics import Metrics
metrics = Metrics.process()
metrics.batcher_writes.labels(lane="messages").inc(3)
metrics.cache_hits.labels(backend="redis").inc()
metrics.storage_errors.labels(backend="postgres", operation="append_messages", retryable="true").inc()
"""


def sample(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


def scrape(server: MetricsServer) -> str:
    response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10)
    response.raise_for_status()
    return response.text


def job_process(folder: Path) -> None:
    """A LiveKit job process: records two turns into ``folder`` and exits."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", A_JOB_PROCESS], env=env, check=True, timeout=60)


def test_the_histograms_of_every_job_process_are_summed(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    for _ in range(2):  # two job processes, each with two turns, then gone
        job_process(folder)
    server = MetricsServer.start(port=0, host="127.0.0.1", multiprocess_dir=folder)
    try:
        text = scrape(server)
        assert sample(text, "companion_llm_ttft_seconds_count") == 4.0
        assert abs(sample(text, "companion_llm_ttft_seconds_sum") - 1.2) < 1e-9  # (0.2 + 0.4) x 2
        assert sample(text, 'companion_retrieval_seconds_bucket{le="0.025"}') == 2.0
        assert sample(text, "companion_retrieval_deadline_misses_total") == 2.0
        assert sample(text, 'companion_batcher_writes_total{lane="messages"}') == 6.0
        assert sample(text, 'companion_cache_hits_total{backend="redis"}') == 2.0
        errors = 'companion_storage_errors_total{backend="postgres",operation="append_messages",retryable="true"}'
        assert sample(text, errors) == 2.0

        # The exited processes' files were folded into one archive per type; the totals did not change.
        assert sorted(p.name for p in folder.iterdir()) == ["counter_archive.db", "histogram_archive.db"]
        assert sample(scrape(server), "companion_llm_ttft_seconds_count") == 4.0
        job_process(folder)
        text = scrape(server)
        assert sample(text, "companion_llm_ttft_seconds_count") == 6.0
        assert sample(text, 'companion_retrieval_seconds_bucket{le="0.5"}') == 6.0
    finally:
        server.close()


def test_a_running_process_keeps_its_files(tmp_path: Path) -> None:
    job_process(tmp_path)
    assert archive_exited_processes(tmp_path, is_alive=lambda pid: True) == 0
    assert archive_exited_processes(tmp_path, is_alive=lambda pid: False) == 2  # its counter and histogram files


def test_without_a_folder_the_process_serves_its_own_turns() -> None:
    before = REGISTRY.get_sample_value("companion_e2e_latency_seconds_count") or 0.0
    TurnMetrics().record(TurnTimings(e2e_latency=0.8))
    server = MetricsServer.start(port=0, host="127.0.0.1")
    try:
        assert sample(scrape(server), "companion_e2e_latency_seconds_count") == before + 1
    finally:
        server.close()
