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
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
import typer
from livekit.agents import (
    NOT_GIVEN,
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
    llm,
)
from livekit.agents.stt import STT
from livekit.agents.vad import VAD
from livekit.agents.voice.agent_session import SessionConnectOptions  # not re-exported by livekit.agents in 1.8.9
from livekit.plugins import openai, silero
from openai import AsyncOpenAI
from rich.text import Text
from threadpoolctl import threadpool_limits

from core.config import OPENAI_API_URL, PLACEHOLDER_OPENAI_KEY, Settings, get_settings, share_with_job_processes
from core.errors import CompanionError, ConfigError, WriteForbiddenError
from core.log_filters import CONSOLE_NOISE, NotForUsFilter
from core.log_filters import install as install_log_filters
from core.preflight import EXIT_CONFIG, EXIT_SESSION_FAILED, LLM_COMMANDS, command_of, preflight, preflight_warnings
from core.validators import clean_text, is_user_id, parse_user_id
from infrastructure.embeddings import preload_embedder
from infrastructure.metrics import BatchReading, CacheReading, ClientReading, RetrievalReading, StorageReading
from infrastructure.metrics_server import MetricsServer
from infrastructure.startup_probe import probe
from infrastructure.storage import Profile
from infrastructure.turn_metrics import TurnMetrics, TurnTimings
from services.container import Process, Session, open_process, open_session
from services.context_budget import Compaction, HistoryItem
from services.health_report import batch_report, cache_report, clients_report, memory_report
from services.persona import Persona
from services.rag_service import TurnContext
from services.turn_retrieval import RetrievalStats
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


class Companion(Agent):
    """The companion persona, its per-turn memories and its tools."""

    def __init__(self, *, services: Session, process: Process, profile: Profile | None = None) -> None:
        self._persona = Persona.from_settings(process.settings)
        self._profile = profile
        super().__init__(instructions=self._persona.instructions(profile))
        self._services = services
        self._process = process
        self._turn: tuple[str, TurnContext] | None = None  # (user message id, its context)
        self._summary: tuple[Compaction, str] | None = None  # written, waiting for the end of a reply
        self._erase_asked_in: str | None = None  # the user message in which forget_everything asked to confirm
        self._hidden: frozenset[str] = frozenset()  # chat items erased or forgotten: never sent to the LLM again

    # Memories, once per user message, on every path ----------------------------------------------------------

    async def llm_node(
        self, chat_ctx: llm.ChatContext, tools: list[llm.Tool], model_settings: ModelSettings
    ) -> AsyncIterable[llm.ChatChunk | str]:
        if self._hidden:  # the request of the same turn was built before they were hidden
            chat_ctx = chat_ctx.copy()
            chat_ctx.items = [item for item in chat_ctx.items if item.id not in self._hidden]
        chat_ctx = _rewrite_text_of(chat_ctx, self._prompt_text, self._services.forgetting.scrub_arguments)
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
        return self._services.forgetting.scrub(clean_text(text))

    async def _context_for(self, chat_ctx: llm.ChatContext) -> TurnContext | None:
        newest = _newest_user_message(chat_ctx)
        if newest is None:
            return None
        if self._turn is not None and self._turn[0] == newest.id:
            return self._turn[1]  # a second llm_node call in the same turn (after a tool call)
        recent = _recent_turns(chat_ctx, before=newest.id)
        context = await self._services.retrieval.context(newest.text_content or "", recent)
        self._turn = (newest.id, context)
        return context

    # Long sessions: the oldest turns become a summary, in the background ------------------------------------

    def keep_history_within_budget(self) -> None:
        """At the end of each reply, when the agent is about to listen (no preemptive generation under way that a
        changed context would throw away): swap in the summary written since the last reply, then, past the
        token budget, start writing the next one in the background."""
        if self._summary is not None:
            (plan, text), self._summary = self._summary, None
            self._swap_in_summary(plan, text)
            return  # the next reply plans on the swapped history
        name = f"history-summary:{self._services.user_id}"
        if self._process.tasks.running(name):
            return
        plan = self._services.budget.plan(_history_items(self.chat_ctx))
        if plan is not None:
            self._process.tasks.spawn(self._summarise(plan), name=name)

    async def _summarise(self, plan: Compaction) -> None:
        try:
            self._summary = (plan, await self._services.budget.summarise(plan))
        except CompanionError as exc:  # the history stays whole; the next reply tries again
            logger.warning("history summary failed; keeping the turns", extra={"error": type(exc).__name__})

    def _swap_in_summary(self, plan: Compaction, text: str) -> None:
        """Replace exactly the items the summary read; whatever was added since stays. The summary is an assistant
        message (the user's words in it must not gain a system prompt's authority) dated like the last item it
        replaces, so the history stays in time order."""
        chat_ctx = self.chat_ctx.copy()
        folded = [item for item in chat_ctx.items if item.id in plan.ids]
        if not folded:
            return
        chat_ctx.items = [item for item in chat_ctx.items if item.id not in plan.ids]
        summary_id = f"{SUMMARY_ID}{self._services.budget.compactions}"
        chat_ctx.insert(
            llm.ChatMessage(id=summary_id, role="assistant", content=[text], created_at=folded[-1].created_at)
        )
        self._process.tasks.spawn(self.update_chat_ctx(chat_ctx), name=f"history-swap:{self._services.user_id}")
        logger.info("history summarised", extra={"folded_items": len(folded), "tokens_before": plan.history_tokens})

    # Tools ---------------------------------------------------------------------------------------------------

    @function_tool
    async def remember(
        self, context: RunContext, category: str, key: str, value: str, importance: float | None = None
    ) -> str:
        """Save something about the user to remember in later conversations.

        Args:
            category: one of FACT, PREFERENCE, GOAL, RELATIONSHIP, EVENT, HEALTH, ROUTINE, OTHER.
            key: a short topic name, such as "sister city" or "favourite drink".
            value: one sentence about the user, in the third person.
            importance: from 0 to 1; leave empty for the category's default.
        """
        memory = await _speakable(self._services.memories.save_memory(category, key, value, importance))
        return f"Saved: {memory.value}"

    @function_tool
    async def recall(self, context: RunContext, query: str) -> str:
        """Look up what you remember about the user on a topic."""
        found = await _speakable(self._services.rag.recall(query))
        if not found:
            return "Nothing remembered about that."
        return " ".join(f"{r.memory.value}." for r in found)

    @function_tool
    async def forget(self, context: RunContext, query: str) -> str:
        """Forget one thing the user asks you to forget, described in their words (such as "my bank PIN").
        To forget everything, use forget_everything instead."""
        if self._services.forgetting.asks_for_everything(query):
            return await self.forget_everything(context, confirmed=False)
        forgotten = await _speakable(self._services.forgetting.forget(query))
        if not forgotten:  # nothing saved: what was said of it in this conversation goes all the same
            dropped = await self._hide(self._services.forgetting.mentions(query))
            if await _speakable(self._services.forgetting.forget_said(query)) or dropped:
                return (
                    "Nothing like that was saved, and it is gone from this conversation too. Tell the user so, "
                    "without repeating it."
                )
            return "There was nothing like that to forget."
        self._profile = await _speakable(self._services.users.get_profile())  # its text, rewritten without it
        self._turn = None  # this turn's memories were found before: find them again for the answer
        await self.update_chat_ctx(
            _rewrite_text_of(self.chat_ctx.copy(), self._prompt_text, self._services.forgetting.scrub_arguments)
        )
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
        asked_in = _newest_user_message(self.chat_ctx)
        turn = asked_in.id if asked_in is not None else ""
        if not confirmed or self._erase_asked_in is None or self._erase_asked_in == turn:
            # The yes must come in a later message than the request: a model cannot confirm on its own.
            self._erase_asked_in = turn
            return (
                "Nothing is erased yet. Ask the user to confirm: everything you remember about them, their profile "
                "and your past conversations will be erased for good. Erase only if they say yes."
            )
        self._erase_asked_in = None
        await _speakable(self._services.forget_everything())
        self._profile = None
        await self.update_instructions(self._persona.instructions(None))
        await self._hide(lambda text: True)
        return (
            "Everything is erased: memories, profile and past conversations. Nothing more from this conversation "
            "will be kept either. Tell the user so, briefly."
        )

    async def _hide(self, mentions: Callable[[str], bool]) -> bool:
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

    @function_tool
    async def update_profile(self, context: RunContext, field: str, value: str) -> str:
        """Update the user's profile.

        Args:
            field: one of name, preferred_name, timezone (such as Europe/Lisbon), language (such as en).
            value: the new value.
        """
        if field not in ("name", "preferred_name", "timezone", "language"):
            raise ToolError("I can only change the name, preferred name, timezone or language.")
        profile = await _speakable(self._services.users.update_profile(**{field: value}))
        self._profile = profile
        await self.update_instructions(self._persona.instructions(profile))  # from the next reply on
        return f"Updated the {field.replace('_', ' ')}."

    # The health tools read the process's Prometheus instruments: the numbers /metrics serves for this process.

    @function_tool(name="getConnectionPoolStats")
    async def get_connection_pool_stats(self, context: RunContext) -> str:
        """How the connections are doing: each client (HTTP, database, Redis), its health and its connections."""
        await self._process.clients.health_check()
        return clients_report(ClientReading.read_all(self._process.metrics))

    @function_tool(name="getRedisCacheStats")
    async def get_redis_cache_stats(self, context: RunContext) -> str:
        """How the cache is doing: hit rate, mode and latency."""
        return cache_report(CacheReading.read(self._process.metrics))

    @function_tool(name="getDatabaseBatchStats")
    async def get_database_batch_stats(self, context: RunContext) -> str:
        """How the database write batching is doing."""
        metrics = self._process.metrics
        return batch_report(BatchReading.read(metrics), StorageReading.read(metrics))

    @function_tool(name="getMemoryStats")
    async def get_memory_stats(self, context: RunContext) -> str:
        """How many memories you hold about the user, and how retrieval is doing."""
        return memory_report(self._services.memories.stats(), RetrievalReading.read(self._process.metrics))


async def _speakable(work: Any) -> Any:
    """Turn our errors into a sentence the model may say (LiveKit's ToolError), never a traceback."""
    try:
        return await work
    except WriteForbiddenError:
        raise ToolError("I can't save anything in a guest conversation.") from None
    except CompanionError as exc:
        raise ToolError(exc.message if not exc.retryable else "That didn't work just now; try again soon.") from None


SUMMARY_ID = "companion.history-summary."
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

    One BLAS thread per job process: a worker runs several at once on the machine's cores, and OpenBLAS's threads
    keep spinning after a call, so a second thread mostly contends with the next small matrix product (measured in
    README, "Retrieval": search p95 at 10,000 memories 8 ms with two threads, 1 ms with one)."""
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
    """Start ``session`` with the Companion for ``services``' user: onboarding, greeting, transcript logging,
    one metrics line per turn."""
    await services.onboarding.run()
    if services.guard.can_write:
        await services.users.ensure_profile_exists()
    await services.conversations.start()
    turn_metrics = turn_metrics or TurnMetrics(metrics=process.metrics)
    profile = await services.users.get_profile()
    agent = Companion(services=services, process=process, profile=profile)

    last_user: dict[str, Any] = {}

    def on_item(event: ConversationItemAddedEvent) -> None:
        item = event.item
        if not isinstance(item, llm.ChatMessage) or item.role not in ("user", "assistant") or not item.text_content:
            return
        services.conversations.log_message(item.role, item.text_content)  # type: ignore[arg-type]
        if item.role == "user":
            last_user.clear()
            last_user.update(item.metrics, said=True)
            services.profiles.on_user_turn()
            return
        if last_user:  # an answer to the user (the greeting is not a turn)
            turn_metrics.record(_timings(last_user, dict(item.metrics), services.retrieval.stats))
            last_user.clear()
        # The next turn may point back to this reply: its vector is ready by then, computed while the user talks.
        process.tasks.spawn(services.rag.prepare(item.text_content), name=f"embed-reply:{services.user_id}")
        agent.keep_history_within_budget()
        if services.guard.can_write:  # the turn is answered: learn from it without competing with the reply
            recent = services.conversations.transcript[-4:]
            process.tasks.spawn(services.extractor.extract(recent), name=f"extract:{services.user_id}")

    session.on("conversation_item_added", on_item)
    await (session.start(agent=agent) if room is None else session.start(agent=agent, room=room))
    opening = await services.conversations.opening(profile)
    await session.say(opening.text)
    _show_in_console(opening.text)  # the console prints replies, not what the agent says unprompted
    return agent


def _timings(user: dict[str, Any], assistant: dict[str, Any], retrieval: RetrievalStats) -> TurnTimings:
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


async def finish_companion(
    *,
    process: Process,
    services: Session,
    providers: Providers | None = None,
    session: AgentSession | None = None,
    llm_budget: float = SESSION_END_LLM_BUDGET,
) -> None:
    """Session end (the job's shutdown callback), within LiveKit's ``shutdown_process_timeout``: the session closes
    first, so that LiveKit commits what the user said before hanging up; the transcript is stored before any LLM
    work; the summary and the profile refresh get ``llm_budget`` seconds each; the process closes last, whatever
    failed before it (its batcher holds the writes)."""
    try:
        if session is not None:
            await session.aclose()
        await process.batcher.flush(within=SESSION_END_FLUSH)
        finished = await services.conversations.finish(summary_within=llm_budget)
        if finished is not None and services.guard.can_write:
            async with asyncio.timeout(llm_budget):
                await services.profiles.generate()
    except TimeoutError:
        logger.warning("profile refresh took too long at session end; skipped")
    except CompanionError as exc:
        logger.warning("session end work failed", extra={"error": type(exc).__name__})
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


def build_session(providers: Providers, *, vad: VAD, turn_handling: TurnHandlingOptions | None = None) -> AgentSession:
    """The AgentSession: Silero VAD, LiveKit's built-in turn detector (its default, offline), our providers, and
    the text clean-up before speech. LiveKit's preemptive generation (on by default) starts llm_node, and so our
    retrieval, on the final transcript, while end-of-turn detection is still deciding."""
    return AgentSession(
        vad=vad,
        stt=providers.stt,
        llm=providers.llm,
        tts=providers.speech.tts,
        tts_text_transforms=TEXT_TRANSFORMS,
        turn_handling=turn_handling if turn_handling is not None else NOT_GIVEN,
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
    language = Persona.from_settings(settings).language_for(await services.users.get_profile())
    providers = build_providers(settings, client=process.clients.openai, language=language)
    session = build_session(providers, vad=ctx.proc.userdata["vad"])
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
