"""What the health tools say: the real numbers, in a sentence fit to be spoken."""

from __future__ import annotations

from infrastructure.redis_cache import CacheStats
from services.health_report import cache_report, memory_report
from services.memory_service import MemoryStats
from services.turn_retrieval import RetrievalStats


def test_the_cache_report_says_mode_hit_rate_and_latency() -> None:
    stats = CacheStats(mode="redis", hits=17, misses=3, hit_rate=0.85, errors=0, fallbacks=1, recoveries=1,
                       p50_ms=0.19, p95_ms=0.254, memory_entries=12)  # fmt: skip
    assert cache_report(stats) == (
        "The cache is in redis mode with a hit rate of 85% (17 hits, 3 misses), 0 errors, 1 fallbacks, "
        "p50 0.19 milliseconds, p95 0.25 milliseconds."
    )


def test_the_memory_report_counts_by_category_and_says_how_retrieval_does() -> None:
    memories = MemoryStats(count=3, by_category={"RELATIONSHIP": 1, "PREFERENCE": 2})
    retrieval = RetrievalStats(turns=4, deadline_misses=1, last_ms=12.34)
    assert memory_report(memories, retrieval) == (
        "I remember 3 things about you (2 preference, 1 relationship). Retrieval ran 4 times, missed its "
        "deadline 1 times, last took 12.3 milliseconds."
    )
    assert "(none yet)" in memory_report(MemoryStats(count=0, by_category={}), RetrievalStats())
