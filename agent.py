"""Companion: a LiveKit Agents worker whose agent remembers each user.

    python agent.py console --text     chat in the terminal (no LiveKit server needed)
    python agent.py dev | start        join LiveKit rooms (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET)

This file wires LiveKit to the services (services/container.py builds them); the Companion agent injects the
turn's memories in ``llm_node``, so every path (voice, typed text, generate_reply, preemptive generation) carries
them, and offers the tools.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import tempfile
import threading
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

import click
import httpx
import typer
from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    APIConnectOptions,
    ConversationItemAddedEvent,
    JobContext,
    JobProcess,
    ModelSettings,
    RunContext,
    ToolError,
    TurnHandlingOptions,
    cli,
    function_tool,
    inference,
    llm,
)
from livekit.agents.stt import STT
from livekit.agents.vad import VAD
from livekit.agents.voice.agent_session import SessionConnectOptions  # not re-exported by livekit.agents in 1.8.9
from livekit.agents.voice.turn import TurnDetectionMode
from livekit.plugins import openai, silero
from openai import AsyncOpenAI
from pydantic import BeforeValidator
from rich.text import Text
from threadpoolctl import threadpool_limits

from core.categories import CategoryName, ProfileFieldName
from core.config import OPENAI_API_URL, PLACEHOLDER_OPENAI_KEY, Settings, get_settings, share_with_job_processes
from core.errors import CompanionError, ConfigError, WriteForbiddenError
from core.log_filters import CONSOLE_NOISE, NotForUsFilter
from core.log_filters import install as install_log_filters
from core.preflight import EXIT_CONFIG, EXIT_SESSION_FAILED, LLM_COMMANDS, command_of, preflight, preflight_warnings
from core.validators import clean_text, is_user_id, parse_category, parse_profile_field, parse_user_id
from infrastructure.background import BackgroundTasks
from infrastructure.clients import Clients
from infrastructure.embeddings import preload_embedder
from infrastructure.metrics import BatchReading, CacheReading, ClientReading, Metrics, RetrievalReading, StorageReading
from infrastructure.metrics_server import MetricsServer
from infrastructure.startup_probe import probe
from infrastructure.storage import Profile
from infrastructure.turn_metrics import TurnMetrics
from services.container import Process, Session, open_process, open_session, session_turns
from services.context_budget import HistoryItem
from services.forgetting import ForgettingService
from services.health_report import batch_report, cache_report, clients_report, memory_report
from services.persona import Persona
from services.rag_service import RagService, TurnContext
from services.turn_hooks import SUMMARY_ID, SessionTurns, SummaryReady, begin_conversation, end_conversation
from services.user_memory import CatchUp, UserMemory
from services.user_service import UserService
from tts import TEXT_TRANSFORMS, SpeechOutput, build_tts

logger = logging.getLogger("companion.agent")


def _log_user_text() -> bool:
    try:
        return get_settings().log_user_text
    except ConfigError:  # main() reports it; until then nothing of the user's is logged
        return False


# On LiveKit's loggers, in this process and in each job process (which imports this module): no user text in the
# logs unless LOG_USER_TEXT=true, and none of LiveKit's warnings about features Companion does not use.
install_log_filters(allow_user_text=_log_user_text)


# Tool arguments: closed sets as JSON-schema enums (from the one declaration in core/categories.py), read in any
# case; anything else is refused before the tool runs, with the list (the ValueError is the message the LLM sees).
Category = Annotated[CategoryName, BeforeValidator(lambda v: parse_category(v).value)]
ProfileFieldArg = Annotated[ProfileFieldName, BeforeValidator(lambda v: parse_profile_field(v).value)]


class PromptScrubber(Protocol):
    """What this session forgot, taken out of any text before it reaches the LLM (``ForgettingService``)."""

    def scrub(self, text: str) -> str: ...

    def scrub_arguments(self, arguments: str) -> str: ...


class Companion(Agent):
    """LiveKit's side of one conversation: the persona's instructions, the turn's memories added to each generation
    (``llm_node``), the chat edits that forgetting and summaries ask for, and the tools, grouped by purpose
    (``tools``: :class:`MemoryTools`, :class:`ProfileTools`, :class:`HealthTools`). What a turn does around it is
    :class:`services.turn_hooks.SessionTurns`'s."""

    def __init__(
        self,
        *,
        persona: Persona,
        profile: Profile | None,
        turns: SessionTurns,
        scrubber: PromptScrubber,
        tasks: BackgroundTasks,
        tools: Sequence[llm.Toolset] = (),
    ) -> None:
        super().__init__(instructions=persona.instructions(profile), tools=list(tools))
        self._persona = persona
        self._profile = profile
        self._turns = turns
        self._scrubber = scrubber
        self._tasks = tasks
        self._hidden: frozenset[str] = frozenset()  # chat items erased or forgotten: never sent to the LLM again

    # Memories, once per user message, on every path ----------------------------------------------------------

    async def llm_node(
        self, chat_ctx: llm.ChatContext, tools: list[llm.Tool], model_settings: ModelSettings
    ) -> AsyncIterable[llm.ChatChunk | str]:
        newest = _newest_user_message(chat_ctx)
        caught = await self._turns.catch_up(newest.id) if newest is not None else None
        if caught is not None and await self._apply(caught):  # before this message's retrieval
            chat_ctx = _with_instructions(chat_ctx, self._persona.instructions(self._profile))  # built before it
        if self._hidden:  # the request of the same turn was built before they were hidden
            chat_ctx = chat_ctx.copy()
            chat_ctx.items = [item for item in chat_ctx.items if item.id not in self._hidden]
        chat_ctx = _rewrite_text_of(chat_ctx, self._prompt_text, self._scrubber.scrub_arguments)
        context = await self._context_for(chat_ctx)
        notes = self._prompt_text(self._persona.notes(self._profile, context.text if context is not None else ""))
        if notes:  # this generation only, as the assistant's own quoted notes: never with a system prompt's authority
            chat_ctx = chat_ctx.copy()
            position = _newest_user_position(chat_ctx)  # the copy's items, same order
            message = llm.ChatMessage(role="assistant", content=[notes])
            chat_ctx.items.insert(position if position is not None else len(chat_ctx.items), message)
        answered = False
        try:
            async for chunk in Agent.default.llm_node(self, chat_ctx, tools, model_settings):
                answered = answered or _says_something(chunk)
                yield chunk
        except Exception as exc:  # every provider failed (LiveKit retried and fell back already)
            logger.warning("language model failed; the user hears an apology", extra={"error": type(exc).__name__})
            if not answered:  # a reply cut short is left as it is: a sentence of apology after it would confuse
                yield APOLOGY
            return
        if not answered:  # a body that was no completion at all (a proxy's error page): silence is worse
            logger.warning("language model answered nothing; the user hears an apology")
            yield APOLOGY

    def _prompt_text(self, text: str) -> str:
        """Any text of the chat as it may reach the LLM: encodable, and without what this session forgot."""
        return self._scrubber.scrub(clean_text(text))

    async def _context_for(self, chat_ctx: llm.ChatContext) -> TurnContext | None:
        newest = _newest_user_message(chat_ctx)
        if newest is None:
            return None
        recent = _recent_turns(chat_ctx, before=newest.id)
        return await self._turns.memories_for(newest.id, newest.text_content or "", recent)

    async def _apply(self, caught: CatchUp) -> bool:
        """What the user's other sessions changed, in LiveKit's chat: after an erasure nothing said before stays; a
        rename changes the instructions. True when the instructions changed.

        The catch-up has been handed over and will not come again, so the profile is taken before the first await:
        a generation cancelled during ``hide`` (with a realtime model, which awaits) loses none of it."""
        changed = False
        if caught.profile_changed:
            self._profile = caught.profile  # its written part goes into this turn's notes
            instructions = self._persona.instructions(caught.profile)
            # A new empty profile, a new summary: the instructions stay, and so does LiveKit's preemptive
            # generation, which changed instructions would throw away.
            changed = instructions != self.instructions
            if changed:
                await self.update_instructions(instructions)  # from the next request on
        if caught.erased:
            await self.hide(lambda text: True)
        return changed

    # LiveKit's events to the turn hooks ----------------------------------------------------------------------

    def on_conversation_item(self, event: ConversationItemAddedEvent) -> None:
        item = event.item
        if not isinstance(item, llm.ChatMessage) or item.role not in ("user", "assistant") or not item.text_content:
            return
        if item.role == "user":
            self._turns.on_user_message(item.text_content, metrics=dict(item.metrics))
            return
        ready = self._turns.on_reply(
            item.text_content, metrics=dict(item.metrics), history=lambda: _history_items(self.chat_ctx)
        )
        if ready is not None:
            self._swap_in_summary(ready)

    def _swap_in_summary(self, ready: SummaryReady) -> None:
        """Replace exactly the items the summary read; whatever was added since stays. The summary is an assistant
        message (the user's words in it must not gain a system prompt's authority) dated like the last item it
        replaces, so the history stays in time order."""
        chat_ctx = self.chat_ctx.copy()
        folded = [item for item in chat_ctx.items if item.id in ready.plan.ids]
        if not folded:
            return
        chat_ctx.items = [item for item in chat_ctx.items if item.id not in ready.plan.ids]
        chat_ctx.insert(
            llm.ChatMessage(id=ready.id, role="assistant", content=[ready.text], created_at=folded[-1].created_at)
        )
        self._tasks.spawn(self.update_chat_ctx(chat_ctx), name=f"history-swap:{ready.id}")
        logger.info(
            "history summarised", extra={"folded_items": len(folded), "tokens_before": ready.plan.history_tokens}
        )

    # What the tools change in the live chat -------------------------------------------------------------------

    @property
    def newest_user_message_id(self) -> str:
        newest = _newest_user_message(self.chat_ctx)
        return newest.id if newest is not None else ""

    async def show_profile(self, profile: Profile | None) -> None:
        """The profile changed: its plain fields are in the instructions from the next reply on, its text in the
        notes."""
        self._profile = profile
        await self.update_instructions(self._persona.instructions(profile))

    async def scrub_chat(self, profile: Profile | None) -> None:
        """Something was forgotten: the chat (and ``profile``, rewritten without it) no longer carry it, and this
        turn's memories are searched again for the answer."""
        self._profile = profile
        self._turns.forget_turn_memories()
        await self.update_chat_ctx(
            _rewrite_text_of(self.chat_ctx.copy(), self._prompt_text, self._scrubber.scrub_arguments)
        )

    async def hide(self, mentions: Callable[[str], bool]) -> bool:
        """Take the chat's items (messages, tool calls and their outputs) for which ``mentions`` holds out of the
        chat and of every later LLM request; the instructions and the newest user message (the request itself)
        stay. True when any was."""
        chat_ctx = self.chat_ctx.copy()
        newest = _newest_user_message(chat_ctx)
        hidden = {
            item.id
            for item in chat_ctx.items
            if not _is_instructions(item) and (newest is None or item.id != newest.id) and mentions(_text_of(item))
        }
        if not hidden:
            return False
        self._hidden |= hidden
        chat_ctx.items = [item for item in chat_ctx.items if item.id not in self._hidden]
        await self.update_chat_ctx(chat_ctx)
        return True


def _companion(context: RunContext) -> Companion:
    """The agent a tool was called by: the tools change its chat (LiveKit's ``RunContext`` knows the session)."""
    agent = context.session.current_agent
    if not isinstance(agent, Companion):
        raise ToolError("That can't be done in this conversation.")
    return agent


# Tools, by purpose ---------------------------------------------------------------------------------------------


class MemoryTools(llm.Toolset):
    """Remember, recall and forget: what the user asks the companion to keep or let go of."""

    def __init__(
        self, *, memories: UserMemory, rag: RagService, forgetting: ForgettingService, users: UserService
    ) -> None:
        super().__init__(id="memory")
        self._memories = memories
        self._rag = rag
        self._forgetting = forgetting
        self._users = users
        self._erase_asked_in: str | None = None  # the user message in which forget_everything asked to confirm

    @function_tool
    async def remember(
        self, context: RunContext, category: Category, key: str, value: str, importance: float | None = None
    ) -> str:
        """Save something about the user to remember in later conversations.

        Args:
            category: what the memory is about.
            key: a short topic name, such as "sister city" or "favourite drink".
            value: one sentence about the user, in the third person.
            importance: from 0 to 1; leave empty for the category's default.
        """
        saved = await _speakable(self._memories.save_memory(category, key, value, importance))
        if saved.queued:
            return f"Saved: {saved.memory.value} (kept here while the memory store is away; stored when it is back)"
        if saved.forgotten:  # the user had it forgotten in another conversation meanwhile: not brought back
            return (
                "Not saved: the user just asked, in another conversation, to forget what you held about this. "
                "Ask the user whether it should be remembered again before saving it."
            )
        if not saved.won:  # another conversation of the user saved this key first: its value holds
            return (
                f"Not saved: meanwhile another conversation remembered this as: {saved.memory.value}. "
                "Ask the user which is right before saving again."
            )
        return f"Saved: {saved.memory.value}"

    @function_tool
    async def recall(self, context: RunContext, query: str) -> str:
        """Look up what you remember about the user on a topic."""
        found = await _speakable(self._rag.recall(query))
        if not found:
            return "Nothing remembered about that."
        return " ".join(f"{r.memory.value}." for r in found)

    @function_tool
    async def forget(self, context: RunContext, query: str) -> str:
        """Forget one thing the user asks you to forget, described in their words (such as "my bank PIN").
        To forget everything, use forget_everything instead."""
        if self._forgetting.asks_for_everything(query):
            return await self.forget_everything(context, confirmed=False)
        chat = _companion(context)
        forgotten = await _speakable(self._forgetting.forget(query))
        if not forgotten:  # nothing saved: what was said of it in this conversation goes all the same
            dropped = await chat.hide(self._forgetting.mentions(query))
            if await _speakable(self._forgetting.forget_said(query)) or dropped:
                return (
                    "Nothing like that was saved, and it is gone from this conversation too. Tell the user so, "
                    "without repeating it."
                )
            return "There was nothing like that to forget."
        await chat.scrub_chat(await _speakable(self._users.get_profile()))  # its text, rewritten without it
        # Says what was done, never what it was: this answer stays in the chat, which must not hold it again.
        things = "one thing" if len(forgotten) == 1 else f"{len(forgotten)} things"
        return (
            f"Forgotten {things}: gone from your memories, your notes, past conversations and this one. "
            "Tell the user it is forgotten, without repeating it."
        )

    @function_tool
    async def forget_everything(self, context: RunContext, confirmed: bool = False) -> str:
        """Erase everything you know about the user: memories, profile and past conversations. Use it when they ask
        to forget everything or delete all their data. Call it first with confirmed false; then ask them to confirm
        out loud, and call it again with confirmed true only after they said yes.

        Args:
            confirmed: true only after the user confirmed, in their latest message, that everything should go.
        """
        chat = _companion(context)
        turn = chat.newest_user_message_id
        if not confirmed or self._erase_asked_in is None or self._erase_asked_in == turn:
            # The yes must come in a later message than the request: a model cannot confirm on its own.
            self._erase_asked_in = turn
            return (
                "Nothing is erased yet. Ask the user to confirm: everything you remember about them, their profile "
                "and your past conversations will be erased for good. Erase only if they say yes."
            )
        self._erase_asked_in = None
        await _speakable(self._forgetting.forget_everything())
        await chat.show_profile(None)
        await chat.hide(lambda text: True)
        return (
            "Everything is erased: memories, profile and past conversations. Nothing more from this conversation "
            "will be kept either. Tell the user so, briefly."
        )


class ProfileTools(llm.Toolset):
    """The profile's plain fields, which the user may set by asking."""

    def __init__(self, *, users: UserService) -> None:
        super().__init__(id="profile")
        self._users = users

    @function_tool
    async def update_profile(self, context: RunContext, field: ProfileFieldArg, value: str) -> str:
        """Update the user's profile.

        Args:
            field: which field; a timezone is an IANA name such as Europe/Lisbon, a language a code such as en.
            value: the new value.
        """
        profile = await _speakable(self._users.update_profile(**{field: value}))
        await _companion(context).show_profile(profile)  # from the next reply on
        return f"Updated the {field.replace('_', ' ')}."


class HealthTools(llm.Toolset):
    """How the companion is running, when asked: the clients, the cache, the write batching, the memories. The
    numbers are the process's Prometheus instruments, the ones /metrics serves for this process."""

    def __init__(self, *, clients: Clients, metrics: Metrics, memories: UserMemory) -> None:
        super().__init__(id="health")
        self._clients = clients
        self._metrics = metrics
        self._memories = memories

    @function_tool(name="getConnectionPoolStats")
    async def get_connection_pool_stats(self, context: RunContext) -> str:
        """How the connections are doing: each client (HTTP, database, Redis), its health and its connections."""
        await self._clients.health_check()
        return clients_report(ClientReading.read_all(self._metrics))

    @function_tool(name="getRedisCacheStats")
    async def get_redis_cache_stats(self, context: RunContext) -> str:
        """How the cache is doing: hit rate, mode and latency."""
        return cache_report(CacheReading.read(self._metrics))

    @function_tool(name="getDatabaseBatchStats")
    async def get_database_batch_stats(self, context: RunContext) -> str:
        """How the database write batching is doing."""
        return batch_report(BatchReading.read(self._metrics), StorageReading.read(self._metrics))

    @function_tool(name="getMemoryStats")
    async def get_memory_stats(self, context: RunContext) -> str:
        """How many memories you hold about the user, and how retrieval is doing."""
        return memory_report(self._memories.stats(), RetrievalReading.read(self._metrics))


async def _speakable(work: Any) -> Any:
    """Turn our errors into a sentence the model may say (LiveKit's ToolError), never a traceback."""
    try:
        return await work
    except WriteForbiddenError:
        raise ToolError("I can't save anything in a guest conversation.") from None
    except CompanionError as exc:
        raise ToolError(exc.message if not exc.retryable else "That didn't work just now; try again soon.") from None


# Spoken when no language model answers: the session goes on, and the user knows to try again.
APOLOGY = "Sorry, I lost my train of thought for a moment. Could you say that again?"


def _history_items(chat_ctx: llm.ChatContext) -> list[HistoryItem]:
    """The conversation as the budget sees it: messages, tool calls and outputs, our summary; not the instructions
    or LiveKit's own bookkeeping items, which always stay."""
    items: list[HistoryItem] = []
    for item in chat_ctx.items:
        if isinstance(item, llm.ChatMessage):
            if item.id.startswith(SUMMARY_ID):
                items.append(HistoryItem(id=item.id, role="summary", text=item.text_content or ""))
            elif item.role in ("user", "assistant"):
                items.append(HistoryItem(id=item.id, role=item.role, text=item.text_content or ""))  # type: ignore[arg-type]
        elif isinstance(item, llm.FunctionCall):
            text = f"{item.name}({item.arguments})"
            items.append(HistoryItem(id=item.id, role="tool", text=text, call_id=item.call_id))
        elif isinstance(item, llm.FunctionCallOutput):
            items.append(HistoryItem(id=item.id, role="tool", text=item.output, call_id=item.call_id))
    return items


def _says_something(chunk: llm.ChatChunk | str) -> bool:
    if isinstance(chunk, str):
        return bool(chunk.strip())
    delta = chunk.delta
    return delta is not None and bool((delta.content or "").strip() or delta.tool_calls)


def _text_of(item: llm.ChatItem) -> str:
    if isinstance(item, llm.ChatMessage):
        return item.text_content or ""
    if isinstance(item, llm.FunctionCallOutput):
        return item.output
    if isinstance(item, llm.FunctionCall):
        return item.arguments
    return ""


def _is_instructions(item: llm.ChatItem) -> bool:
    return isinstance(item, llm.ChatMessage) and item.role in ("system", "developer")


def _with_instructions(chat_ctx: llm.ChatContext, instructions: str) -> llm.ChatContext:
    """A copy of the context whose instructions message says ``instructions``."""
    chat_ctx = chat_ctx.copy()
    for i, item in enumerate(chat_ctx.items):
        if _is_instructions(item):
            chat_ctx.items[i] = item.model_copy(update={"content": [instructions]})
            break
    return chat_ctx


def _newest_user_message(chat_ctx: llm.ChatContext) -> llm.ChatMessage | None:
    position = _newest_user_position(chat_ctx)
    return None if position is None else chat_ctx.items[position]  # type: ignore[return-value]


def _rewrite_text_of(
    chat_ctx: llm.ChatContext, rewrite: Callable[[str], str], rewrite_arguments: Callable[[str], str]
) -> llm.ChatContext:
    """The context with ``rewrite`` applied to every message's text and tool output, and ``rewrite_arguments`` to
    every tool call's JSON arguments. A copy, and only when something changed.

    Used on every LLM request: text as any encoder takes it (:func:`clean_text`: one lone surrogate in a typed line
    would otherwise fail this request and every later one, since it stays in the history), and without what the
    session forgot."""
    changes: dict[int, llm.ChatItem] = {}
    for i, item in enumerate(chat_ctx.items):
        if isinstance(item, llm.ChatMessage):
            content = [rewrite(c) if isinstance(c, str) else c for c in item.content]
            if content != item.content:
                changes[i] = item.model_copy(update={"content": content})
        elif isinstance(item, llm.FunctionCallOutput):
            output = rewrite(item.output)
            if output != item.output:
                changes[i] = item.model_copy(update={"output": output})
        elif isinstance(item, llm.FunctionCall):
            arguments = rewrite_arguments(item.arguments)
            if arguments != item.arguments:
                changes[i] = item.model_copy(update={"arguments": arguments})
    if not changes:
        return chat_ctx
    rewritten = chat_ctx.copy()
    for i, item in changes.items():
        rewritten.items[i] = item
    return rewritten


def _newest_user_position(chat_ctx: llm.ChatContext) -> int | None:
    for position in range(len(chat_ctx.items) - 1, -1, -1):
        item = chat_ctx.items[position]
        if isinstance(item, llm.ChatMessage) and item.role == "user":
            return position
    return None


def _recent_turns(chat_ctx: llm.ChatContext, *, before: str, limit: int = 3) -> list[str]:
    turns: list[str] = []
    for item in chat_ctx.items:
        if item.id == before:
            break
        is_turn = isinstance(item, llm.ChatMessage) and item.role in ("user", "assistant")
        if is_turn and item.text_content and not item.id.startswith(SUMMARY_ID):
            turns.append(item.text_content)
    return turns[-limit:]


# Wiring ------------------------------------------------------------------------------------------------------


def prewarm(proc: JobProcess) -> None:
    """Runs in each job process before it takes a job, before the process has an event loop: the models load here.
    The clients open at the start of the job (``open_process``), while it waits for the participant, because asyncio
    clients belong to the loop they were opened on.

    One BLAS thread per job process (the search's matrix product; the embedder runs ONNX Runtime on one thread of
    its own): a worker runs several job processes at once on the machine's cores, and OpenBLAS's threads keep
    spinning after a call, so a second thread mostly contends with the next small product (README, "Retrieval")."""
    threadpool_limits(limits=1, user_api="blas")
    proc.userdata["vad"] = silero.VAD.load()
    proc.userdata["embedder"] = preload_embedder(get_settings())
    # The models live as long as the process: the collector need not walk them again (a full collection of a
    # prewarmed process took 45-66 ms, a stall of the session's event loop; frozen, under 0.01 ms).
    gc.collect()
    gc.freeze()


# Seconds. Session end: flush the transcript (5), the LLM's summary (15) and profile (15), background work's grace
# (10) and the batcher's close (10): LiveKit kills a job process still shutting down after shutdown_process_timeout.
SESSION_END_FLUSH = 5.0
SESSION_END_LLM_BUDGET = 15.0
server = AgentServer(setup_fnc=prewarm, shutdown_process_timeout=60.0)


async def start_companion(
    session: AgentSession,
    *,
    process: Process,
    services: Session,
    room: Any = None,
    turn_metrics: TurnMetrics | None = None,
) -> Companion:
    """Start ``session`` with the Companion for ``services``' user: the conversation begins (onboarding, profile),
    LiveKit's events go to the turn hooks, and the agent greets the user."""
    profile = await begin_conversation(
        guard=services.guard, onboarding=services.onboarding, users=services.users, conversations=services.conversations
    )
    agent = Companion(
        persona=Persona.from_settings(process.settings),
        profile=profile,
        turns=session_turns(process, services, metrics=turn_metrics),
        scrubber=services.forgetting,
        tasks=process.tasks,
        tools=[
            MemoryTools(memories=services.memories, rag=services.rag, forgetting=services.forgetting,
                        users=services.users),
            ProfileTools(users=services.users),
            HealthTools(clients=process.clients, metrics=process.metrics, memories=services.memories),
        ],
    )  # fmt: skip
    session.on("conversation_item_added", agent.on_conversation_item)
    await (session.start(agent=agent) if room is None else session.start(agent=agent, room=room))
    opening = await services.conversations.opening(profile)
    await session.say(opening.text)
    _show_in_console(opening.text)  # the console prints replies, not what the agent says unprompted
    return agent


async def finish_companion(
    *,
    process: Process,
    services: Session,
    providers: Providers | None = None,
    session: AgentSession | None = None,
    llm_budget: float = SESSION_END_LLM_BUDGET,
) -> None:
    """Session end (the job's shutdown callback), within LiveKit's ``shutdown_process_timeout``: the session closes
    first, so that LiveKit commits what the user said before hanging up; then the conversation ends
    (:func:`services.turn_hooks.end_conversation`); the process closes last, whatever failed before it (its batcher
    holds the writes)."""
    try:
        if session is not None:
            await session.aclose()
        await end_conversation(
            guard=services.guard, batcher=process.batcher, conversations=services.conversations,
            profiles=services.profiles, flush_within=SESSION_END_FLUSH, llm_budget=llm_budget,
        )  # fmt: skip
    finally:
        try:
            if providers is not None:
                await providers.aclose()
        finally:
            await process.aclose()


@dataclass
class Providers:
    """A session's speech and language models. LiveKit's AgentSession does not close them; :meth:`aclose` does."""

    stt: STT
    llm: llm.LLM
    speech: SpeechOutput
    language_models: list[llm.LLM]

    async def aclose(self) -> None:
        await self.stt.aclose()
        for model in self.language_models:
            await model.aclose()
        await self.speech.aclose()


# What LiveKit's OpenAI plugins give their own clients: LiveKit retries and falls back itself, so no SDK retries.
PROVIDER_TIMEOUT = httpx.Timeout(connect=15.0, read=5.0, write=5.0, pool=5.0)


def build_providers(settings: Settings, *, client: AsyncOpenAI, language: str | None = None) -> Providers:
    """STT, LLM (with the optional fallback provider) and TTS on the process's pooled OpenAI client, so a session
    opens no HTTP pool of its own and the process closes the one it has. ``language``: the user's, when known."""
    client = client.with_options(max_retries=0, timeout=PROVIDER_TIMEOUT)
    language_models: list[llm.LLM] = [openai.LLM(model=settings.llm_model, client=client)]
    if settings.fallback_llm_configured:
        key = settings.fallback_llm_api_key
        language_models.append(
            openai.LLM(
                model=settings.fallback_llm_model or "",
                # Never None: the openai SDK would read OPENAI_BASE_URL, the primary's server.
                base_url=settings.fallback_llm_base_url or OPENAI_API_URL,
                api_key=key.get_secret_value() if key is not None else PLACEHOLDER_OPENAI_KEY,
            )
        )
    model = language_models[0] if len(language_models) == 1 else llm.FallbackAdapter(language_models)
    return Providers(
        stt=openai.STT(
            model=settings.openai_stt_model, language=(language or settings.agent_language).split("-")[0], client=client
        ),
        llm=model,
        speech=build_tts(settings, openai_client=client),
        language_models=language_models,
    )


# A failed LLM request goes to the fallback provider, if one is configured, then the user hears APOLOGY and may say
# it again. LiveKit's default (four attempts, two seconds apart) is 4 to 6 s of silence before anything is said, and
# twenty for a stalled server; one retry would still double a stall's five seconds.
LLM_CONNECT_OPTIONS = APIConnectOptions(max_retry=0, timeout=PROVIDER_TIMEOUT.read or 5.0)
SESSION_CONNECT_OPTIONS = SessionConnectOptions(llm_conn_options=LLM_CONNECT_OPTIONS)


def turn_detection(settings: Settings) -> TurnDetectionMode:
    """TURN_DETECTOR as LiveKit's turn detection. Always explicit: left to itself, an AgentSession loads the local
    end-of-turn model (214 MB of RSS) even for a text-only session."""
    if settings.turn_detector == "local":
        return inference.TurnDetector(version="v1-mini")
    if settings.turn_detector == "cloud":
        return inference.TurnDetector(version="v1", local_fallback=False)
    return "vad"


def build_session(
    providers: Providers,
    *,
    vad: VAD,
    turn_detection: TurnDetectionMode,
    turn_handling: TurnHandlingOptions | None = None,
) -> AgentSession:
    """The AgentSession: Silero VAD, the end-of-turn detection of TURN_DETECTOR, our providers, and the text
    clean-up before speech. LiveKit's preemptive generation (on by default) starts llm_node, and so our retrieval,
    on the final transcript, while end-of-turn detection is still deciding."""
    return AgentSession(
        vad=vad,
        stt=providers.stt,
        llm=providers.llm,
        tts=providers.speech.tts,
        tts_text_transforms=TEXT_TRANSFORMS,
        turn_handling={"turn_detection": turn_detection, **(turn_handling or {})},
        conn_options=SESSION_CONNECT_OPTIONS,
    )


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    settings = get_settings()
    process = await open_process(settings, embedder=ctx.proc.userdata.get("embedder"))
    if ctx.is_fake_job():  # the console
        user_id: Any = settings.console_user_id
    else:
        participant = await ctx.wait_for_participant()
        user_id = parse_user_id(participant.identity) if is_user_id(participant.identity) else None
        if user_id is None:
            logger.info("guest session: the participant identity is not a user id, nothing will be stored")
    services = await open_session(process, user_id=user_id)
    gc.freeze()  # what the session loaded (its index) lives as long as this job process, which exits after it
    language = Persona.from_settings(settings).language_for(services.profile_at_open)
    providers = build_providers(settings, client=process.clients.openai, language=language)
    session = build_session(providers, vad=ctx.proc.userdata["vad"], turn_detection=turn_detection(settings))
    ctx.add_shutdown_callback(
        lambda: finish_companion(process=process, services=services, providers=providers, session=session)
    )
    await start_companion(session, process=process, services=services, room=ctx.room)


def main(argv: list[str]) -> int:
    """Check the configuration for the command in ``argv`` and that its storage and cache answer, then hand over to
    LiveKit's CLI; return the exit status (``EXIT_CONFIG`` with a one-line message for what must be fixed)."""
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_CONFIG
    command = command_of(argv[1:])
    for warning in preflight_warnings(settings) if command else ():
        print(f"warning: {warning}", file=sys.stderr)
    problem = preflight(settings, argv[1:])
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_CONFIG
    if command in LLM_COMMANDS and "--help" not in argv:
        findings = asyncio.run(probe(settings))
        for finding in findings:
            print(finding.message if finding.fatal else f"warning: {finding.message}", file=sys.stderr)
        if any(finding.fatal for finding in findings):
            return EXIT_CONFIG
    quiet_console = command == "console" and settings.livekit_log_level is None and not _flag_given("--log-level", argv)
    if quiet_console:  # a person reads the console: warnings and errors, not LiveKit's DEBUG (--log-level debug)
        share_with_job_processes("LIVEKIT_LOG_LEVEL", "WARN")
    for chatty in ("aiosqlite", "asyncio", "httpcore", "openai._base_client"):  # their DEBUG drowns the console
        logging.getLogger(chatty).setLevel(logging.WARNING if quiet_console else logging.INFO)
    if settings.turn_detector != "local":  # read by the forkserver LiveKit starts: no job maps the local model
        share_with_job_processes("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")
    server.update_options(max_retry=settings.livekit_max_retry)
    outcome = _Outcome.watch(server, console=command == "console")
    status: int | str | None = 0
    with contextlib.ExitStack() as cleanup:
        if settings.metrics_port is not None and command:
            _serve_metrics(settings, command, cleanup)
        try:
            cli.run_app(server)
        except SystemExit as exc:  # typer ends every command with sys.exit
            status = exc.code
            outcome.note_exit(exc)
        except Exception as exc:  # a typed turn that raised, when nothing replaced it on its way out
            outcome.session_failure = exc
        finally:
            outcome.stop()
    return outcome.exit_status(status, settings=settings)


def _flag_given(flag: str, argv: list[str]) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


class _Outcome:
    """What LiveKit's CLI does not tell us. ``start``/``dev``: ``AgentServer.run`` failing (no server reachable
    after ``LIVEKIT_MAX_RETRY`` attempts): the CLI logs "worker failed" and exits 0 (``_run_worker`` in
    ``livekit/agents/cli/cli.py``). The console: the session's job crashing, after which the console would wait
    for it forever (the main thread is stopped with SIGTERM, which LiveKit's console handles as a Ctrl+C), or a
    typed turn raising, after which it exits 0 (its exit signal replaces the error)."""

    def __init__(self) -> None:
        self.worker_failure: BaseException | None = None
        self.session_failure: BaseException | None = None
        self._watch: _JobCrashWatch | None = None

    @classmethod
    def watch(cls, worker: AgentServer, *, console: bool) -> _Outcome:
        outcome = cls()
        run = worker.run

        async def run_and_record(*, devmode: bool = False, unregistered: bool = False) -> None:
            try:
                await run(devmode=devmode, unregistered=unregistered)
            except Exception as exc:  # the console's own worker runs unregistered: its failure is the session's
                if console:
                    outcome.session_failure = outcome.session_failure or exc
                else:
                    outcome.worker_failure = exc
                raise

        worker.run = run_and_record  # type: ignore[method-assign]
        if console:
            outcome._watch = _JobCrashWatch(outcome)
            logging.getLogger("livekit.agents").addHandler(outcome._watch)
            logging.getLogger("livekit.agents").addFilter(NotForUsFilter(prefixes=CONSOLE_NOISE))
        return outcome

    def note_exit(self, exc: SystemExit) -> None:
        """LiveKit's console ends on its own exit signal even when a typed turn raised: that error is the exit's
        context."""
        cause = exc.__context__
        while isinstance(cause, SystemExit | KeyboardInterrupt | typer.Exit | click.exceptions.Exit):  # how typer ends
            cause = cause.__context__
        if cause is not None and self.session_failure is None:
            self.session_failure = cause

    def stop(self) -> None:
        if self._watch is not None:
            logging.getLogger("livekit.agents").removeHandler(self._watch)

    def exit_status(self, status: int | str | None, *, settings: Settings) -> int:
        if self.worker_failure is not None:
            where = f" at {settings.livekit_url}" if settings.livekit_url else ""
            print(
                f"The worker could not connect to the LiveKit server{where} after {settings.livekit_max_retry} "
                f"retries ({type(self.worker_failure).__name__}): check LIVEKIT_URL, LIVEKIT_API_KEY and "
                "LIVEKIT_API_SECRET, and that the server is running.",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        if self.session_failure is not None:
            reason = self.session_failure.message if isinstance(self.session_failure, CompanionError) else ""
            print(
                f"The console's session failed ({type(self.session_failure).__name__}{': ' if reason else ''}{reason}); "
                "the log above says where.",
                file=sys.stderr,
            )
            return EXIT_SESSION_FAILED
        if isinstance(status, str):
            print(status, file=sys.stderr)
            return 1
        return status or 0


def _show_in_console(text: str) -> None:
    """In the text console, print ``text`` as LiveKit prints a reply (``● Agent`` and the lines under it). The
    console prints the events of a typed turn only, so what the agent says on its own (the greeting) would otherwise
    appear only in a DEBUG record. Anywhere else, nothing."""
    console = cli.AgentsConsole.get_instance()
    if not console.enabled or console.console_mode != "text" or not hasattr(console, "console"):
        return
    console.console.print()
    console.console.print(Text.assemble(("  \u25cf ", "#6BCB77"), ("Agent", "bold #6BCB77")))
    for line in text.split("\n"):
        console.console.print(Text(f"    {line}"))


class _JobCrashWatch(logging.Handler):
    """Console only: when the session's job fails (its entrypoint raised), record why and stop the console's main
    thread, as Ctrl+C would; LiveKit's console would otherwise wait for the session forever."""

    CRASH = "unhandled exception while running the job task"

    def __init__(self, outcome: _Outcome) -> None:
        super().__init__(level=logging.ERROR)
        self._outcome = outcome

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg != self.CRASH or self._outcome.session_failure is not None:
            return
        self._outcome.session_failure = record.exc_info[1] if record.exc_info and record.exc_info[1] else RuntimeError()
        main_thread = threading.main_thread().ident
        if main_thread is not None:
            signal.pthread_kill(main_thread, signal.SIGTERM)


def _serve_metrics(settings: Settings, command: str, cleanup: contextlib.ExitStack) -> None:
    """Our /metrics until ``cleanup`` closes. The console's session runs in this process; a worker's run in job
    processes, which write their histograms to the folder they find in PROMETHEUS_MULTIPROC_DIR (inherited: they
    start after this). A folder we made for it goes when the worker stops."""
    port = settings.metrics_port or 0
    directory = None
    if command != "console":
        directory = settings.prometheus_multiproc_dir or Path(
            cleanup.enter_context(tempfile.TemporaryDirectory(prefix="companion-metrics-"))
        )
        share_with_job_processes("PROMETHEUS_MULTIPROC_DIR", str(directory))
    metrics = MetricsServer.start(port=port, multiprocess_dir=directory)
    cleanup.callback(metrics.close)
    logger.info("per-turn metrics served", extra={"port": metrics.port})


if __name__ == "__main__":
    sys.exit(main(sys.argv))
