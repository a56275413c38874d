"""ConversationService: the transcript of a session, its summary, and the opening of the next one.

Messages go to the write batcher as they are said (never awaited by the turn). The conversation's end goes
through it too, so that with the batcher's outbox a database that is away at session end loses neither: both land
on the next start. At the end of a session one LLM call writes a short summary and the threads left open ("the job interview on Friday"); the next session's opening
refers to one of them and to how long it has been, in words. A new user gets a first-time greeting that does not
pretend to know them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from core.errors import CompanionError, InvalidInputError, StorageUnavailableError
from core.validators import WriteGuard, clean_text
from infrastructure.database_batcher import DatabaseBatcher
from infrastructure.llm import TextModel
from infrastructure.storage import Conversation, ConversationEnd, Message, MessageWrite, Profile, Storage
from services.user_service import display_name

logger = logging.getLogger("companion.conversation")

SUMMARY_PROMPT = (
    "You keep notes for a companion who talks with one person. From the conversation below, write JSON: "
    '{"summary": "two or three sentences on what was talked about", "open_threads": ["short phrases for things '
    'left open that are worth asking about next time, such as the job interview on Friday"]}. At most three open '
    "threads, each under ten words, written so they fit after 'how did' or 'what about'. Only JSON."
)
MAX_TRANSCRIPT_CHARS = 12_000


class _Summary(BaseModel):
    summary: str = Field(min_length=1, max_length=2_000)
    open_threads: list[str] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Opening:
    kind: Literal["first_time", "returning"]
    text: str
    last_thread: str | None = None


def elapsed_in_words(delta: dt.timedelta) -> str:
    """How long ago, the way a person says it: "earlier today", "yesterday", "three days", "about two weeks"."""
    hours = delta.total_seconds() / 3600
    days = delta.days
    if hours < 12:
        return "earlier today"
    if days < 2:
        return "yesterday"
    if days < 7:
        return f"{_NUMBERS.get(days, str(days))} days"
    if days < 11:
        return "about a week"
    if days < 25:
        return f"about {_NUMBERS.get(round(days / 7), str(round(days / 7)))} weeks"
    if days < 45:
        return "about a month"
    if days < 350:
        months = min(11, round(days / 30))
        return f"about {_NUMBERS.get(months, str(months))} months"
    return "over a year" if days < 700 else f"about {_NUMBERS.get(round(days / 365), str(round(days / 365)))} years"


_NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten",
            11: "eleven"}  # fmt: skip


class ConversationService:
    def __init__(
        self,
        *,
        user_id: uuid.UUID,
        guard: WriteGuard,
        storage: Storage,
        batcher: DatabaseBatcher,
        llm: TextModel | None,
        agent_name: str = "Companion",
        conversation_id: uuid.UUID | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        write_timeout: float = 5.0,
        confirm_within: float = 1.0,
    ) -> None:
        self.user_id = user_id
        self.conversation_id = conversation_id or uuid.uuid4()
        self._guard = guard
        self._storage = storage
        self._batcher = batcher
        self._llm = llm
        self._agent_name = agent_name
        self._clock = clock
        self._write_timeout = write_timeout
        self._confirm_within = confirm_within  # with the outbox the end is kept: no need to wait long for the database
        self._transcript: list[tuple[str, str]] = []
        self._last_message_at: dt.datetime | None = None

    @property
    def transcript(self) -> list[tuple[str, str]]:
        return list(self._transcript)

    async def opening(self, profile: Profile | None) -> Opening:
        """The greeting for this session, built from the last finished conversation (no LLM call)."""
        name = display_name(profile)
        # Only finished conversations: a session where nothing was said has no summary and no threads.
        previous = [c for c in await self._storage.recent_conversations(self.user_id, limit=10)
                    if c.id != self.conversation_id and c.ended_at is not None]  # fmt: skip
        if not previous:
            hello = f"Hi {name}!" if name else "Hi there!"
            ask = "" if name else " What should I call you?"
            return Opening("first_time", f"{hello} I'm {self._agent_name}. It's lovely to meet you.{ask}")
        last = previous[0]
        since = elapsed_in_words(self._clock() - (last.ended_at or last.started_at))
        hello = f"Welcome back, {name}!" if name else "Welcome back!"
        when = "We talked earlier today." if since == "earlier today" else (
            "We talked yesterday." if since == "yesterday" else f"It's been {since}.")  # fmt: skip
        thread = last.open_threads[0] if last.open_threads else None
        follow_up = f" Last time you mentioned {thread}. How did that go?" if thread else " How have you been?"
        return Opening("returning", f"{hello} {when}{follow_up}", last_thread=thread)

    async def past(self, *, limit: int = 50) -> list[Conversation]:
        """The user's conversations, newest first, with their summaries and open threads."""
        return await self._storage.recent_conversations(self.user_id, limit=limit)

    async def messages(self, *, conversation_id: uuid.UUID | None = None, limit: int = 10_000) -> list[Message]:
        """The user's stored messages (of one conversation, if given), in the order they were said."""
        return await self._storage.recent_messages(self.user_id, conversation_id=conversation_id, limit=limit)

    async def start(self) -> Conversation | None:
        if not self._guard.can_write:
            return None
        return await self._storage.start_conversation(self.user_id, self.conversation_id, at=self._clock())

    def log_message(self, role: Literal["user", "assistant"], content: str) -> asyncio.Future[None] | None:
        """Keep the message for the summary and store it through the batcher; the turn does not wait, and no
        error of the log (a full queue, say) reaches it. A character no database takes is replaced, not refused."""
        content = clean_text(content).strip()
        if not content:
            return None
        self._transcript.append((role, content))
        if not self._guard.can_write:
            return None
        try:
            message = MessageWrite(
                uuid.uuid4(), self.conversation_id, self.user_id, role, content, self._message_time()
            )
            return self._batcher.append_message(message)
        except CompanionError as exc:
            logger.warning("message not logged", extra={"error": type(exc).__name__})
            return None

    def forget(self) -> None:
        """After forget-everything: nothing said so far may reach a summary; later messages start afresh."""
        self._transcript.clear()
        self.conversation_id = uuid.uuid4()

    def redact(self, rewrite: Callable[[str], str]) -> None:
        """Rewrite what this session keeps of its transcript (after a forget): the end-of-session summary, the
        extraction and the profile refresh read it."""
        self._transcript = [(role, rewrite(text)) for role, text in self._transcript]

    def _message_time(self) -> dt.datetime:
        """Strictly increasing within the session, so the stored order is the order said even when two messages
        share a clock tick."""
        at = self._clock()
        if self._last_message_at is not None and at <= self._last_message_at:
            at = self._last_message_at + dt.timedelta(microseconds=1)
        self._last_message_at = at
        return at

    async def finish(self, *, summary_within: float | None = None) -> Conversation | None:
        """At session end: summarise (one LLM call, given up after ``summary_within`` seconds) and record the
        conversation's end. A failed, late or unusable summary is logged and the end is recorded without one.

        The end goes through the batcher. With its outbox it is kept once fsynced there; a database that does not
        confirm within ``confirm_within`` gets it when it is back (or on the next start), and this returns None
        (nothing to read back yet). Without one, the database is given ``write_timeout``."""
        if not self._guard.can_write or not self._transcript:
            return None
        try:
            summary, threads = await asyncio.wait_for(self._summarise(), timeout=summary_within)
        except TimeoutError:
            logger.warning("conversation summary dropped", extra={"error": "TimeoutError"})
            summary, threads = None, []
        try:
            end = ConversationEnd(self.user_id, self.conversation_id, self._clock(), summary, tuple(threads))
        except InvalidInputError:  # a summary no database takes (NUL, lone surrogate): end without it
            logger.warning("conversation summary dropped", extra={"error": "InvalidInputError"})
            end = ConversationEnd(self.user_id, self.conversation_id, self._clock(), None, ())
        stored = self._batcher.finish_conversation(end)
        durable = self._batcher.durable_writes
        await self._batcher.durable()
        await self._batcher.flush(within=self._confirm_within if durable else self._write_timeout)
        if not stored.done():
            if durable:
                logger.warning("conversation end kept in the outbox until the database is back")
                return None
            raise StorageUnavailableError("the database is not answering; the conversation end is queued")
        await stored
        recent = await self._storage.recent_conversations(self.user_id, limit=10)
        return next((c for c in recent if c.id == self.conversation_id), None)

    async def _summarise(self) -> tuple[str | None, list[str]]:
        if self._llm is None:
            return None, []
        transcript = "\n".join(f"{role}: {text}" for role, text in self._transcript)[-MAX_TRANSCRIPT_CHARS:]
        try:
            raw = await self._llm.complete(system=SUMMARY_PROMPT, user=transcript, json_object=True, max_tokens=400)
            parsed = _Summary.model_validate(json.loads(raw))
        except (CompanionError, ValueError, ValidationError) as exc:
            logger.warning("conversation summary dropped", extra={"error": type(exc).__name__})
            return None, []
        threads = [" ".join(t.split()).rstrip(".?!") for t in parsed.open_threads if t.strip()][:3]
        return parsed.summary.strip(), threads
