"""TurnRetrieval: the memories for one turn, under a deadline.

The reply is never late because of memory. When retrieval is not done within the deadline, the turn goes ahead
with the freshest context already computed for this conversation: the previous turn's, or, before any, the
session-start prefetch of the user's most important memories; never silently nothing. Memories forgotten since are
left out of both. When retrieval fails (the embedder, a bug) the turn goes ahead without memories. Which was used
is in :class:`RetrievalStats` and the turn's log line and metrics. The memories used have their access recorded
(through the batcher, off the turn's path).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rag_system import IndexedMemory
from services.rag_service import ContextSource, RagService, TurnContext
from services.user_memory import UserMemory

logger = logging.getLogger("companion.retrieval")

NO_MEMORIES = TurnContext(memories=(), text="", source="none")


@dataclass
class RetrievalStats:
    turns: int = 0
    deadline_misses: int = 0
    failures: int = 0
    last_ms: float = 0.0
    last_in_time: bool = True  # False: the last turn's retrieval missed its deadline
    last_failed: bool = False  # True: the last turn's retrieval failed (the embedder, say)
    last_source: ContextSource = "live"


class TurnRetrieval:
    def __init__(self, *, rag: RagService, memories: UserMemory, deadline: float, prefetch_size: int = 5) -> None:
        if deadline <= 0:
            raise ValueError("deadline must be positive")
        self._rag = rag
        self._memories = memories
        self.deadline = deadline  # seconds
        self._prefetch_size = prefetch_size
        self._previous: TurnContext | None = None  # the last live context that found something
        self._prefetched: list[IndexedMemory] = []
        self.stats = RetrievalStats()

    def prefetch(self) -> None:
        """At session start, once the index is loaded: the context a turn gets when its own search is late and
        none before it found anything."""
        self._prefetched = self._rag.most_important(k=self._prefetch_size)

    async def context(self, text: str, recent_turns: Sequence[str] = ()) -> TurnContext:
        started = time.perf_counter()
        self.stats.turns += 1
        self.stats.last_in_time, self.stats.last_failed = True, False
        try:
            context = await asyncio.wait_for(self._rag.context_for_turn(text, recent_turns), timeout=self.deadline)
            if context.memories:
                self._previous = context
        except TimeoutError:
            self.stats.deadline_misses += 1
            self.stats.last_in_time = False
            context = self._freshest()
            logger.warning("retrieval missed its deadline; using an earlier context", extra={"source": context.source})
        except Exception as exc:
            self.stats.failures += 1
            self.stats.last_failed = True
            logger.warning("retrieval failed; replying without memories", extra={"error": type(exc).__name__})
            context = NO_MEMORIES
        self.stats.last_ms = (time.perf_counter() - started) * 1000
        self.stats.last_source = context.source
        self._memories.record_access(context.memories)
        return context

    def _freshest(self) -> TurnContext:
        """The previous turn's memories, else the user's most important ones; either without what was forgotten
        since (the index is the truth)."""
        for earlier, source in ((self._previous.memories if self._previous else (), "previous"),
                                (self._prefetched, "prefetch")):  # fmt: skip
            kept = [m for m in earlier if self._memories.holds(m)]
            if kept:
                return self._rag.context_of(kept, source=source)  # type: ignore[arg-type]
        return NO_MEMORIES
