"""The health tools' answers: one short sentence each, with the real numbers, fit to be spoken.

Every number is read from the process's Prometheus instruments (``infrastructure/metrics.py``), the ones ``/metrics``
serves, so what the agent says equals what an operator scrapes from this process. Pure text from those readings.
"""

from __future__ import annotations

from collections.abc import Sequence

from infrastructure.metrics import BatchReading, CacheReading, ClientReading, RetrievalReading, StorageReading
from services.memory_service import MemoryStats


def clients_report(clients: Sequence[ClientReading]) -> str:
    parts = []
    for client in clients:
        pool = "" if client.in_use is None else f", {client.in_use} connections in use, {client.idle} idle"
        state = "healthy" if client.up else "failing"
        parts.append(f"{client.name}: {state}{pool}, {client.check_failures} failed checks")
    return "; ".join(parts) + "." if parts else "No client has been checked yet."


def cache_report(cache: CacheReading) -> str:
    return (
        f"The cache is in {cache.mode} mode with a hit rate of {cache.hit_rate:.0%} "
        f"({cache.hits} hits, {cache.misses} misses), {cache.errors} errors, {cache.fallbacks} fallbacks, "
        f"{cache.recoveries} recoveries, {cache.mean_ms:.2f} milliseconds per operation on average."
    )


def batch_report(batch: BatchReading, storage: StorageReading) -> str:
    return (
        f"{batch.accepted} writes accepted in {batch.statements} statements, saving {batch.roundtrip_saving:.0%} "
        f"of round trips, {batch.flush_mean_ms:.1f} milliseconds per batch on average; {batch.failures} failed, "
        f"{batch.retries} retries, {batch.queue_depth} waiting, {batch.outbox_rows} in the outbox; "
        f"the database refused {storage.errors} calls, {storage.retryable_errors} of them worth a retry."
    )


def memory_report(memories: MemoryStats, retrieval: RetrievalReading) -> str:
    kinds = ", ".join(f"{n} {c.lower()}" for c, n in sorted(memories.by_category.items())) or "none yet"
    return (
        f"I remember {memories.count} things about you ({kinds}). Retrieval ran for {retrieval.turns} replies, "
        f"missed its deadline {retrieval.deadline_misses} times, failed {retrieval.failures} times, and took "
        f"{retrieval.mean_ms:.1f} milliseconds on average."
    )
