"""Per-turn timings: one structured log line per turn (no user text in it) and Prometheus histograms.

The agent fills a :class:`TurnTimings` from LiveKit's ``ChatMessage.metrics`` (end of turn, transcription, LLM
time to first token, TTS time to first byte, end-to-end latency) and our retrieval time.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

logger = logging.getLogger("companion.turns")

_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class TurnTimings:
    """Seconds; None where the path has no such stage (typed text has no transcription)."""

    end_of_turn_delay: float | None = None
    transcription_delay: float | None = None
    retrieval: float | None = None
    retrieval_in_time: bool | None = None
    llm_ttft: float | None = None
    tts_ttfb: float | None = None
    e2e_latency: float | None = None


class TurnMetrics:
    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._histograms = {
            name: Histogram(f"companion_{name}_seconds", help_text, registry=self.registry, buckets=_BUCKETS)
            for name, help_text in (
                ("end_of_turn_delay", "End of speech to the decision that the user's turn ended"),
                ("transcription_delay", "End of speech to the final transcript"),
                ("retrieval", "Our memory retrieval for the turn"),
                ("llm_ttft", "LLM time to first token"),
                ("tts_ttfb", "TTS time to first byte"),
                ("e2e_latency", "End of the user's turn to the agent's first audio"),
            )
        }
        self._misses = Counter(
            "companion_retrieval_deadline_misses", "Turns answered without memories", registry=self.registry
        )
        self.turns = 0

    def record(self, timings: TurnTimings) -> None:
        self.turns += 1
        for name, histogram in self._histograms.items():
            value = getattr(timings, name)
            if value is not None:
                histogram.observe(value)
        if timings.retrieval_in_time is False:
            self._misses.inc()
        fields = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(timings).items()}
        logger.info("turn", extra={"turn": self.turns, **fields})
