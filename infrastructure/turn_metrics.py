"""Per-turn timings: one structured log line per turn (no user text in it) and Prometheus histograms.

The agent fills a :class:`TurnTimings` from LiveKit's ``ChatMessage.metrics`` (end of turn, transcription, LLM
time to first token, TTS time to first byte, end-to-end latency) and our retrieval time.

The histograms are process-wide, in prometheus-client's default registry, created on first use (not at import).
In a LiveKit job process started with ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client keeps them in files in
that directory, where the worker's metrics server (``infrastructure/metrics_server.py``) sums every process's.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

logger = logging.getLogger("companion.turns")

_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class TurnTimings:
    """Seconds; None where the path has no such stage (typed text has no transcription)."""

    end_of_turn_delay: float | None = None
    transcription_delay: float | None = None
    retrieval: float | None = None
    retrieval_in_time: bool | None = None
    retrieval_failed: bool | None = None
    memory_source: str | None = None  # live, previous (the last turn's: this one's was late), prefetch or none
    llm_ttft: float | None = None
    tts_ttfb: float | None = None
    e2e_latency: float | None = None


@dataclass(frozen=True, slots=True)
class _Instruments:
    histograms: dict[str, Histogram]
    deadline_misses: Counter
    failures: Counter
    turns: Counter


def _instruments(registry: CollectorRegistry) -> _Instruments:
    histograms = {
        name: Histogram(f"companion_{name}_seconds", help_text, registry=registry, buckets=_BUCKETS)
        for name, help_text in (
            ("end_of_turn_delay", "End of speech to the decision that the user's turn ended"),
            ("transcription_delay", "End of speech to the final transcript"),
            ("retrieval", "Our memory retrieval for the turn"),
            ("llm_ttft", "LLM time to first token"),
            ("tts_ttfb", "TTS time to first byte"),
            ("e2e_latency", "End of the user's turn to the agent's first audio"),
        )
    }
    misses = Counter(
        "companion_retrieval_deadline_misses", "Turns answered without memories: retrieval was late", registry=registry
    )
    failures = Counter(
        "companion_retrieval_failures", "Turns answered without memories: retrieval failed", registry=registry
    )
    turns = Counter(
        "companion_retrieval_turns",
        "Turns by where their memories came from: live, previous or prefetch (this turn's search was late), none",
        ["source"],
        registry=registry,
    )
    return _Instruments(histograms=histograms, deadline_misses=misses, failures=failures, turns=turns)


@functools.cache
def _process_instruments() -> _Instruments:
    return _instruments(REGISTRY)


class TurnMetrics:
    """Records each turn: one log line, and an observation in each histogram that has a value for it.

    Without ``registry`` it records into the process-wide histograms (what the metrics server serves); a registry
    of the caller's own gets histograms of its own (tests read them without seeing other sessions' turns)."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or REGISTRY
        self._instruments = _process_instruments() if registry is None else _instruments(registry)
        self.turns = 0

    def record(self, timings: TurnTimings) -> None:
        self.turns += 1
        for name, histogram in self._instruments.histograms.items():
            value = getattr(timings, name)
            if value is not None:
                histogram.observe(value)
        if timings.retrieval_in_time is False:
            self._instruments.deadline_misses.inc()
        if timings.retrieval_failed:
            self._instruments.failures.inc()
        if timings.memory_source is not None:
            self._instruments.turns.labels(source=timings.memory_source).inc()
        fields = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(timings).items()}
        logger.info("turn", extra={"turn": self.turns, **fields})
