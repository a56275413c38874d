"""The storage port: the one narrow async interface the services use, whatever the database.

Each public method validates its input first (user ids, field names, sizes) and only then calls the backend's
``_``-prefixed implementation, so bad input is refused before any query on every backend alike. The write records
(``MemoryWrite``, ``MessageWrite``, ``MemoryAccess``) validate themselves when built, so a batch holds only valid
rows wherever it was assembled. Backends
translate their driver's errors into :class:`core.errors.StorageError` at this boundary, and count round trips in
``stats.queries`` (a warm turn is expected to make one: the read of the user's version).

Semantics every backend honours (the contract suite in ``tests/storage`` checks them):
- ``upsert_memories``: one row per ``(user_id, category, key)``; a second write updates value, importance, source,
  embedding and ``updated_at`` and keeps ``id``, ``created_at`` and access counters; a changed value is recorded in
  the memory's history by the database itself.
- ``append_messages`` and ``start_conversation`` are idempotent on the caller's ids, so retries never duplicate.
- ``claim_onboarding`` returns True for exactly one caller, however many sessions race for it.
- ``delete_user_data`` removes every row of that user and nothing of anyone else's.
- ``user_version`` grows with every change to the user's profile or memories, deletions included, and never goes
  back (the database bumps it, in the same transaction as the change, and stamps it on the changed row).
- ``save_memory_if`` stores a memory only if its stored version is the one the caller saw (None: only if absent);
  of two racing writes to one key exactly one wins, and the other is handed the row that holds. A version given
  for a row that is gone loses (``memory`` None): the memory was deleted, and is not created again.
- ``changes_since(v)`` returns every memory changed and every memory deleted after version ``v`` (deletions as
  tombstones that hold a hash, never the key), the profile, and the version they bring the reader to; when a
  tombstone newer than ``v`` was pruned (``prune_tombstones``), every memory instead, marked ``everything``.
"""

from __future__ import annotations

import abc
import datetime as dt
import functools
import inspect
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from core.errors import InvalidInputError, StorageError
from core.validators import parse_user_id
from infrastructure.metrics import Metrics, flag
from infrastructure.storage.checks import check_text, require_uuid, utc
from infrastructure.storage.records import (
    PROFILE_FIELDS,
    Conversation,
    DeletedCounts,
    Memory,
    MemoryAccess,
    MemoryChange,
    MemoryWrite,
    Message,
    MessageWrite,
    OnboardingAnswers,
    Profile,
    SavedMemory,
    StorageStats,
    UserChanges,
)


class Storage(abc.ABC):
    """Base of every backend. Subclasses implement the ``_``-prefixed methods and ``aclose``."""

    backend_name: str = "abstract"
    # Where failed calls are counted (``companion_storage_errors_total``): the process's instruments unless the
    # one place that builds the object graph sets its own.
    metrics: Metrics | None = None

    def __init__(self) -> None:
        self.stats = StorageStats(backend=self.backend_name)

    # Lifecycle --------------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release connections. Idempotent."""

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def ping(self) -> None:
        """One cheap round trip; raises StorageError when the database does not answer."""

    # Profiles ---------------------------------------------------------------------------------------------

    async def ensure_profile(self, user_id: uuid.UUID | str, *, at: dt.datetime) -> Profile:
        """Create the user's empty profile if it does not exist (safe when sessions race) and return it."""
        return await self._ensure_profile(parse_user_id(user_id), utc(at))

    async def get_profile(self, user_id: uuid.UUID | str) -> Profile | None:
        return await self._get_profile(parse_user_id(user_id))

    async def update_profile(
        self, user_id: uuid.UUID | str, changes: Mapping[str, str | None], *, at: dt.datetime
    ) -> Profile:
        """Set the given profile fields (see ``PROFILE_FIELDS``), creating the profile if needed."""
        uid = parse_user_id(user_id)
        unknown = set(changes) - PROFILE_FIELDS
        if unknown:
            raise InvalidInputError(f"unknown profile fields {sorted(unknown)}; allowed: {sorted(PROFILE_FIELDS)}")
        if not changes:
            raise InvalidInputError("update_profile needs at least one field")
        for name, value in changes.items():
            if value is not None:
                check_text(value, what=f"profile {name}")
        return await self._update_profile(uid, dict(changes), utc(at))

    async def recent_profiles(self, *, limit: int = 100) -> list[Profile]:
        """Every user's profile, most recently updated first: the operators' list of users (never a session's)."""
        if limit < 1:
            raise InvalidInputError("limit must be at least 1")
        return await self._recent_profiles(limit)

    # Onboarding -------------------------------------------------------------------------------------------

    async def save_onboarding(
        self, user_id: uuid.UUID | str, answers: Mapping[str, Any], *, at: dt.datetime
    ) -> OnboardingAnswers:
        """Store (or replace) a user's onboarding answers, as the app does; an earlier claim stays."""
        uid = parse_user_id(user_id)
        if not isinstance(answers, Mapping):
            raise InvalidInputError("onboarding answers must be a JSON object")
        return await self._save_onboarding(uid, dict(answers), utc(at))

    async def get_onboarding(self, user_id: uuid.UUID | str) -> OnboardingAnswers | None:
        return await self._get_onboarding(parse_user_id(user_id))

    async def claim_onboarding(self, user_id: uuid.UUID | str, *, at: dt.datetime) -> bool:
        """Mark unprocessed answers as processed; True only for the one caller that did it."""
        return await self._claim_onboarding(parse_user_id(user_id), utc(at))

    # Memories ---------------------------------------------------------------------------------------------

    async def upsert_memories(self, writes: Sequence[MemoryWrite], *, read_back: bool = True) -> list[Memory]:
        """Insert or update each memory in one statement; returns the stored rows in the order given.

        ``read_back=False`` (the write batcher) skips reading the rows back and returns an empty list; on SQLite and
        PostgreSQL it also keeps a stored value that is newer (``updated_at``) than the write, so a replayed write
        from the outbox cannot undo a later one. (Supabase's PostgREST upsert has no condition: there the replay
        order alone decides.)"""
        if not writes:
            return []
        seen: set[tuple[uuid.UUID, str, str]] = set()
        for write in writes:
            ident = (write.user_id, write.category, write.key)
            if ident in seen:
                raise InvalidInputError("one upsert batch names the same memory twice; merge them first")
            seen.add(ident)
        return await self._upsert_memories(list(writes), read_back)

    async def save_memory_if(self, write: MemoryWrite, *, expected_version: int | None) -> SavedMemory:
        """Compare-and-set: store ``write`` only if the memory's stored ``version`` is ``expected_version`` (None:
        only if there is no such memory; a version given for a memory that is gone loses, with ``memory`` None).
        One round trip when it wins or loses to a row the reader can see."""
        if expected_version is not None and expected_version < 0:
            raise InvalidInputError("expected_version must be at least 0")
        return await self._save_memory_if(write, expected_version)

    async def get_memory(self, user_id: uuid.UUID | str, category: str, key: str) -> Memory | None:
        return await self._get_memory(parse_user_id(user_id), category, key)

    async def list_memories(
        self,
        user_id: uuid.UUID | str,
        *,
        category: str | None = None,
        include_embeddings: bool = True,
        limit: int | None = None,
    ) -> list[Memory]:
        """A user's memories, most recently updated first."""
        if limit is not None and limit < 1:
            raise InvalidInputError("limit must be at least 1")
        return await self._list_memories(parse_user_id(user_id), category, include_embeddings, limit)

    async def delete_memories(self, user_id: uuid.UUID | str, keys: Iterable[tuple[str, str]]) -> int:
        """Delete memories by ``(category, key)``; returns how many existed."""
        wanted = list(dict.fromkeys(keys))
        uid = parse_user_id(user_id)
        return await self._delete_memories(uid, wanted) if wanted else 0

    async def record_memory_access(self, accesses: Sequence[MemoryAccess]) -> None:
        """Add one to ``access_count`` and set ``last_accessed_at`` for each named memory."""
        accesses = [a for a in accesses if a.keys]
        if accesses:
            await self._record_memory_access(accesses)

    async def memory_history(self, user_id: uuid.UUID | str, category: str, key: str) -> list[MemoryChange]:
        """Earlier values of one memory, oldest first."""
        return await self._memory_history(parse_user_id(user_id), category, key)

    async def all_memory_history(self, user_id: uuid.UUID | str) -> list[MemoryChange]:
        """Every earlier value of all the user's memories in one round trip, oldest first (an export, the
        inspector's page)."""
        return await self._all_memory_history(parse_user_id(user_id))

    # Conversations ----------------------------------------------------------------------------------------

    async def start_conversation(
        self, user_id: uuid.UUID | str, conversation_id: uuid.UUID, *, at: dt.datetime
    ) -> Conversation:
        return await self._start_conversation(parse_user_id(user_id), require_uuid(conversation_id), utc(at))

    async def finish_conversation(
        self,
        user_id: uuid.UUID | str,
        conversation_id: uuid.UUID,
        *,
        at: dt.datetime,
        summary: str | None,
        open_threads: Sequence[str] = (),
    ) -> None:
        """Record the end of a conversation with its summary and the threads left open."""
        if summary is not None:
            check_text(summary, what="summary")
        for thread in open_threads:
            check_text(thread, what="open thread")
        await self._finish_conversation(
            parse_user_id(user_id), require_uuid(conversation_id), utc(at), summary, tuple(open_threads)
        )

    async def recent_conversations(self, user_id: uuid.UUID | str, *, limit: int = 5) -> list[Conversation]:
        """The user's conversations, newest first."""
        if limit < 1:
            raise InvalidInputError("limit must be at least 1")
        return await self._recent_conversations(parse_user_id(user_id), limit)

    async def append_messages(self, messages: Sequence[MessageWrite]) -> int:
        """Store messages in one statement; a message id already stored is skipped. Returns rows inserted."""
        return await self._append_messages(list(messages)) if messages else 0

    async def recent_messages(
        self, user_id: uuid.UUID | str, *, conversation_id: uuid.UUID | None = None, limit: int = 50
    ) -> list[Message]:
        """The user's latest messages (of one conversation, if given), in the order they were said."""
        if limit < 1:
            raise InvalidInputError("limit must be at least 1")
        cid = None if conversation_id is None else require_uuid(conversation_id)
        return await self._recent_messages(parse_user_id(user_id), cid, limit)

    # Everything of a user ---------------------------------------------------------------------------------

    async def delete_user_data(self, user_id: uuid.UUID | str) -> DeletedCounts:
        """Remove every row that belongs to the user, in every table."""
        return await self._delete_user_data(parse_user_id(user_id))

    async def user_version(self, user_id: uuid.UUID | str) -> int:
        """The version of the user's profile and memories: 0 before the first change. Caches key by it."""
        return await self._user_version(parse_user_id(user_id))

    async def changes_since(self, user_id: uuid.UUID | str, version: int) -> UserChanges:
        """What changed for the user after ``version``: the change feed every live session applies."""
        if version < 0:
            raise InvalidInputError("version must be at least 0")
        return await self._changes_since(parse_user_id(user_id), version)

    async def prune_tombstones(self, *, before: dt.datetime) -> int:
        """Delete every user's tombstones written before ``before`` (a hash of a forgotten key must not stay for
        good); a session behind one of them then reads everything (see ``changes_since``). Returns how many."""
        return await self._prune_tombstones(utc(before))

    async def record_forgetting(self, user_id: uuid.UUID | str, *, at: dt.datetime) -> None:
        """Note that something of the user was forgotten at ``at`` (the latest such time is kept)."""
        await self._record_forgetting(parse_user_id(user_id), utc(at))

    async def forgotten_at(self, user_ids: Iterable[uuid.UUID | str]) -> dict[uuid.UUID, dt.datetime]:
        """When each of these users last had something forgotten; users who never did are absent."""
        ids = sorted({parse_user_id(u) for u in user_ids})
        return await self._forgotten_at(ids) if ids else {}

    async def rewrite_texts(
        self,
        user_id: uuid.UUID | str,
        *,
        conversations: Mapping[uuid.UUID, tuple[str | None, Sequence[str]]] | None = None,
        messages: Mapping[uuid.UUID, str] | None = None,
    ) -> int:
        """Replace the summary and open threads of some of the user's conversations and the text of some of their
        messages (forgetting redacts them). Rows of other users are never touched. Returns the rows changed."""
        uid = parse_user_id(user_id)
        conversations, messages = conversations or {}, messages or {}
        for summary, threads in conversations.values():
            for text in (summary, *threads):
                if text is not None:
                    check_text(text, what="conversation notes")
        for content in messages.values():
            check_text(content, what="message")
        if not conversations and not messages:
            return 0
        notes = {require_uuid(cid): (summary, tuple(threads)) for cid, (summary, threads) in conversations.items()}
        texts = {require_uuid(mid): content for mid, content in messages.items()}
        return await self._rewrite_texts(uid, notes, texts)

    # Backend implementations ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _ensure_profile(self, user_id: uuid.UUID, at: dt.datetime) -> Profile: ...

    @abc.abstractmethod
    async def _get_profile(self, user_id: uuid.UUID) -> Profile | None: ...

    @abc.abstractmethod
    async def _update_profile(self, user_id: uuid.UUID, changes: dict[str, str | None], at: dt.datetime) -> Profile: ...

    @abc.abstractmethod
    async def _recent_profiles(self, limit: int) -> list[Profile]: ...

    @abc.abstractmethod
    async def _save_onboarding(
        self, user_id: uuid.UUID, answers: dict[str, Any], at: dt.datetime
    ) -> OnboardingAnswers: ...

    @abc.abstractmethod
    async def _get_onboarding(self, user_id: uuid.UUID) -> OnboardingAnswers | None: ...

    @abc.abstractmethod
    async def _claim_onboarding(self, user_id: uuid.UUID, at: dt.datetime) -> bool: ...

    @abc.abstractmethod
    async def _upsert_memories(self, writes: list[MemoryWrite], read_back: bool) -> list[Memory]: ...

    @abc.abstractmethod
    async def _save_memory_if(self, write: MemoryWrite, expected_version: int | None) -> SavedMemory: ...

    @abc.abstractmethod
    async def _get_memory(self, user_id: uuid.UUID, category: str, key: str) -> Memory | None: ...

    @abc.abstractmethod
    async def _list_memories(
        self, user_id: uuid.UUID, category: str | None, include_embeddings: bool, limit: int | None
    ) -> list[Memory]: ...

    @abc.abstractmethod
    async def _delete_memories(self, user_id: uuid.UUID, keys: list[tuple[str, str]]) -> int: ...

    @abc.abstractmethod
    async def _record_memory_access(self, accesses: list[MemoryAccess]) -> None: ...

    @abc.abstractmethod
    async def _memory_history(self, user_id: uuid.UUID, category: str, key: str) -> list[MemoryChange]: ...

    @abc.abstractmethod
    async def _all_memory_history(self, user_id: uuid.UUID) -> list[MemoryChange]: ...

    @abc.abstractmethod
    async def _start_conversation(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, at: dt.datetime
    ) -> Conversation: ...

    @abc.abstractmethod
    async def _finish_conversation(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        at: dt.datetime,
        summary: str | None,
        open_threads: tuple[str, ...],
    ) -> None: ...

    @abc.abstractmethod
    async def _recent_conversations(self, user_id: uuid.UUID, limit: int) -> list[Conversation]: ...

    @abc.abstractmethod
    async def _append_messages(self, messages: list[MessageWrite]) -> int: ...

    @abc.abstractmethod
    async def _recent_messages(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID | None, limit: int
    ) -> list[Message]: ...

    @abc.abstractmethod
    async def _delete_user_data(self, user_id: uuid.UUID) -> DeletedCounts: ...

    @abc.abstractmethod
    async def _user_version(self, user_id: uuid.UUID) -> int: ...

    @abc.abstractmethod
    async def _changes_since(self, user_id: uuid.UUID, version: int) -> UserChanges: ...

    @abc.abstractmethod
    async def _prune_tombstones(self, before: dt.datetime) -> int: ...

    @abc.abstractmethod
    async def _record_forgetting(self, user_id: uuid.UUID, at: dt.datetime) -> None: ...

    @abc.abstractmethod
    async def _forgotten_at(self, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, dt.datetime]: ...

    @abc.abstractmethod
    async def _rewrite_texts(
        self,
        user_id: uuid.UUID,
        conversations: dict[uuid.UUID, tuple[str | None, tuple[str, ...]]],
        messages: dict[uuid.UUID, str],
    ) -> int: ...


def _counting_errors(method: Callable[..., Coroutine[Any, Any, Any]]) -> Callable[..., Coroutine[Any, Any, Any]]:
    operation = method.__name__

    @functools.wraps(method)
    async def call(self: Storage, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except StorageError as exc:
            metrics = self.metrics or Metrics.process()
            metrics.storage_errors.labels(
                backend=self.backend_name, operation=operation, retryable=flag(exc.retryable)
            ).inc()
            raise

    return call


# Every public call of the port counts its failures by name (a closed set: the port's methods), so an operation
# added later is counted without a line of its own.
for _name, _method in list(vars(Storage).items()):
    if _name[0] != "_" and inspect.iscoroutinefunction(_method) and not getattr(_method, "__isabstractmethod__", 0):
        setattr(Storage, _name, _counting_errors(_method))
