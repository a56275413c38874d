"""TurnRetrieval: the memories for one turn, under a deadline, or none.

The reply is never late because of memory: if retrieval is not done within the deadline, or fails in any way (the
embedder, a bug), the turn goes ahead with an empty :class:`TurnContext` and :class:`RetrievalStats` counts it. The memories that were used have
their access recorded (through the batcher, off the turn's path).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from services.memory_service import MemoryService
from services.rag_service import RagService, TurnContext

logger = logging.getLogger("companion.retrieval")

NO_MEMORIES = TurnContext(retrieved=(), text="")


@dataclass
class RetrievalStats:
    turns: int = 0
    deadline_misses: int = 0
    failures: int = 0
    last_ms: float = 0.0
    last_in_time: bool = True  # False: the last turn's retrieval missed its deadline
    last_failed: bool = False  # True: the last turn's retrieval failed (the embedder, say)


class TurnRetrieval:
    def __init__(self, *, rag: RagService, memories: MemoryService, deadline: float) -> None:
        if deadline <= 0:
            raise ValueError("deadline must be positive")
        self._rag = rag
        self._memories = memories
        self.deadline = deadline  # seconds
        self.stats = RetrievalStats()

    async def context(self, text: str, recent_turns: Sequence[str] = ()) -> TurnContext:
        started = time.perf_counter()
        self.stats.turns += 1
        self.stats.last_in_time, self.stats.last_failed = True, False
        try:
            context = await asyncio.wait_for(self._rag.context_for_turn(text, recent_turns), timeout=self.deadline)
        except TimeoutError:
            self.stats.deadline_misses += 1
            self.stats.last_in_time = False
            logger.warning("retrieval missed its deadline; replying without memories")
            context = NO_MEMORIES
        except Exception as exc:
            self.stats.failures += 1
            self.stats.last_failed = True
            logger.warning("retrieval failed; replying without memories", extra={"error": type(exc).__name__})
            context = NO_MEMORIES
        self.stats.last_ms = (time.perf_counter() - started) * 1000
        self._memories.record_access([r.memory for r in context.retrieved])
        return context
