"""What the health tools say: the real numbers, read from the instruments, in a sentence fit to be spoken."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from infrastructure.metrics import CacheReading, Metrics, RetrievalReading
from infrastructure.turn_metrics import TurnMetrics, TurnTimings
from services.health_report import cache_report, memory_report
from services.memory_service import MemoryStats


def test_the_cache_report_says_mode_hit_rate_and_latency_as_the_instruments_hold_them() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.cache_primary_available.set(1)
    metrics.cache_hits.labels(backend="redis").inc(17)
    metrics.cache_misses.labels(backend="redis").inc(2)
    metrics.cache_misses.labels(backend="memory").inc(1)
    metrics.cache_fallbacks.inc()
    metrics.cache_recoveries.inc()
    for seconds in (0.0001, 0.0003):
        metrics.cache_seconds.labels(backend="redis", operation="get").observe(seconds)
    assert cache_report(CacheReading.read(metrics)) == (
        "The cache is in redis mode with a hit rate of 85% (17 hits, 3 misses), 0 errors, 1 fallbacks, "
        "1 recoveries, 0.20 milliseconds per operation on average."  # (0.1 + 0.3) / 2 = 0.2 ms
    )


def test_the_memory_report_counts_by_category_and_says_how_retrieval_does() -> None:
    metrics = Metrics(CollectorRegistry())
    turns = TurnMetrics(metrics=metrics)
    turns.record(TurnTimings(retrieval=0.010, retrieval_in_time=True, memory_source="live"))
    turns.record(TurnTimings(retrieval=0.150, retrieval_in_time=False, memory_source="previous"))
    memories = MemoryStats(count=3, by_category={"RELATIONSHIP": 1, "PREFERENCE": 2})
    assert memory_report(memories, RetrievalReading.read(metrics)) == (
        "I remember 3 things about you (2 preference, 1 relationship). Retrieval ran for 2 replies, missed its "
        "deadline 1 times, failed 0 times, and took 80.0 milliseconds on average."  # (10 + 150) / 2
    )
    assert "(none yet)" in memory_report(MemoryStats(count=0, by_category={}), RetrievalReading.read(metrics))
