"""ForgettingService: forgetting, end to end.

``forget("my PIN")`` deletes the matching memories and then takes them out of everything that could bring them
back into a prompt: the written profile (its sentences that mention them are dropped), the summaries and open
threads of past conversations, the stored messages (each mentioning sentence becomes ``[forgotten]``: the record
keeps that something was said, not what), this session's transcript (the end-of-session summary and the
extraction read it), and, through :meth:`scrub`, every later LLM request of the live session. Which sentence
"mentions" a memory is decided by :mod:`services.redaction`.

When no memory matches, :meth:`forget_said` takes what the user describes out of this conversation only (its
transcript and stored messages): a description is vaguer than a memory and would redact too much of the past.

``forget_everything()`` erases every row of the user and ends the session's memory: nothing said afterwards in this
session is stored.

Other live sessions of the user (any worker) learn of a forget at the start of their next turn
(:meth:`services.container.Session.catch_up`): the memory leaves their index, and :meth:`forgotten_elsewhere` keeps
it out of their chat, transcript and stored messages the same way. After an erasure they store nothing more, and
the writes they still queue are dropped (:meth:`erased_elsewhere`). What tells them, a tombstone holding a hash of
the forgotten memory's key, is pruned after ``TOMBSTONE_RETENTION_HOURS`` by :func:`prune_tombstones`, which every
process runs as it opens: a short key hashed is easily guessed, and would say for good what was forgotten.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Sequence

from core.errors import CompanionError, InvalidInputError
from core.validators import WriteGuard, normalize_key, parse_category
from infrastructure.background import BackgroundTasks
from infrastructure.database_batcher import DatabaseBatcher
from infrastructure.storage import DeletedCounts, Storage
from rag_system import IndexedMemory, TextAnalyzer
from services.conversation_service import ConversationService
from services.redaction import FORGOTTEN, ForgottenFact, redact, redact_json_strings
from services.user_memory import UserMemory
from services.user_service import UserService

logger = logging.getLogger("companion.forgetting")

# How far back stored text is redacted. A user past these has older rows left as they are; forget_everything
# removes them all.
MAX_CONVERSATIONS_SCANNED = 10_000
MAX_MESSAGES_SCANNED = 100_000
# Words that, with nothing more specific beside them, ask to forget everything ("all my memories", "everything").
# English; in other languages the model calls forget_everything itself, as its description says.
_EVERYTHING_WORDS = frozenset({"everything", "all", "anything", "whatever"})
_VAGUE_WORDS = "everything all anything whatever memories memory data stuff things thing know knows remember said told"


class ForgettingService:
    def __init__(
        self,
        *,
        user_id: uuid.UUID,
        guard: WriteGuard,
        storage: Storage,
        batcher: DatabaseBatcher,
        memories: UserMemory,
        users: UserService,
        conversations: ConversationService,
        tasks: BackgroundTasks | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.user_id = user_id
        self._guard = guard
        self._storage = storage
        self._batcher = batcher
        self._memories = memories
        self._users = users
        self._conversations = conversations
        self._tasks = tasks  # owns the redaction of stored messages after a forget seen from another session
        self._clock = clock
        self._facts: list[ForgottenFact] = []  # forgotten in this session: kept out of its LLM requests

    @property
    def _analyzer(self) -> TextAnalyzer:
        return self._memories.analyzer

    def asks_for_everything(self, description: str) -> bool:
        """True for "everything", "all my memories", "anything you know": nothing more specific than all of it."""
        words = set(self._analyzer.words(description))
        specific = set(self._analyzer.terms(description)) - set(self._analyzer.terms(_VAGUE_WORDS))
        return bool(words & _EVERYTHING_WORDS) and not specific

    async def forget(self, description: str) -> list[IndexedMemory]:
        """Forget what the user describes, everywhere; the memories forgotten (none when nothing matched)."""
        if self.asks_for_everything(description):
            raise InvalidInputError("to forget everything, use forget_everything")
        forgotten = await self._memories.forget(description)
        if forgotten:
            await self._storage.record_forgetting(self.user_id, at=self._clock())
            await self._forget_everywhere(forgotten)
        return forgotten

    async def forget_memory(self, category: str, key: str) -> IndexedMemory | None:
        """Forget one memory named by its category and key (the inspector's "forget"), everywhere, as :meth:`forget`
        does; None when there is no such memory."""
        memory = self._memories.get(parse_category(category).value, normalize_key(key))
        if memory is None:
            return None
        await self._storage.record_forgetting(self.user_id, at=self._clock())
        forgotten = await self._memories.forget_matching([memory])
        if forgotten:
            await self._forget_everywhere(forgotten)
        return forgotten[0] if forgotten else None

    def mentions(self, description: str) -> Callable[[str], bool]:
        """Whether a text mentions what ``description`` names (the redaction rule, with its words as the fact)."""
        fact = ForgottenFact.of("", description, analyzer=self._analyzer)
        return lambda text: redact(text, [fact], analyzer=self._analyzer) != text

    async def forget_said(self, description: str, *, within: float = 5.0) -> bool:
        """When no memory matched: redact what ``description`` names from this conversation's transcript and stored
        messages. True when anything mentioned it."""
        fact = ForgottenFact.of("", description, analyzer=self._analyzer)
        if not fact.terms:
            return False
        before = self._conversations.transcript
        self._conversations.redact(self._redaction([fact]))
        changed = self._conversations.transcript != before
        if self._guard.can_write:
            await self._storage.record_forgetting(self.user_id, at=self._clock())
            await self._batcher.flush(within=within)  # what was said is stored before it is redacted
            texts = await self._redacted_messages([fact], conversation_id=self._conversations.conversation_id)
            changed = await self._storage.rewrite_texts(self.user_id, messages=texts) > 0 or changed
        return changed

    async def forget_everything(self) -> DeletedCounts:
        """Every row of the user, the index, the cache; then this session stores nothing more."""
        self._guard.check(self.user_id)
        await self._storage.record_forgetting(self.user_id, at=self._clock())
        counts = await self._memories.forget_everything()
        self._conversations.forget()
        self._guard.revoke()
        return counts

    def erased_elsewhere(self) -> None:
        """Another session of the user erased everything (seen by a catch-up): this session stores nothing more, the
        writes it still queues (messages said before the erasure was seen) are dropped rather than stored into the
        erased user's tables, and its transcript goes."""
        self._guard.revoke()
        self._batcher.discard_user(self.user_id, before=self._clock())
        self._conversations.forget()

    def forgotten_elsewhere(self, memories: Sequence[IndexedMemory]) -> None:
        """Memories another session of the user forgot (seen by a catch-up): out of this session's later LLM
        requests and its transcript now, and, in the background, out of this conversation's stored messages, which
        that session could not redact (some were still on their way to the database)."""
        facts = [ForgottenFact.of(m.key, m.value, analyzer=self._analyzer) for m in memories]
        self._facts.extend(facts)
        self._conversations.redact(self._redaction(facts))
        if self._guard.can_write and self._tasks is not None:
            self._tasks.spawn(self._redact_stored(facts), name=f"forgotten-elsewhere:{self.user_id}")

    async def _redact_stored(self, facts: list[ForgottenFact], *, within: float = 5.0) -> None:
        await self._batcher.flush(within=within)  # what this session said is stored before it is redacted
        texts = await self._redacted_messages(facts, conversation_id=self._conversations.conversation_id)
        await self._storage.rewrite_texts(self.user_id, messages=texts)

    def scrub(self, text: str) -> str:
        """``text`` without what this session forgot (the live chat still holds what was said before)."""
        return self._redaction(self._facts)(text)

    def scrub_arguments(self, arguments: str) -> str:
        return redact_json_strings(arguments, self._facts, analyzer=self._analyzer)

    async def _forget_everywhere(self, memories: list[IndexedMemory]) -> None:
        facts = [ForgottenFact.of(m.key, m.value, analyzer=self._analyzer) for m in memories]
        self._facts.extend(facts)
        self._conversations.redact(self._redaction(facts))

        profile = await self._users.get_profile()
        if profile is not None and profile.summary:
            summary = redact(profile.summary, facts, analyzer=self._analyzer)
            if summary != profile.summary:
                await self._users.update_profile(summary=summary or None)

        notes: dict[uuid.UUID, tuple[str | None, list[str]]] = {}
        for conversation in await self._storage.recent_conversations(self.user_id, limit=MAX_CONVERSATIONS_SCANNED):
            summary = redact(conversation.summary or "", facts, analyzer=self._analyzer) or None
            threads = [t for t in conversation.open_threads if redact(t, facts, analyzer=self._analyzer) == t]
            if summary != conversation.summary or len(threads) != len(conversation.open_threads):
                notes[conversation.id] = (summary, threads)
        texts = await self._redacted_messages(facts)
        await self._storage.rewrite_texts(self.user_id, conversations=notes, messages=texts)

    def _redaction(self, facts: list[ForgottenFact]) -> Callable[[str], str]:
        """What a transcript line or stored message becomes: each mentioning sentence marked ``[forgotten]``."""
        return lambda text: redact(text, facts, analyzer=self._analyzer, replacement=FORGOTTEN)

    async def _redacted_messages(
        self, facts: list[ForgottenFact], *, conversation_id: uuid.UUID | None = None
    ) -> dict[uuid.UUID, str]:
        """The stored messages (of one conversation, if given) that mention ``facts``, as they become."""
        rewrite = self._redaction(facts)
        said = await self._storage.recent_messages(
            self.user_id, conversation_id=conversation_id, limit=MAX_MESSAGES_SCANNED
        )
        return {m.id: rewrite(m.content) for m in said if rewrite(m.content) != m.content}


async def prune_tombstones(storage: Storage, *, before: dt.datetime) -> int:
    """Prune every user's tombstones written before ``before``; a session behind one then reads all its user's
    memories once. Run in the background as a process opens: a database away now is asked again next time."""
    try:
        pruned = await storage.prune_tombstones(before=before)
    except CompanionError as exc:
        logger.warning("tombstones not pruned", extra={"error": type(exc).__name__})
        return 0
    if pruned:
        logger.info("tombstones pruned", extra={"pruned": pruned})
    return pruned
