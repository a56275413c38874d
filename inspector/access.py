"""The inspector's one door to the services: every read and change of a user's memory goes through here.

Each call opens the user's services as a session of the agent would (``services.container.open_session``), so an
edit or a forget takes the same path as the agent's own tools: the write guard, the batcher and its outbox, the
index, the cache (whose entries are keyed by the user's version in the database, so every worker sharing the Redis
follows), and the forgetting service's redaction of the profile text, summaries and stored messages.

When the services are regrouped (one ``UserMemory`` owning the index, writes, search and forgetting), this module
is the one to re-point. Every change writes one audit line: who (operator or the user), what (the action), which
user, category and key; never a value.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from core.categories import MemoryCategory
from core.errors import ConflictError, InvalidInputError, NotFoundError, WriteForbiddenError
from core.validators import normalize_key, parse_category, parse_importance
from infrastructure.storage import Conversation, DeletedCounts, Memory, MemoryChange, Message, Profile
from infrastructure.storage.supabase import SupabaseStorage
from inspector.auth import AppUser, SupabaseAuth
from services.container import Process, Session, open_session
from services.directory import UserDirectory
from services.persona import Persona

audit_log = logging.getLogger("companion.inspector.audit")

Actor = Literal["operator", "user"]
MAX_RECALL_CHARS = 500
RECALL_SIZE = 8  # memories shown for "what would it recall": more than a turn injects, to show what fell short


@dataclass(frozen=True, slots=True)
class MemoryView:
    category: str
    key: str
    value: str
    importance: float
    source: str
    created_at: dt.datetime
    updated_at: dt.datetime
    last_accessed_at: dt.datetime | None
    access_count: int
    history: tuple[MemoryChange, ...]  # earlier values, oldest first


@dataclass(frozen=True, slots=True)
class Ranked:
    """One memory as retrieval ranked it, with its score's parts (see ``rag_system.scoring.ScoreParts``)."""

    category: str
    key: str
    value: str
    semantic: float
    semantic_z: float
    lexical: float
    coverage: float
    in_window: bool
    recency: float
    importance: float
    total: float
    explanation: str


@dataclass(frozen=True, slots=True)
class RecallView:
    query: str
    ranked: tuple[Ranked, ...]
    inject: bool  # whether the relevance gate lets them into the LLM request
    reason: str  # the gate's fixed sentence
    notes: str  # the notes the agent would add to this generation ("" when nothing)


@dataclass(frozen=True, slots=True)
class ProfileView:
    profile: Profile | None
    instructions: str  # the persona's instructions, as the agent receives them
    notes: str  # the written profile as the agent's notes carry it on every turn ("" when none)


@dataclass(frozen=True, slots=True)
class ConversationView:
    conversation: Conversation
    messages: int


@dataclass(frozen=True, slots=True)
class UserSummary:
    user_id: uuid.UUID
    name: str | None
    updated_at: dt.datetime


class Access:
    """What the inspector may do: for any user (operators), or for one signed-in app user, whose services read
    through storage that carries their own JWT (the anon key, row-level security), never the service role's; an
    app user's access is read-only (the schema lets app users write nothing but their onboarding answers)."""

    def __init__(self, *, process: Process, persona: Persona, app_users: SupabaseAuth | None = None) -> None:
        self._process = process
        self._persona = persona
        self._app_users = app_users
        self._directory = UserDirectory(storage=process.storage)

    async def users(self, *, limit: int = 200) -> list[UserSummary]:
        """Operators only (the routes check): users with a profile, most recently changed first."""
        return [
            UserSummary(p.user_id, p.preferred_name or p.name, p.updated_at)
            for p in await self._directory.recent(limit=limit)
        ]

    @contextlib.asynccontextmanager
    async def user(
        self, user_id: uuid.UUID, *, actor: Actor, app_user: AppUser | None = None
    ) -> AsyncIterator[UserAccess]:
        """The user's services for one request; :class:`NotFoundError` when nothing was ever stored for them."""
        async with contextlib.AsyncExitStack() as stack:
            process = self._process
            if app_user is not None:
                if self._app_users is None or app_user.user_id != user_id:
                    raise NotFoundError("no such user")
                storage = await SupabaseStorage.open(
                    self._app_users.url,
                    self._app_users.anon_key.get_secret_value(),
                    http_client=self._app_users.http,
                    access_token=app_user.access_token,
                )
                stack.push_async_callback(storage.aclose)
                process = dataclasses.replace(process, storage=storage)
            session = await stack.enter_async_context(await open_session(process, user_id=user_id))
            if not await session.users.known():
                raise NotFoundError("no such user")
            yield UserAccess(session=session, persona=self._persona, actor=actor, read_only=app_user is not None)


class UserAccess:
    def __init__(self, *, session: Session, persona: Persona, actor: Actor, read_only: bool = False) -> None:
        self._session = session
        self._persona = persona
        self._actor = actor
        self._read_only = read_only  # an app user's: their JWT may read their rows, never write them
        self.user_id = session.user_id

    # Reads ------------------------------------------------------------------------------------------------

    async def memories(self) -> list[MemoryView]:
        """Every memory with its history, by category (in :class:`MemoryCategory`'s order), most important first."""
        stored = await self._session.memories.stored()
        changes: dict[tuple[str, str], list[MemoryChange]] = {}
        for change in await self._session.memories.all_history():
            changes.setdefault((change.category, change.key), []).append(change)
        views = [_view(m, changes.get((m.category, m.key), [])) for m in stored]
        order = {c.value: i for i, c in enumerate(MemoryCategory)}
        return sorted(views, key=lambda v: (order.get(v.category, len(order)), -v.importance, v.key))

    async def memory(self, category: str, key: str) -> MemoryView:
        stored = await self._session.memories.get_stored(category, key)
        if stored is None:
            raise NotFoundError("no such memory")
        return _view(stored, await self._session.memories.history(stored.category, stored.key))

    async def recall(self, query: str) -> RecallView:
        """What the agent would recall for ``query`` as a user's turn: the ranking, each score's parts, the gate's
        decision, and the notes its LLM request would carry."""
        query = query.strip()
        if not query:
            raise InvalidInputError("say what to recall, for example: where does my sister live?")
        if len(query) > MAX_RECALL_CHARS:
            raise InvalidInputError(f"say what to recall in fewer than {MAX_RECALL_CHARS} characters")
        found = await self._session.rag.search(query, k=RECALL_SIZE)
        ranked = tuple(
            Ranked(r.memory.category, r.memory.key, r.memory.value, r.score.semantic, r.score.semantic_z,
                   r.score.lexical, r.score.coverage, r.score.in_window, r.score.recency, r.score.importance,
                   r.score.total, r.score.explain())
            for r in found.ranked
        )  # fmt: skip
        context = self._session.rag.context_of([r.memory for r in found.memories])
        profile = await self._session.users.get_profile()
        notes = self._persona.notes(profile, context.text)
        return RecallView(query, ranked, found.gate.inject, found.gate.reason, notes)

    async def profile(self) -> ProfileView:
        profile = await self._session.users.get_profile()
        return ProfileView(profile, self._persona.instructions(profile), self._persona.notes(profile))

    async def conversations(self, *, limit: int = 50) -> list[ConversationView]:
        past = await self._session.conversations.past(limit=limit)
        said = await self._session.conversations.messages()
        counts: dict[uuid.UUID, int] = {}
        for message in said:
            counts[message.conversation_id] = counts.get(message.conversation_id, 0) + 1
        return [ConversationView(c, counts.get(c.id, 0)) for c in past]

    async def export(self) -> dict[str, Any]:
        """One JSON-ready document: the profile, every memory with its history, conversations and messages."""
        profile = await self._session.users.get_profile()
        memories = await self.memories()
        conversations = await self._session.conversations.past(limit=10_000)
        messages = await self._session.conversations.messages()
        return {
            "user_id": str(self.user_id),
            "exported_at": _time(dt.datetime.now(dt.UTC)),
            "profile": None if profile is None else profile_json(profile),
            "memories": [memory_json(m) for m in memories],
            "conversations": [conversation_json(c) for c in conversations],
            "messages": [message_json(m) for m in messages],
        }

    # Changes ----------------------------------------------------------------------------------------------

    async def edit(self, category: str, key: str, *, value: str | None = None, importance: Any = None) -> MemoryView:
        """Change a memory's value and/or importance, as the agent's ``remember`` would (a changed value keeps the
        old one in the history)."""
        self._writable()
        category, key = parse_category(category).value, normalize_key(key)
        current = await self._session.memories.get_stored(category, key)
        if current is None:
            raise NotFoundError("no such memory")
        if value is None and importance is None:
            raise InvalidInputError("give a new value or importance")
        if value is not None and not isinstance(value, str):
            raise InvalidInputError("value must be text")
        level = current.importance if importance is None else parse_importance(importance, MemoryCategory(category))
        saved = await self._session.memories.save_memory(
            category, key, current.value if value is None else value, level, source="inspector"
        )
        if saved.forgotten:  # forgotten in a session meanwhile
            raise NotFoundError("no such memory")
        if not saved.won:
            raise ConflictError("another session changed this memory at the same moment; reload it and try again")
        self._audit("edit", category, key)
        return await self.memory(category, key)

    async def forget(self, category: str, key: str) -> None:
        """Forget one memory everywhere: the index, the cache, the profile text, summaries and stored messages."""
        self._writable()
        category, key = parse_category(category).value, normalize_key(key)
        if await self._session.forgetting.forget_memory(category, key) is None:
            raise NotFoundError("no such memory")
        self._audit("forget", category, key)

    async def erase(self, *, confirm: object) -> DeletedCounts:
        """Everything of the user goes, as the agent's ``forget_everything``; ``confirm`` must be the user id."""
        self._writable()
        if not isinstance(confirm, str) or confirm.strip().lower() != str(self.user_id):
            raise InvalidInputError("to erase everything, type the user id exactly as confirmation")
        counts = await self._session.forget_everything()
        self._audit("erase")
        return counts

    # ------------------------------------------------------------------------------------------------------

    def _writable(self) -> None:
        if self._read_only:
            raise WriteForbiddenError("an app user's inspector reads; changes go through an operator or the companion")

    def _audit(self, action: str, category: str | None = None, key: str | None = None) -> None:
        audit_log.info(
            "inspector change",
            extra={
                "user_id": str(self.user_id),
                "action": action,
                "category": category,
                "key": key,
                "actor": self._actor,
            },  # fmt: skip
        )


async def shared_http(process: Process) -> httpx.AsyncClient:
    """The process's pooled HTTP client (Supabase Auth's requests ride it)."""
    return process.clients.http


def _view(memory: Memory, history: list[MemoryChange]) -> MemoryView:
    return MemoryView(memory.category, memory.key, memory.value, memory.importance, memory.source,
                      memory.created_at, memory.updated_at, memory.last_accessed_at, memory.access_count,
                      tuple(history))  # fmt: skip


def _time(at: dt.datetime | None) -> str | None:
    return None if at is None else at.astimezone(dt.UTC).isoformat()


def profile_json(profile: Profile) -> dict[str, Any]:
    return {
        "name": profile.name,
        "preferred_name": profile.preferred_name,
        "timezone": profile.timezone,
        "language": profile.language,
        "summary": profile.summary,
        "created_at": _time(profile.created_at),
        "updated_at": _time(profile.updated_at),
    }


def memory_json(memory: MemoryView) -> dict[str, Any]:
    return {
        "category": memory.category,
        "key": memory.key,
        "value": memory.value,
        "importance": round(memory.importance, 4),
        "source": memory.source,
        "created_at": _time(memory.created_at),
        "updated_at": _time(memory.updated_at),
        "last_accessed_at": _time(memory.last_accessed_at),
        "access_count": memory.access_count,
        "history": [
            {"old_value": c.old_value, "new_value": c.new_value, "changed_at": _time(c.changed_at)}
            for c in memory.history
        ],
    }


def conversation_json(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.id),
        "started_at": _time(conversation.started_at),
        "ended_at": _time(conversation.ended_at),
        "summary": conversation.summary,
        "open_threads": list(conversation.open_threads),
    }


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "conversation_id": str(message.conversation_id),
        "role": message.role,
        "content": message.content,
        "created_at": _time(message.created_at),
    }


def recall_json(recall: RecallView) -> dict[str, Any]:
    return {
        "query": recall.query,
        "inject": recall.inject,
        "reason": recall.reason,
        "notes": recall.notes,
        "ranked": [
            {"category": r.category, "key": r.key, "value": r.value, "total": round(r.total, 4),
             "parts": {"semantic": round(r.semantic, 4), "semantic_z": round(r.semantic_z, 4),
                       "lexical": round(r.lexical, 4), "coverage": round(r.coverage, 4), "in_window": r.in_window,
                       "recency": round(r.recency, 4), "importance": round(r.importance, 4)},
             "explanation": r.explanation}
            for r in recall.ranked
        ],
    }  # fmt: skip


def counts_json(counts: DeletedCounts) -> Mapping[str, int]:
    return {
        "profiles": counts.profiles,
        "onboarding": counts.onboarding,
        "memories": counts.memories,
        "memory_history": counts.memory_history,
        "conversations": counts.conversations,
        "messages": counts.messages,
    }
