"""The one place that builds the object graph: once per process (clients, models), once per session (a user's
services). agent.py calls these; so does a Python shell.

    async with await open_process(settings) as process:
        async with await open_session(process, user_id=user) as session:
            await session.memories.save_memory("RELATIONSHIP", "sister city", "My sister Maya lives in Lisbon")
            await session.catch_up()  # at the start of each turn: what the user's other sessions changed
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass

import openai

from core.config import OPENAI_API_URL, PLACEHOLDER_OPENAI_KEY, Settings
from core.errors import CompanionError
from core.validators import WriteGuard
from infrastructure.background import BackgroundTasks
from infrastructure.cache import Cache, CacheParams, open_cache
from infrastructure.clients import Clients, open_clients
from infrastructure.database_batcher import BatcherParams, DatabaseBatcher
from infrastructure.embeddings import CachedEmbedder, Embedder, open_embedder
from infrastructure.llm import FallbackChat, OpenAIChat, TextModel
from infrastructure.metrics import Metrics
from infrastructure.outbox import Outbox, OutboxParams
from infrastructure.storage import DeletedCounts, Profile, Storage
from infrastructure.turn_metrics import TurnMetrics
from rag_system import analyzer_for
from services.context_budget import ContextBudget
from services.conversation_service import ConversationService
from services.forgetting import ForgettingService, prune_tombstones
from services.memory_extraction import MemoryExtractor
from services.onboarding_service import OnboardingService
from services.persona import Persona
from services.profile_service import ProfileService
from services.rag_service import RagService
from services.turn_hooks import SessionTurns
from services.turn_retrieval import TurnRetrieval
from services.user_memory import CatchUp, UserMemory
from services.user_service import UserService

logger = logging.getLogger("companion.session")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _zone(profile: Profile | None) -> dt.tzinfo | None:
    if profile is None or not profile.timezone:
        return None
    try:
        return zoneinfo.ZoneInfo(profile.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):  # validated when written; an old row may still be odd
        return None


@dataclass
class Process:
    """What every session of one job process shares. ``aclose()`` closes it all through one exit stack, in the
    reverse order of opening: background tasks, then the batcher (which flushes), the outbox, the cache, and last
    the clients."""

    settings: Settings
    clients: Clients
    storage: Storage
    cache: Cache
    batcher: DatabaseBatcher
    outbox: Outbox
    embedder: CachedEmbedder
    llm: TextModel
    tasks: BackgroundTasks
    metrics: Metrics
    stack: contextlib.AsyncExitStack
    clock: Callable[[], dt.datetime] = _utc_now

    async def aclose(self) -> None:
        await self.stack.aclose()  # idempotent: a closed stack has nothing left to close

    async def __aenter__(self) -> Process:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def open_process(
    settings: Settings,
    *,
    clock: Callable[[], dt.datetime] = _utc_now,
    embedder: Embedder | None = None,
    metrics: Metrics | None = None,
) -> Process:
    """Open the clients, load the embedder (unless prewarm ``preload_embedder`` did), open the outbox and start the
    batcher, which first replays what the outbox kept from a crash or an outage (the database may still be away:
    the replay then waits in the batcher like any write). ``metrics``: the process's instruments by default."""
    metrics = metrics or Metrics.process()
    stack = contextlib.AsyncExitStack()
    try:
        clients = await open_clients(settings, stack, metrics=metrics)
        cache = open_cache(redis=clients.redis, params=CacheParams.from_settings(settings), metrics=metrics)
        stack.push_async_callback(cache.aclose)
        outbox = await Outbox.open(OutboxParams.from_settings(settings))
        stack.push_async_callback(outbox.aclose)  # what the database did not take stays for the next start
        batcher = DatabaseBatcher(storage=clients.storage, params=BatcherParams.from_settings(settings),
                                  outbox=outbox, metrics=metrics)  # fmt: skip
        stack.push_async_callback(batcher.aclose)
        batcher.start()
        cached = await open_embedder(settings, openai_client=clients.openai, preloaded=embedder)
        if settings.embedding_provider == "local" and embedder is None:
            await cached.embed(["warm up"])  # the first run pays for ONNX Runtime's set-up; no user turn should
        llm = _background_llm(settings, clients)
        tasks = BackgroundTasks()
        stack.push_async_callback(tasks.aclose)
        before = clock() - dt.timedelta(hours=settings.tombstone_retention_hours)
        tasks.spawn(prune_tombstones(clients.storage, before=before), name="prune-tombstones")
    except BaseException:
        await stack.aclose()
        raise
    return Process(settings=settings, clients=clients, storage=clients.storage, cache=cache, batcher=batcher,
                   outbox=outbox, embedder=cached, llm=llm, tasks=tasks, metrics=metrics, stack=stack,
                   clock=clock)  # fmt: skip


def _background_llm(settings: Settings, clients: Clients) -> TextModel:
    """The services' own model: the primary, then the fallback provider when one is configured (as the voice
    pipeline's LLM does), both on the process's HTTP client."""
    primary = OpenAIChat(client=clients.openai, model=settings.llm_model)
    if not settings.fallback_llm_configured:
        return primary
    key = settings.fallback_llm_api_key
    client = openai.AsyncOpenAI(
        base_url=settings.fallback_llm_base_url or OPENAI_API_URL,
        api_key=key.get_secret_value() if key is not None else PLACEHOLDER_OPENAI_KEY,
        http_client=clients.http,
        max_retries=0,
    )
    return FallbackChat([primary, OpenAIChat(client=client, model=settings.fallback_llm_model or "")])


@dataclass
class Session:
    """One user's services for one conversation."""

    user_id: uuid.UUID
    guard: WriteGuard
    users: UserService
    memories: UserMemory
    rag: RagService
    conversations: ConversationService
    onboarding: OnboardingService
    profiles: ProfileService
    extractor: MemoryExtractor
    budget: ContextBudget
    retrieval: TurnRetrieval
    forgetting: ForgettingService
    guest: bool = False  # an identity that is not a user id: nothing is read or written for it
    profile_at_open: Profile | None = None  # as open_session read it (its language and time zone set up retrieval)
    catch_up_within: float = 0.15  # seconds; past it the turn goes on with what the index holds
    metrics: Metrics | None = None  # where catch-ups are counted: the process's instruments unless given

    async def catch_up(self) -> CatchUp | None:
        """At the start of each turn: apply what the user's other sessions (on any worker) changed since the last
        turn, within ``catch_up_within``. What they forgot is kept out of this session's chat from now on; after an
        erasure elsewhere, this session stores nothing more either. None when nothing changed, or when the database
        did not answer in time (the turn goes on; the next one catches up)."""
        metrics = self.metrics or Metrics.process()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.catch_up_within):
                caught = await self.memories.catch_up()
        except (TimeoutError, CompanionError) as exc:
            metrics.catch_ups.labels(outcome="failed").inc()
            logger.warning("catching up with other sessions failed; using what this one holds",
                           extra={"error": type(exc).__name__})  # fmt: skip
            return None
        finally:
            metrics.catch_up_seconds.observe(time.perf_counter() - started)
        metrics.catch_ups.labels(outcome="unchanged" if caught is None else "applied").inc()
        if caught is None:
            return None
        if caught.erased:  # first: nothing may be written for the user after it (a redaction would flush writes)
            self.forgetting.erased_elsewhere()
        if caught.removed:
            self.forgetting.forgotten_elsewhere(caught.removed)  # after an erasure: this session's chat only
        return caught

    async def forget_everything(self) -> DeletedCounts:
        """Everything of this user goes: rows, index, cache entries, and what this session holds (the transcript
        that would be summarised, background work under way); the session stores nothing more."""
        return await self.forgetting.forget_everything()

    async def aclose(self) -> None:
        """Nothing of the session outlives it but its writes, which the process's batcher owns."""

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def open_session(process: Process, *, user_id: uuid.UUID | None, load: bool = True) -> Session:
    """Build a user's services and (with ``load``) fill their memory index from the database.

    ``user_id=None`` is a guest (an identity that is not a UUID): the services work, nothing is read or written."""
    guard = WriteGuard(user_id=user_id) if user_id is not None else WriteGuard.guest()
    guest = user_id is None
    if user_id is None:
        user_id, load = uuid.uuid4(), False  # never stored: the guard refuses every write for it
    common = {"user_id": user_id, "guard": guard, "storage": process.storage}
    users = UserService(**common, cache=process.cache, clock=process.clock)
    profile = await users.get_profile() if load else None
    # Retrieval reads words in the user's language, and "yesterday" in the user's time zone.
    language = Persona.from_settings(process.settings).language_for(profile)
    memories = UserMemory(**common, batcher=process.batcher, embedder=process.embedder,
                          analyzer=analyzer_for(language), cache=process.cache, clock=process.clock)  # fmt: skip
    rag = RagService(memory=memories, embedder=process.embedder, clock=process.clock, timezone=_zone(profile))
    deadline = process.settings.retrieval_deadline_ms / 1000
    conversations = ConversationService(**common, batcher=process.batcher, llm=process.llm,
                                        agent_name=process.settings.agent_name, clock=process.clock)  # fmt: skip
    session = Session(
        user_id=user_id,
        guard=guard,
        guest=guest,
        profile_at_open=profile,
        users=users,
        memories=memories,
        rag=rag,
        conversations=conversations,
        onboarding=OnboardingService(**common, users=users, memories=memories, clock=process.clock),
        profiles=ProfileService(**common, users=users, memories=memories, llm=process.llm, tasks=process.tasks),
        extractor=MemoryExtractor(memories=memories, llm=process.llm, embedder=process.embedder),
        budget=ContextBudget(llm=process.llm, max_tokens=process.settings.chat_context_max_tokens),
        retrieval=TurnRetrieval(rag=rag, memories=memories, deadline=deadline),
        catch_up_within=deadline,
        metrics=process.metrics,
        forgetting=ForgettingService(
            **common,
            batcher=process.batcher,
            memories=memories,
            users=users,
            conversations=conversations,
            tasks=process.tasks,
            clock=process.clock,
        ),  # fmt: skip
    )
    if load:
        await memories.load()
        session.retrieval.prefetch()
    return session


def session_turns(process: Process, session: Session, *, metrics: TurnMetrics | None = None) -> SessionTurns:
    """The turn hooks of ``session``'s conversation; ``metrics``: the process's turn metrics unless given."""
    return SessionTurns(
        user_id=session.user_id,
        guard=session.guard,
        conversations=session.conversations,
        profiles=session.profiles,
        extractor=session.extractor,
        rag=session.rag,
        retrieval=session.retrieval,
        budget=session.budget,
        tasks=process.tasks,
        metrics=metrics or TurnMetrics(metrics=process.metrics),
        catch_up=None if session.guest else session.catch_up,  # a guest has no other session to keep up with
    )
