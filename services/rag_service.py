"""RagService: the one call the agent makes per turn, and the explicit recall a tool uses.

``context_for_turn`` reads the turn (its time phrase, whether it points back to the last few turns), embeds its
topic, searches the user's in-process index and returns the memories the relevance gate lets through, formatted
within a token budget. One text is embedded per turn: when the turn points back, the earlier turns shape the query
with the vectors computed when they were said (each user turn in its own turn, each reply by :meth:`prepare`
after it was said), never with a second embedding on the turn's path. The only possible remote call is that one
embedding, when embeddings are remote.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from core.errors import InvalidInputError
from core.validators import clean_text
from infrastructure.embeddings import CachedEmbedder
from rag_system import IndexedMemory, Retrieved, SearchResult, analyze
from services.persona import quoted
from services.user_memory import UserMemory

logger = logging.getLogger("companion.rag")

MAX_QUERY_CHARS = 2_000  # a turn longer than this is searched by its beginning: the embedder reads 256 tokens anyway
MAX_RECALL_CHARS = 500  # what the recall tool may ask for: a topic, not a document
HEADER = "What you remember about the user (use it when it helps; never recite it):"


ContextSource = Literal["live", "previous", "prefetch", "none"]


@dataclass(frozen=True, slots=True)
class TurnContext:
    """The memories for one turn and their text for the model. ``text`` is empty when nothing is relevant.
    ``source``: found for this turn (``live``), or, when that was late or failed, the previous turn's or the
    session-start prefetch (see :class:`services.turn_retrieval.TurnRetrieval`)."""

    memories: tuple[IndexedMemory, ...]
    text: str
    source: ContextSource = "live"


def estimate_tokens(text: str) -> int:
    """About 4 characters a token for English: good enough for a budget, free of a tokenizer."""
    return max(1, (len(text) + 3) // 4)


def format_memories(memories: Sequence[IndexedMemory], *, token_budget: int, now: dt.datetime) -> str:
    """Best first, one line each, until the budget is spent; a line that does not fit is left out whole."""
    lines = [HEADER]
    used = estimate_tokens(HEADER)
    for memory in memories:
        line = f"- {quoted(memory.value)} ({memory.category.lower()}, {_age(now - memory.updated_at)})"
        cost = estimate_tokens(line)
        if used + cost > token_budget:
            continue
        lines.append(line)
        used += cost
    return "\n".join(lines) if len(lines) > 1 else ""


class RagService:
    def __init__(
        self,
        *,
        memory: UserMemory,
        embedder: CachedEmbedder,
        token_budget: int = 300,
        history_turns: int = 3,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        timezone: dt.tzinfo | None = None,
    ) -> None:
        self._memory = memory  # searched with its ranking and gate, the ones forget uses too
        self._embedder = embedder
        self._token_budget = token_budget
        self._history_turns = history_turns
        self._clock = clock
        self._timezone = timezone  # the user's: "yesterday" starts at their midnight

    async def search(self, text: str, recent_turns: Sequence[str] = (), *, k: int = 5) -> SearchResult:
        """The ranked memories for a turn and the gate's decision; ``.memories`` is what may be injected."""
        now = self._clock() if self._timezone is None else self._clock().astimezone(self._timezone)
        text = clean_text(text[:MAX_QUERY_CHARS])
        recent = (
            [clean_text(t[:MAX_QUERY_CHARS]) for t in recent_turns][-self._history_turns :]
            if self._history_turns > 0
            else []
        )
        query = analyze(text, recent, now=now, analyzer=self._memory.analyzer,
                        history_term_weight=self._memory.ranking.history_term_weight)  # fmt: skip
        [vector] = await self._embedder.embed([query.topic])
        history = [v for v in self._embedder.cached(query.history) if v is not None]
        return self._memory.search(query, vector, now=now, k=k, history_vectors=history)

    async def prepare(self, turn: str) -> None:
        """Embed a turn that was said without being searched (the agent's reply) once it is said, off the next
        turn's path, so that a next turn pointing back to it finds its vector cached."""
        try:
            await self._embedder.embed([clean_text(turn[:MAX_QUERY_CHARS])])
        except Exception as exc:
            logger.info("a reply was not embedded", extra={"error": type(exc).__name__})

    async def context_for_turn(self, text: str, recent_turns: Sequence[str] = (), *, k: int = 5) -> TurnContext:
        found = await self.search(text, recent_turns, k=k)
        return self.context_of([r.memory for r in found.memories])

    def context_of(self, memories: Sequence[IndexedMemory], source: ContextSource = "live") -> TurnContext:
        text = format_memories(memories, token_budget=self._token_budget, now=self._clock())
        return TurnContext(memories=tuple(memories), text=text, source=source)

    def most_important(self, *, k: int = 5) -> list[IndexedMemory]:
        """The user's most important memories, newest first among equals: what a turn gets when its own search
        is late and nothing was found before it."""
        return self._memory.most_important(k)

    async def recall(self, query: str, *, k: int = 5) -> list[Retrieved]:
        """Explicit recall (the ``recall`` tool): the same ranking and gate, without conversation history."""
        if len(query) > MAX_RECALL_CHARS:
            raise InvalidInputError(f"say what to recall in fewer than {MAX_RECALL_CHARS} characters")
        return list((await self.search(query, (), k=k)).memories)


def _age(delta: dt.timedelta) -> str:
    days = delta.days
    if days < 1:
        return "today"
    if days < 2:
        return "yesterday"
    if days < 14:
        return f"{days} days ago"
    if days < 60:
        return f"{days // 7} weeks ago"
    if days < 730:
        return f"{days // 30} months ago"
    return f"{days // 365} years ago"
