"""ContextBudget: keeps a long conversation's chat history within a token budget by summarising its oldest turns.

The agent hands over its history as plain :class:`HistoryItem` values after each reply. While the history fits,
:meth:`ContextBudget.plan` returns None. Past the budget it picks the oldest items to fold: whole turns (a cut is
only ever made before a user message, and never between a tool call and its output, even one that arrived after
the user spoke again), as many as it takes to bring what
stays down to ``keep_ratio`` of the budget, and never the last ``keep_user_turns`` turns. A summary written
earlier is the oldest item, so it is folded into the next one: one rolling summary, never a pile of them.

:meth:`ContextBudget.summarise` writes the summary with the LLM, off the turn's path: the agent runs it as a
background task and swaps the summary in at the end of the next reply, as an assistant message. If it fails, the
history stays whole and the next reply tries again: old turns are summarised or kept, never silently dropped.
Room for the summary (``summary_reserve``) is kept, so that the next reply does not have to fold again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from infrastructure.llm import TextModel
from services.rag_service import estimate_tokens

HISTORY_SUMMARY_PROMPT = (
    "You keep the running summary of a conversation between a companion and the user, so the companion can "
    "continue it naturally. You get the summary so far (if any) and the turns that follow it. Write one updated "
    "summary of at most 150 words, in plain prose: what was talked about, what the user shared, feels or plans, "
    "what the companion promised or asked, and what was left open. Never invent. Answer with the summary only."
)
SUMMARY_HEADER = "Earlier in this conversation (summarised):"
MAX_SUMMARY_CHARS = 1_200
SUMMARY_RESERVE = estimate_tokens(SUMMARY_HEADER + " " + "x" * MAX_SUMMARY_CHARS) + 4

Role = Literal["user", "assistant", "tool", "summary"]


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One item of the chat history as the budget sees it: a message, a tool call or its output, or a summary."""

    id: str
    role: Role
    text: str
    call_id: str | None = None  # a tool call and its output share one; they are folded or kept together

    @property
    def tokens(self) -> int:
        return estimate_tokens(self.text) + 4  # a message's own framing


@dataclass(frozen=True, slots=True)
class Compaction:
    """The items to replace with one summary (oldest first, a contiguous run from the start of the history)."""

    fold: tuple[HistoryItem, ...]
    history_tokens: int  # the whole history's estimate when the plan was made

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(item.id for item in self.fold)


class ContextBudget:
    def __init__(
        self,
        *,
        llm: TextModel,
        max_tokens: int,
        keep_ratio: float = 0.5,
        keep_user_turns: int = 2,
        summary_reserve: int = SUMMARY_RESERVE,
    ) -> None:
        if max_tokens < 100:
            raise ValueError("max_tokens must be at least 100")
        if not 0.1 <= keep_ratio <= 0.9:
            raise ValueError("keep_ratio must be between 0.1 and 0.9")
        if keep_user_turns < 1:
            raise ValueError("keep_user_turns must be at least 1")
        self._llm = llm
        self.max_tokens = max_tokens
        # The summary will sit in front of what is kept: without room for it, every reply would fold again.
        self._keep_tokens = max(0, int(max_tokens * keep_ratio) - summary_reserve)
        self._keep_user_turns = keep_user_turns
        self.compactions = 0

    def plan(self, history: Sequence[HistoryItem]) -> Compaction | None:
        """What to fold now, or None while the history fits (or nothing can be folded without the last turns)."""
        total = sum(item.tokens for item in history)
        if total <= self.max_tokens:
            return None
        user_positions = [i for i, item in enumerate(history) if item.role == "user"]
        if len(user_positions) <= self._keep_user_turns:
            return None
        latest_cut = user_positions[-self._keep_user_turns]  # the kept turns start here at the latest
        cut, remaining = None, total
        for position in user_positions[1:]:
            if position > latest_cut:
                break
            if _separates_a_call(history, position):  # an output that arrived after the user spoke again
                continue
            cut = position
            remaining = sum(item.tokens for item in history[position:])
            if remaining <= self._keep_tokens:
                break
        if cut is None:
            return None
        return Compaction(fold=tuple(history[:cut]), history_tokens=total)

    async def summarise(self, compaction: Compaction) -> str:
        """The rolling summary of the folded items, with the header the agent puts in front of the history."""
        earlier = [item.text.removeprefix(SUMMARY_HEADER).strip() for item in compaction.fold if item.role == "summary"]
        turns = "\n".join(f"{item.role}: {item.text}" for item in compaction.fold if item.role != "summary")
        prompt = f"Summary so far:\n{earlier[-1] if earlier else '(none)'}\n\nTurns that follow it:\n{turns}"
        text = " ".join((await self._llm.complete(system=HISTORY_SUMMARY_PROMPT, user=prompt, max_tokens=300)).split())
        if len(text) > MAX_SUMMARY_CHARS:
            text = text[:MAX_SUMMARY_CHARS].rsplit(" ", 1)[0]
        self.compactions += 1
        return f"{SUMMARY_HEADER} {text}"


def _separates_a_call(history: Sequence[HistoryItem], position: int) -> bool:
    before = {item.call_id for item in history[:position] if item.call_id}
    return any(item.call_id in before for item in history[position:] if item.call_id)
