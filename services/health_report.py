"""The health tools' answers: one short sentence each, with the real numbers, fit to be spoken.

Pure text from the stats the pool, cache, batcher and services keep; the agent's tools return these.
"""

from __future__ import annotations

from collections.abc import Mapping

from infrastructure.connection_pool import ResourceStats
from infrastructure.database_batcher import BatcherStats
from infrastructure.redis_cache import CacheStats
from services.memory_service import MemoryStats
from services.turn_retrieval import RetrievalStats


def pool_report(resources: Mapping[str, ResourceStats]) -> str:
    parts = []
    for name, stats in resources.items():
        health = "" if stats.last_health is None else (" healthy" if stats.last_health.ok else " failing")
        parts.append(f"{name}: created {stats.created}, reused {stats.reused}, errors {stats.errors}{health}")
    return "; ".join(parts) + "."


def cache_report(stats: CacheStats) -> str:
    return (
        f"The cache is in {stats.mode} mode with a hit rate of {stats.hit_rate:.0%} "
        f"({stats.hits} hits, {stats.misses} misses), {stats.errors} errors, {stats.fallbacks} fallbacks, "
        f"p50 {stats.p50_ms:.2f} milliseconds, p95 {stats.p95_ms:.2f} milliseconds."
    )


def batch_report(stats: BatcherStats) -> str:
    return (
        f"{stats.accepted} writes accepted in {stats.statements} statements, saving {stats.roundtrip_saving:.0%} "
        f"of round trips; {stats.failures} failed, {stats.retries} retries, {stats.queue_depth} waiting."
    )


def memory_report(memories: MemoryStats, retrieval: RetrievalStats) -> str:
    kinds = ", ".join(f"{n} {c.lower()}" for c, n in sorted(memories.by_category.items())) or "none yet"
    return (
        f"I remember {memories.count} things about you ({kinds}). Retrieval ran {retrieval.turns} times, "
        f"missed its deadline {retrieval.deadline_misses} times, last took {retrieval.last_ms:.1f} milliseconds."
    )
