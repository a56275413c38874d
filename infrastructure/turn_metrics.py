"""Per-turn timings: one structured log line per turn (no user text in it) and Prometheus histograms.

The agent fills a :class:`TurnTimings` from LiveKit's ``ChatMessage.metrics`` (end of turn, transcription, LLM
time to first token, TTS time to first byte, end-to-end latency) and our retrieval time.

The histograms are the process's (``infrastructure/metrics.py``), in prometheus-client's default registry, created
on first use (not at import). In a LiveKit job process started with ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client keeps them in files in
that directory, where the worker's metrics server (``infrastructure/metrics_server.py``) sums every process's.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from prometheus_client import CollectorRegistry

from infrastructure.metrics import Metrics

logger = logging.getLogger("companion.turns")


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


class TurnMetrics:
    """Records each turn: one log line, and an observation in each histogram that has a value for it.

    Without ``registry`` it records into the process-wide histograms (what the metrics server serves); a registry
    of the caller's own gets histograms of its own (tests read them without seeing other sessions' turns)."""

    def __init__(self, *, metrics: Metrics | None = None, registry: CollectorRegistry | None = None) -> None:
        if metrics is None:
            metrics = Metrics.process() if registry is None else Metrics.for_registry(registry)
        self.metrics = metrics
        self.registry = metrics.registry
        self.turns = 0

    def record(self, timings: TurnTimings) -> None:
        self.turns += 1
        m = self.metrics
        for name, histogram in m.turn_stages.items():
            value = getattr(timings, name)
            if value is not None:
                histogram.observe(value)
        if timings.retrieval_in_time is False:
            m.retrieval_deadline_misses.inc()
        if timings.retrieval_failed:
            m.retrieval_failures.inc()
        if timings.memory_source is not None:
            m.retrieval_turns.labels(source=timings.memory_source).inc()
        fields = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(timings).items()}
        logger.info("turn", extra={"turn": self.turns, **fields})
