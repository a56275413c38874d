"""RagService: the one call the agent makes per turn, and the explicit recall a tool uses.

``context_for_turn`` reads the turn (its time phrase, whether it points back to the last few turns), embeds its
topic (and, when it points back, the earlier turns, which the embedding cache usually holds already), searches the
user's in-process index and returns the memories the relevance gate lets through, formatted within a token
budget. The only possible remote call is the query embedding, when embeddings are remote.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.errors import InvalidInputError
from core.validators import clean_text
from infrastructure.embeddings import Embedder
from rag_system import GateParams, MemoryIndex, RankingParams, Retrieved, SearchResult, analyze
from services.persona import quoted

MAX_QUERY_CHARS = 2_000  # a turn longer than this is searched by its beginning: the embedder reads 256 tokens anyway
MAX_RECALL_CHARS = 500  # what the recall tool may ask for: a topic, not a document
HEADER = "What you remember about the user (use it when it helps; never recite it):"


@dataclass(frozen=True, slots=True)
class TurnContext:
    """The memories for one turn and their text for the model. ``text`` is empty when nothing is relevant."""

    retrieved: tuple[Retrieved, ...]
    text: str


def estimate_tokens(text: str) -> int:
    """About 4 characters a token for English: good enough for a budget, free of a tokenizer."""
    return max(1, (len(text) + 3) // 4)


def format_memories(retrieved: Sequence[Retrieved], *, token_budget: int, now: dt.datetime) -> str:
    """Best first, one line each, until the budget is spent; a line that does not fit is left out whole."""
    lines = [HEADER]
    used = estimate_tokens(HEADER)
    for item in retrieved:
        memory = item.memory
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
        index: MemoryIndex,
        embedder: Embedder,
        params: RankingParams | None = None,
        gate: GateParams | None = None,
        token_budget: int = 300,
        history_turns: int = 3,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        timezone: dt.tzinfo | None = None,
    ) -> None:
        self._index = index
        self._embedder = embedder
        self._params = params or RankingParams()
        self._gate = gate or GateParams()
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
        query = analyze(text, recent, now=now, analyzer=self._index.analyzer,
                        history_term_weight=self._params.history_term_weight)  # fmt: skip
        vectors = await self._embedder.embed([query.topic, *query.history])
        return self._index.search(query, vectors[0], now=now, k=k, history_vectors=list(vectors[1:]),
                                  params=self._params, gate=self._gate)  # fmt: skip

    async def context_for_turn(self, text: str, recent_turns: Sequence[str] = (), *, k: int = 5) -> TurnContext:
        found = await self.search(text, recent_turns, k=k)
        return TurnContext(
            retrieved=found.memories,
            text=format_memories(found.memories, token_budget=self._token_budget, now=self._clock()),
        )

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
