"""SessionTurns: what happens around each turn of one conversation, in plain Python (no LiveKit).

The agent calls these hooks from LiveKit's events and applies what they decide to LiveKit's chat:

- :meth:`SessionTurns.catch_up` (from ``llm_node``, first): once per user message, what the user's other sessions
  changed since the last one (``Session.catch_up``), for the agent to apply before the turn's retrieval.
- :meth:`SessionTurns.memories_for` (from ``llm_node``): the turn's memories, found once per user message; a second
  generation in the same turn (after a tool call) reuses them.
- :meth:`SessionTurns.on_user_message`: the message goes to the transcript, its timings are kept for the turn's
  metrics line, and every ``refresh_every`` user turns the profile is refreshed in the background.
- :meth:`SessionTurns.on_reply`: the reply goes to the transcript; an answer to the user closes the turn (one
  metrics line); the reply is embedded for a next turn that points back to it; memory extraction runs over the
  turns said since the last run; and the history is kept within its token budget. It returns the summary to swap
  in, when one is ready: the swap (an edit of LiveKit's chat context) is the agent's.

Extraction is single-flight: one run at a time per session. A reply while one runs does not start another; it
asks for one more run, which starts when the current one ends and reads every turn said meanwhile, so a fast
conversation costs one extraction call at a time and loses no turn.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import CompanionError
from core.validators import WriteGuard
from infrastructure.background import BackgroundTasks
from infrastructure.database_batcher import DatabaseBatcher
from infrastructure.storage import Profile
from infrastructure.turn_metrics import TurnMetrics, TurnTimings
from services.context_budget import Compaction, ContextBudget, HistoryItem
from services.conversation_service import ConversationService
from services.memory_extraction import MemoryExtractor
from services.onboarding_service import OnboardingService
from services.profile_service import ProfileService
from services.rag_service import RagService, TurnContext
from services.turn_retrieval import RetrievalStats, TurnRetrieval
from services.user_memory import CatchUp
from services.user_service import UserService

logger = logging.getLogger("companion.session")

# The id of the summary message that replaces the oldest turns; the budget reads it back as the old summary.
SUMMARY_ID = "companion.history-summary."


@dataclass(frozen=True, slots=True)
class SummaryReady:
    """A summary to swap in: it replaces exactly the items ``plan`` read, as an assistant message ``id``."""

    plan: Compaction
    text: str
    id: str


@dataclass(slots=True)
class ExtractionStats:
    runs: int = 0  # extraction calls started
    coalesced: int = 0  # replies that asked while one ran, answered by the run after it


class SessionTurns:
    def __init__(
        self,
        *,
        user_id: uuid.UUID,
        guard: WriteGuard,
        conversations: ConversationService,
        profiles: ProfileService,
        extractor: MemoryExtractor,
        rag: RagService,
        retrieval: TurnRetrieval,
        budget: ContextBudget,
        tasks: BackgroundTasks,
        metrics: TurnMetrics,
        catch_up: Callable[[], Awaitable[CatchUp | None]] | None = None,
        extraction_window: int = 4,
        max_extraction_window: int = 12,
    ) -> None:
        if not 1 <= extraction_window <= max_extraction_window:
            raise ValueError("extraction_window must be from 1 to max_extraction_window")
        self._user_id = user_id
        self._guard = guard
        self._conversations = conversations
        self._profiles = profiles
        self._extractor = extractor
        self._rag = rag
        self._retrieval = retrieval
        self._budget = budget
        self._tasks = tasks
        self._metrics = metrics
        self._catch_up = catch_up  # None: a session of its own (a guest, a test), nothing to keep up with
        self._caught_up_for: str | None = None  # the user message the last catch-up ran for
        self._window = extraction_window  # messages an extraction reads at least (the last turn and the one before)
        self._max_window = max_extraction_window  # and at most, however many were said while the last one ran
        self._turn: tuple[str, TurnContext] | None = None  # (user message id, its memories)
        self._user_metrics: dict[str, Any] | None = None  # the open turn's user message timings
        self._summary: SummaryReady | None = None  # written in the background, waiting for the end of a reply
        self._extract_again = False
        self._extracted = 0  # transcript messages read by extractions so far
        self.extraction = ExtractionStats()

    # The user's message ----------------------------------------------------------------------------------------

    async def catch_up(self, message_id: str) -> CatchUp | None:
        """Once per user message (a second generation of the same turn gets None): what the user's other sessions
        changed, already applied to this session's memory; None when nothing did."""
        if self._catch_up is None or self._caught_up_for == message_id:
            return None
        caught = await self._catch_up()
        self._caught_up_for = message_id  # only now: a generation cancelled in it (LiveKit's preemptive one) ran none
        return caught

    async def memories_for(self, message_id: str, text: str, recent: Sequence[str] = ()) -> TurnContext:
        """The memories for the user message ``message_id``: searched once (under the retrieval deadline), then
        reused by every generation answering it."""
        if self._turn is not None and self._turn[0] == message_id:
            return self._turn[1]
        context = await self._retrieval.context(text, recent)
        self._turn = (message_id, context)
        return context

    def forget_turn_memories(self) -> None:
        """After a forget: the turn's memories were found before it, so the answer searches again."""
        self._turn = None

    def on_user_message(self, text: str, *, metrics: Mapping[str, Any]) -> None:
        self._conversations.log_message("user", text)
        self._user_metrics = dict(metrics)
        self._profiles.on_user_turn()

    # The agent's reply -----------------------------------------------------------------------------------------

    def on_reply(
        self, text: str, *, metrics: Mapping[str, Any], history: Callable[[], Sequence[HistoryItem]]
    ) -> SummaryReady | None:
        """After the agent said ``text`` (``history``: the chat as the budget reads it, built only when needed)."""
        self._conversations.log_message("assistant", text)
        if self._user_metrics is not None:  # an answer to the user (the greeting is not a turn)
            self._metrics.record(turn_timings(self._user_metrics, metrics, self._retrieval.stats))
            self._user_metrics = None
        # The next turn may point back to this reply: its vector is ready by then, computed while the user talks.
        self._tasks.spawn(self._rag.prepare(text), name=f"embed-reply:{self._user_id}")
        self._extract_soon()
        return self._keep_history_within_budget(history)

    # Extraction, single-flight -----------------------------------------------------------------------------------

    def _extract_soon(self) -> None:
        if not self._guard.can_write:
            return
        if self._tasks.running(self._extraction_name):
            self._extract_again = True  # the running one reads it when it ends: no second call at once
            self.extraction.coalesced += 1
            return
        self._extract_again = True
        self._tasks.spawn(self._extract_while_asked(), name=self._extraction_name)

    @property
    def _extraction_name(self) -> str:
        return f"extract:{self._user_id}"

    async def _extract_while_asked(self) -> None:
        while self._extract_again and self._guard.can_write:
            self._extract_again = False
            window = self._extraction_window()
            if window is None:  # asked for turns a run already read (it started after they were said)
                return
            self.extraction.runs += 1
            await self._extractor.extract(window)

    def _extraction_window(self) -> list[tuple[str, str]] | None:
        """The messages said since the last extraction, at least the last ``extraction_window`` (a turn needs the
        one before it to be understood), at most ``max_extraction_window``; None when none is new."""
        transcript = self._conversations.transcript
        self._extracted = min(self._extracted, len(transcript))  # a forget-everything empties the transcript
        unread = len(transcript) - self._extracted
        if unread == 0:
            return None
        self._extracted = len(transcript)
        return transcript[-min(max(self._window, unread), self._max_window) :]

    # History within budget ---------------------------------------------------------------------------------------

    def _keep_history_within_budget(self, history: Callable[[], Sequence[HistoryItem]]) -> SummaryReady | None:
        """At the end of each reply, when the agent is about to listen (no preemptive generation under way that a
        changed context would throw away): hand over the summary written since the last reply; otherwise, past the
        token budget, start writing the next one in the background."""
        if self._summary is not None:
            ready, self._summary = self._summary, None
            return ready  # the next reply plans on the swapped history
        name = f"history-summary:{self._user_id}"
        if self._tasks.running(name):
            return None
        plan = self._budget.plan(history())
        if plan is not None:
            self._tasks.spawn(self._summarise(plan), name=name)
        return None

    async def _summarise(self, plan: Compaction) -> None:
        try:
            text = await self._budget.summarise(plan)
        except CompanionError as exc:  # the history stays whole; the next reply tries again
            logger.warning("history summary failed; keeping the turns", extra={"error": type(exc).__name__})
            return
        self._summary = SummaryReady(plan=plan, text=text, id=f"{SUMMARY_ID}{self._budget.compactions}")


def turn_timings(user: Mapping[str, Any], assistant: Mapping[str, Any], retrieval: RetrievalStats) -> TurnTimings:
    """One turn's timings: LiveKit's (from its messages' ``metrics``) and our retrieval's."""
    return TurnTimings(
        end_of_turn_delay=user.get("end_of_turn_delay"),
        transcription_delay=user.get("transcription_delay"),
        retrieval=retrieval.last_ms / 1000 if retrieval.turns else None,
        retrieval_in_time=retrieval.last_in_time if retrieval.turns else None,
        retrieval_failed=retrieval.last_failed if retrieval.turns else None,
        memory_source=retrieval.last_source if retrieval.turns else None,
        llm_ttft=assistant.get("llm_node_ttft"),
        tts_ttfb=assistant.get("tts_node_ttfb"),
        e2e_latency=assistant.get("e2e_latency"),
    )


# The conversation's start and end -------------------------------------------------------------------------------


async def begin_conversation(
    *, guard: WriteGuard, onboarding: OnboardingService, users: UserService, conversations: ConversationService
) -> Profile | None:
    """Before the first turn: the app's onboarding answers (once per user), the profile row, the conversation row;
    returns the profile the agent starts with (the row ``ensure_profile_exists`` answers with: no second read)."""
    await onboarding.run()
    profile = await users.ensure_profile_exists() if guard.can_write else await users.get_profile()
    await conversations.start()
    return profile


async def end_conversation(
    *,
    guard: WriteGuard,
    batcher: DatabaseBatcher,
    conversations: ConversationService,
    profiles: ProfileService,
    flush_within: float,
    llm_budget: float,
) -> None:
    """At session end: the transcript is stored first (``flush_within``), before any LLM work; the conversation's
    summary and the profile refresh get ``llm_budget`` seconds each. What fails is logged, never raised."""
    try:
        await batcher.flush(within=flush_within)
        finished = await conversations.finish(summary_within=llm_budget)
        if finished is not None and guard.can_write:
            async with asyncio.timeout(llm_budget):
                await profiles.generate()
    except TimeoutError:
        logger.warning("profile refresh took too long at session end; skipped")
    except CompanionError as exc:
        logger.warning("session end work failed", extra={"error": type(exc).__name__})
