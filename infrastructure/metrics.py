"""The one metrics system: Prometheus instruments for the batcher, the cache, storage, the clients and retrieval.

Components record into a :class:`Metrics` where the event happens; ``/metrics`` serves the same instruments, and the
health tools read them back through the ``*Reading`` classes below, so what the agent says equals what is scraped.

Instruments are per process: LiveKit runs one job process per session, and with ``PROMETHEUS_MULTIPROC_DIR`` set
each process writes its values to files that the worker's ``/metrics`` sums (gauges too: ``livesum`` adds the
live processes' queue depths, ``livemin`` says the cache is down when any process is on its fallback). A reading
is this process's own view. Labels form closed sets (a lane, a backend, an operation name, true/false): never a
user id, a key or any text.

``Metrics.process()`` is the process's default registry, created on first use (never at import); a test or a
benchmark passes ``Metrics(CollectorRegistry())`` to see only what it did.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Seconds. Turn stages: tens of milliseconds to seconds. Cache and storage round trips: tens of microseconds up.
TURN_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_TURN_STAGES = (
    ("end_of_turn_delay", "End of speech to the decision that the user's turn ended"),
    ("transcription_delay", "End of speech to the final transcript"),
    ("retrieval", "Our memory retrieval for the turn"),
    ("llm_ttft", "LLM time to first token"),
    ("tts_ttfb", "TTS time to first byte"),
    ("e2e_latency", "End of the user's turn to the agent's first audio"),
)


class Metrics:
    """Every instrument of one registry. Build it once per registry (:meth:`for_registry` does)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = self.registry = registry
        # Turns (infrastructure/turn_metrics.py records them).
        self.turn_stages = {
            name: Histogram(f"companion_{name}_seconds", text, registry=r, buckets=TURN_BUCKETS)
            for name, text in _TURN_STAGES
        }
        self.retrieval_deadline_misses = Counter(
            "companion_retrieval_deadline_misses", "Turns answered without memories: retrieval was late", registry=r
        )
        self.retrieval_failures = Counter(
            "companion_retrieval_failures", "Turns answered without memories: retrieval failed", registry=r
        )
        self.retrieval_turns = Counter(
            "companion_retrieval_turns",
            "Turns by where their memories came from: live, previous or prefetch (this turn's search was late), none",
            ["source"],
            registry=r,
        )
        # Sessions of one user keeping up with each other (services/container.py ``Session.catch_up``), per turn.
        self.catch_up_seconds = Histogram(
            "companion_catch_up_seconds", "Checking (and applying) what the user's other sessions changed, per turn",
            registry=r, buckets=FAST_BUCKETS,
        )  # fmt: skip
        self.catch_ups = Counter(
            "companion_catch_ups",
            "Turn-start checks by outcome: unchanged, applied (another session changed something), failed (the turn "
            "went on with what the session held)",
            ["outcome"],
            registry=r,
        )
        # The write batcher.
        self.batcher_queue_depth = Gauge(
            "companion_batcher_queue_depth",
            "Writes accepted and not yet stored",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batcher_outbox_rows = Gauge(
            "companion_batcher_outbox_rows", "Writes kept in the local outbox until the database confirms them",
            registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.batcher_flush_seconds = Histogram(
            "companion_batcher_flush_seconds", "A batch from its first attempt to stored, retries included", ["lane"],
            registry=r, buckets=FLUSH_BUCKETS,
        )  # fmt: skip
        self.batcher_writes = Counter("companion_batcher_writes", "Writes accepted", ["lane"], registry=r)
        self.batcher_statements = Counter(
            "companion_batcher_statements", "Statements that stored a batch", ["lane"], registry=r
        )
        self.batcher_rows = Counter("companion_batcher_rows_written", "Rows stored", ["lane"], registry=r)
        self.batcher_merged = Counter(
            "companion_batcher_merged", "Writes merged into a pending write of the same row", registry=r
        )
        self.batcher_failures = Counter(
            "companion_batcher_failures", "Writes that failed for good", ["lane", "retryable"], registry=r
        )
        self.batcher_retries = Counter(
            "companion_batcher_retries", "Batch attempts retried after a retryable error", ["lane"], registry=r
        )
        self.batcher_rejected = Counter(
            "companion_batcher_rejected", "Writes refused when offered", ["reason"], registry=r
        )
        self.batcher_replayed = Counter(
            "companion_batcher_replayed", "Writes found in the outbox at start and queued again", registry=r
        )
        self.batcher_dropped_forgotten = Counter(
            "companion_batcher_dropped_as_forgotten", "Replayed writes older than their user's latest forget",
            registry=r,
        )  # fmt: skip
        self.batcher_kept = Counter(
            "companion_batcher_kept_for_next_start", "Writes the database did not take by close; the outbox keeps them",
            registry=r,
        )  # fmt: skip
        # The cache.
        self.cache_hits = Counter("companion_cache_hits", "Cache reads that found a value", ["backend"], registry=r)
        self.cache_misses = Counter("companion_cache_misses", "Cache reads that found nothing", ["backend"], registry=r)
        self.cache_seconds = Histogram(
            "companion_cache_operation_seconds", "One cache operation", ["backend", "operation"], registry=r,
            buckets=FAST_BUCKETS,
        )  # fmt: skip
        self.cache_errors = Counter(
            "companion_cache_errors", "Cache operations that failed", ["backend", "retryable"], registry=r
        )
        self.cache_fallbacks = Counter(
            "companion_cache_fallbacks", "Switches from Redis to the in-process cache", registry=r
        )
        self.cache_recoveries = Counter(
            "companion_cache_recoveries", "Switches back to Redis once it answered a probe write", registry=r
        )
        self.cache_primary_available = Gauge(
            "companion_cache_primary_available", "1 while Redis serves the cache, 0 while the in-process cache does",
            registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        # Storage.
        self.storage_errors = Counter(
            "companion_storage_errors", "Storage calls that failed", ["backend", "operation", "retryable"], registry=r
        )
        # The process's clients (a health check sets these).
        self.client_up = Gauge(
            "companion_client_up", "1 when the client's last health check passed", ["client"], registry=r,
            multiprocess_mode="livemin",
        )  # fmt: skip
        self.client_connections = Gauge(
            "companion_client_connections", "Connections the client's own pool holds, at the last health check",
            ["client", "state"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip
        self.client_check_failures = Counter(
            "companion_client_check_failures", "Health checks that failed", ["client"], registry=r
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> Metrics:
        """The instruments of ``registry``: made on first use, the same object after (a registry refuses two)."""
        with _LOCK:
            metrics = _BY_REGISTRY.get(registry)
            if metrics is None:
                metrics = _BY_REGISTRY[registry] = cls(registry)
            return metrics

    @classmethod
    def process(cls) -> Metrics:
        """The process-wide instruments, served by ``/metrics``."""
        return cls.for_registry(REGISTRY)

    # Reading back -----------------------------------------------------------------------------------------

    def value(self, name: str, **labels: str) -> float:
        """One sample as ``/metrics`` shows it (0 when it was never recorded)."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels``, over every other label."""
        return sum(s.value for s in self._samples(name) if labels.items() <= s.labels.items())

    def present(self, name: str, **labels: str) -> bool:
        return any(labels.items() <= s.labels.items() for s in self._samples(name))

    def label_values(self, name: str, label: str) -> list[str]:
        return sorted({s.labels[label] for s in self._samples(name) if label in s.labels})

    def _samples(self, name: str) -> Iterable:
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == name:
                    yield sample


_LOCK = threading.Lock()
_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, Metrics] = weakref.WeakKeyDictionary()


def flag(value: bool) -> str:
    """A boolean label value."""
    return "true" if value else "false"


def mean(metrics: Metrics, histogram: str, **labels: str) -> float:
    """A histogram's mean, from its ``_sum`` and ``_count`` (0 when empty)."""
    count = metrics.total(f"{histogram}_count", **labels)
    return metrics.total(f"{histogram}_sum", **labels) / count if count else 0.0


# Readings: what the health tools say, read from the instruments --------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchReading:
    accepted: int
    statements: int
    rows_written: int
    merged: int
    failures: int
    retries: int
    rejected: int
    queue_depth: int
    outbox_rows: int
    flush_mean_ms: float
    replayed: int
    dropped_as_forgotten: int
    kept_for_next_start: int

    @property
    def roundtrip_saving(self) -> float:
        """The share of round trips batching saved: 1 - statements / writes."""
        return max(0.0, 1.0 - self.statements / self.accepted) if self.accepted else 0.0

    @classmethod
    def read(cls, metrics: Metrics) -> BatchReading:
        t = metrics.total
        return cls(
            accepted=int(t("companion_batcher_writes_total")),
            statements=int(t("companion_batcher_statements_total")),
            rows_written=int(t("companion_batcher_rows_written_total")),
            merged=int(t("companion_batcher_merged_total")),
            failures=int(t("companion_batcher_failures_total")),
            retries=int(t("companion_batcher_retries_total")),
            rejected=int(t("companion_batcher_rejected_total")),
            queue_depth=int(t("companion_batcher_queue_depth")),
            outbox_rows=int(t("companion_batcher_outbox_rows")),
            flush_mean_ms=mean(metrics, "companion_batcher_flush_seconds") * 1000,
            replayed=int(t("companion_batcher_replayed_total")),
            dropped_as_forgotten=int(t("companion_batcher_dropped_as_forgotten_total")),
            kept_for_next_start=int(t("companion_batcher_kept_for_next_start_total")),
        )


@dataclass(frozen=True, slots=True)
class CacheReading:
    mode: str  # redis, or memory (the in-process cache: Redis is away or not configured)
    hits: int
    misses: int
    errors: int
    fallbacks: int
    recoveries: int
    mean_ms: float

    @property
    def hit_rate(self) -> float:
        return self.hits / (self.hits + self.misses) if self.hits + self.misses else 0.0

    @classmethod
    def read(cls, metrics: Metrics) -> CacheReading:
        t = metrics.total
        on_redis = metrics.value("companion_cache_primary_available") == 1.0
        return cls(
            mode="redis" if on_redis else "memory",
            hits=int(t("companion_cache_hits_total")),
            misses=int(t("companion_cache_misses_total")),
            errors=int(t("companion_cache_errors_total")),
            fallbacks=int(t("companion_cache_fallbacks_total")),
            recoveries=int(t("companion_cache_recoveries_total")),
            mean_ms=mean(metrics, "companion_cache_operation_seconds") * 1000,
        )


@dataclass(frozen=True, slots=True)
class RetrievalReading:
    turns: int
    deadline_misses: int
    failures: int
    mean_ms: float

    @classmethod
    def read(cls, metrics: Metrics) -> RetrievalReading:
        t = metrics.total
        return cls(
            turns=int(t("companion_retrieval_turns_total")),
            deadline_misses=int(t("companion_retrieval_deadline_misses_total")),
            failures=int(t("companion_retrieval_failures_total")),
            mean_ms=mean(metrics, "companion_retrieval_seconds") * 1000,
        )


@dataclass(frozen=True, slots=True)
class ClientReading:
    name: str
    up: bool
    in_use: int | None  # None: the library does not say
    idle: int | None
    check_failures: int

    @classmethod
    def read_all(cls, metrics: Metrics) -> list[ClientReading]:
        readings = []
        for name in metrics.label_values("companion_client_up", "client"):
            has_pool = metrics.present("companion_client_connections", client=name)
            readings.append(
                cls(
                    name=name,
                    up=metrics.value("companion_client_up", client=name) == 1.0,
                    in_use=int(metrics.value("companion_client_connections", client=name, state="in_use"))
                    if has_pool
                    else None,
                    idle=int(metrics.value("companion_client_connections", client=name, state="idle"))
                    if has_pool
                    else None,
                    check_failures=int(metrics.value("companion_client_check_failures_total", client=name)),
                )
            )
        return readings


@dataclass(frozen=True, slots=True)
class StorageReading:
    errors: int
    retryable_errors: int

    @classmethod
    def read(cls, metrics: Metrics) -> StorageReading:
        return cls(
            errors=int(metrics.total("companion_storage_errors_total")),
            retryable_errors=int(metrics.total("companion_storage_errors_total", retryable="true")),
        )
