"""Memory's share of a turn: concurrent text sessions, each in a job process of its own, on this machine.

    python bench/turn.py                       1, 4 and 8 sessions; 50 turns with memory and 50 without, each
    python bench/turn.py --sessions 8 --turns 20 --pace 3 --memories 2000 [--no-vad] [--turn-detector vad]
    python bench/turn.py --quick               1 session, 3 + 3 turns, 200 memories, a fast pace (for tests)

For each count, every session gets a job process of its own, started together, the way LiveKit starts them on
Linux: forked from a forkserver that preloaded LiveKit's plugins and its warm-up (``livekit.agents.ipc._preload``;
with ``--turn-detector local``, the default, that warm-up loads LiveKit's end-of-turn model, as agent.py lets it for
TURN_DETECTOR=local, and the sessions' turn detection is that model; with ``vad`` neither). A job process does what agent.py's ``prewarm`` and ``entrypoint`` do, in text mode: one BLAS thread, the embedder
preloaded, Silero VAD loaded (unless ``--no-vad``), ``open_process`` / ``open_session`` on a SQLite file of its own
holding its user's memories (seeded beforehand, with their embeddings, from the bundled sets' real sentences,
repeated to ``--memories``), ``build_providers`` on the process's shared OpenAI client, a text-mode
``AgentSession`` and ``start_companion``. The LLM is a local OpenAI-compatible server in this process, shared by
all sessions; it streams a twelve-word reply at once and answers the services' own calls (extraction, summaries).

When every process is ready, all start talking: a turn every ``--pace`` seconds on average (uniformly jittered
between half and one and a half of it, counted from the previous turn's start), each turn a spoken-style line from
bench/data (5 to 60 words; follow-up questions come right after the line they refer back to). Turns come in pairs,
one with memory and one with retrieval bypassed (``TurnRetrieval`` wrapped to answer no memories at once), in a
random order, so both see the same load.

What is measured, per turn, on the machine's one wall clock (``time.time()``):
- ``*_on_ms`` / ``*_off_ms``: from just before ``session.run(user_input=...)`` to the reply's chat request reaching
  the fake server (its handler stamps the arrival in a response header); ``send_*``: to the moment httpx sends it
  (a request hook on the pool's HTTP client, which the providers use);
- ``retrieval_p95_ms``: ``TurnRetrieval``'s own time for the turns with memory, split into ``embed_*`` (the query's
  embedding calls, timed by a wrapper on the process's embedder) and ``retrieval_rest_*`` (analysis, search,
  formatting); ``miss_rate``: its deadline misses over those turns;
- RSS, PSS and USS of each job process (``/proc/self/smaps_rollup``) at start (imports done), after the embedder,
  after prewarm (with the VAD), with the session open (index loaded), and after the turns (taken when every
  process has finished its turns and none has exited): the largest process's;
- ``max_stall_ms``: the longest overshoot of a task that sleeps 5 ms in a loop, during the turns (on a busy 2-core
  machine this includes time the process waited for a core), and ``max_stall_loop_cpu_ms``, the CPU time the
  loop's own thread used within it; ``cpu_share_per_process``: CPU seconds per wall second during the turns.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import multiprocessing as mp
import os
import platform
import queue
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from aiohttp import web  # noqa: E402

from services.rag_service import TurnContext  # noqa: E402
from services.turn_retrieval import NO_MEMORIES, RetrievalStats, TurnRetrieval  # noqa: E402

DATA = REPO / "bench" / "data"
ARRIVED = "x-bench-arrived"  # the fake server's time.time() when a streamed chat request reached it
REPLY = "That sounds like a lot. Tell me more about how it went, I'd love to hear it."
STALL_TICK = 0.005
TARGETS = {"memory_share_p95_ms": 15.0, "miss_rate": 0.01, "rss_mb": 350.0}


# The turns a user says --------------------------------------------------------------------------------------


def spoken_lines() -> tuple[list[list[str]], list[str], list[tuple[str, str, str]]]:
    """From bench/data: episodes (one line, or a line and the follow-up that refers back to it), short remarks
    (the user's side of the sets' earlier turns), and memories as (category, key, value)."""
    episodes: list[list[str]] = []
    remarks: list[str] = []
    memories: list[tuple[str, str, str]] = []
    for path in sorted(DATA.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        memories += [(m.get("category", "OTHER").upper(), m["key"], m["value"]) for m in data["memories"]]
        for query in data["queries"]:
            earlier = [t["content"] if isinstance(t, dict) else str(t) for t in query.get("recent_turns", [])]
            said = earlier[0::2]  # the sets' earlier turns alternate user, assistant
            remarks += said
            episodes.append([*said[-1:], query["text"]])
    return episodes, remarks, memories


def user_turns(count: int, rng: random.Random) -> list[str]:
    """``count`` turns of 5 to 60 words: the sets' questions and follow-ups, a short one led by a remark, and now
    and then a longer turn of a few remarks and a question."""
    episodes, remarks, _ = spoken_lines()
    turns: list[str] = []
    while len(turns) < count:
        for line in rng.choice(episodes):
            words = line.split()
            if rng.random() < 0.15:  # a longer turn: something on their mind, then the question
                words = " ".join(rng.sample(remarks, 3)).split() + words
            while len(words) < 5:
                words = rng.choice(remarks).split() + words
            turns.append(" ".join(words[-60:]))
    return turns[:count]


# The fake LLM server ----------------------------------------------------------------------------------------


class FakeLLM:
    """An OpenAI-compatible chat server: streams :data:`REPLY` at once, stamping when the request arrived; the
    services' own (unstreamed) calls get an empty extraction, a summary or a profile."""

    def __init__(self) -> None:
        self.base_url = ""
        self.requests = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        arrived = time.time()
        self.requests += 1
        body = await request.json()
        if not body.get("stream"):
            return web.json_response(_completion(body, _background_answer(body)))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", ARRIVED: repr(arrived)})
        await response.prepare(request)
        await stream_reply(response, body)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _background_answer(body: dict[str, Any]) -> str:
    system = str(body["messages"][0].get("content", ""))
    if '"memories"' in system:
        return '{"memories": []}'
    if '"summary"' in system:
        return '{"summary": "They talked about their week.", "open_threads": []}'
    return "They talked about their week and the people in it."


def _chunk(body: dict[str, Any], delta: dict[str, Any], *, finish: str | None) -> dict[str, Any]:
    return {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model", "fake"), "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip


def _completion(body: dict[str, Any], text: str) -> dict[str, Any]:
    return {"id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}  # fmt: skip


async def stream_reply(response: web.StreamResponse, body: dict[str, Any]) -> None:
    """REPLY as a streamed chat completion, four words a chunk, then its stop chunk."""
    words = REPLY.split(" ")
    for i in range(0, len(words), 4):
        delta = {"content": " ".join(words[i : i + 4]) + " "} | ({"role": "assistant"} if i == 0 else {})
        await response.write(_event(_chunk(body, delta, finish=None)))
    await response.write(_event(_chunk(body, {}, finish="stop")))


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


# Seeding: a user's memories, stored with their embeddings, before any job process starts ---------------------


async def seed_embeddings(*, users: int, memories: int) -> tuple[list[tuple[str, str, str]], Any]:
    """The bundled sets' memories the users' seeds are drawn from, and their real MiniLM embeddings (each distinct
    text embedded once)."""
    from core.validators import normalize_key
    from infrastructure.embeddings.minilm import MiniLMEmbedder
    from services.memory_service import index_text

    _, _, sentences = spoken_lines()
    needed = sentences[: min(len(sentences), memories + users)]
    model = MiniLMEmbedder.load()
    return needed, await model.embed([index_text(normalize_key(k), v) for _, k, v in needed])


def seed_writes(user: uuid.UUID, n: int, *, needed: Sequence[tuple[str, str, str]], vectors: Any, memories: int,
                rng: random.Random, now: dt.datetime) -> list[Any]:  # fmt: skip
    """User number ``n``'s ``memories`` memories (as ``MemoryWrite`` rows): the sentences from a starting point of
    its own, repeated under new keys, dated over the last two years."""
    from core.categories import MemoryCategory
    from core.validators import normalize_key
    from infrastructure.storage import MemoryWrite

    writes, keys = [], set()
    for row in range(memories):
        i = (row + n) % len(needed)
        category, key, value = needed[i]
        kind = MemoryCategory(category) if category in frozenset(MemoryCategory) else MemoryCategory.OTHER
        at = now - dt.timedelta(days=rng.uniform(0, 700))
        key = normalize_key(key)[:50]
        key = key if (kind, key) not in keys else f"{key}_{row}"  # the sets share keys; repeats too
        keys.add((kind, key))
        writes.append(MemoryWrite(user, kind.value, key, value, kind.default_importance, "import", at,
                                  embedding=vectors[i]))  # fmt: skip
    return writes


async def seed_databases(folder: Path, *, users: int, memories: int, seed: int) -> list[tuple[str, Path]]:
    """One SQLite file per session, each for a user of its own holding ``memories`` memories: the bundled sets'
    sentences (each user from a different starting point), repeated under new keys, dated over the last two years,
    with their real MiniLM embeddings (each distinct text embedded once)."""
    from infrastructure.storage.sqlite import SqliteStorage

    needed, vectors = await seed_embeddings(users=users, memories=memories)
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    out = []
    for n in range(users):
        user, path = uuid.uuid4(), folder / f"user{n}.db"
        storage = await SqliteStorage.open(path)
        try:
            await storage.update_profile(user, {"name": f"Bench User {n}", "timezone": "Europe/London"}, at=now)
            writes = seed_writes(user, n, needed=needed, vectors=vectors, memories=memories, rng=rng, now=now)
            for start in range(0, len(writes), 500):
                await storage.upsert_memories(writes[start : start + 500], read_back=False)
        finally:
            await storage.aclose()
        out.append((str(user), path))
    return out


# One job process --------------------------------------------------------------------------------------------


@dataclass
class JobConfig:
    index: int
    user_id: str
    database: str
    base_url: str
    turns: list[tuple[str, str]]  # (what the user says, "on" | "off")
    pace: float
    seed: int
    vad: bool
    turn_detector: str


class SwitchedRetrieval:
    """``TurnRetrieval`` with a switch: bypassed, a turn gets no memories at once (nothing searched, nothing
    counted); else the real one answers. Its ``stats`` are the real one's (turns with memory only)."""

    def __init__(self, real: TurnRetrieval) -> None:
        self.real = real
        self.bypassed = False

    @property
    def stats(self) -> RetrievalStats:
        return self.real.stats

    @property
    def deadline(self) -> float:
        return self.real.deadline

    async def context(self, text: str, recent_turns: Sequence[str] = ()) -> TurnContext:
        if self.bypassed:
            return NO_MEMORIES
        return await self.real.context(text, recent_turns)


@dataclass
class StallMonitor:
    """Sleeps 5 ms in a loop and keeps how late it woke up: the event loop's stalls (and waits for a core). Beside
    each, the CPU time the loop's thread spent meanwhile: a stall with little of it was a wait for a core or the
    GIL, one with as much was the loop's own work."""

    stalls_ms: list[float] = field(default_factory=list)
    busy_ms: list[float] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            started, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(STALL_TICK)
            self.stalls_ms.append((time.perf_counter() - started - STALL_TICK) * 1000)
            self.busy_ms.append((time.thread_time() - cpu) * 1000)

    def summary(self) -> dict[str, float]:
        if not self.stalls_ms:
            return {"max": 0.0, "p99": 0.0, "over_50": 0, "busy_at_max": 0.0, "max_busy": 0.0}
        worst = max(range(len(self.stalls_ms)), key=self.stalls_ms.__getitem__)
        return {"max": round(self.stalls_ms[worst], 2), "p99": round(_pct(sorted(self.stalls_ms), 0.99), 2),
                "over_50": sum(1 for s in self.stalls_ms if s > 50), "busy_at_max": round(self.busy_ms[worst], 2),
                "max_busy": round(max(self.busy_ms), 2)}  # fmt: skip


@dataclass
class Signals:
    """The orchestrator and its job processes: each says it is ready (set up), all start on ``go``; each says its
    turns are done, and all measure their memory on ``done``, while every one of them is still alive (PSS splits
    shared pages among the processes alive at the time)."""

    ready: Any
    go: Any
    done: Any
    results: Any


def _time_embeddings(embedder: Any) -> list[float]:
    """Wall milliseconds of each ``embed`` call on this embedder from now on (a wrapper on the instance, so every
    holder of it, RagService included, goes through it); the caller clears the list between turns."""
    times: list[float] = []
    embed = embedder.embed

    async def timed(texts: Sequence[str]) -> Any:
        started = time.perf_counter()
        try:
            return await embed(texts)
        finally:
            times.append((time.perf_counter() - started) * 1000)

    embedder.embed = timed
    return times


def memory_mb() -> dict[str, float]:
    """This process's RSS, PSS and USS (its private pages: what it would free on exit) in MB, from
    /proc/self/smaps_rollup. RSS counts in full the pages shared with the forkserver it was forked from."""
    kb = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            kb[name] = int(rest.split()[0])
    uss = kb["Private_Clean"] + kb["Private_Dirty"]
    return {"rss": round(kb["Rss"] / 1024, 1), "pss": round(kb["Pss"] / 1024, 1), "uss": round(uss / 1024, 1)}


def job_process(config: JobConfig, signals: Signals) -> None:
    """A LiveKit job process's life, in text mode: prewarm, the session, the turns, the session's end."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("livekit.agents").setLevel(logging.ERROR)  # deprecation notes, not the bench's business
    from threadpoolctl import threadpool_limits

    from core.config import Settings
    from infrastructure.embeddings import preload_embedder

    report: dict[str, Any] = {"index": config.index, "memory": {"start": memory_mb()}}
    settings = Settings(_env_file=None, database_url=f"sqlite:///{config.database}",  # type: ignore[call-arg]
                        openai_base_url=config.base_url, openai_api_key="bench",
                        turn_detector=config.turn_detector)  # fmt: skip
    # What agent.py's prewarm does, step by step, so that each step's memory shows.
    started = time.perf_counter()
    threadpool_limits(limits=1, user_api="blas")
    embedder = preload_embedder(settings)
    report["embedder_load_s"] = round(time.perf_counter() - started, 3)
    report["memory"]["embedder"] = memory_mb()
    userdata: dict[str, Any] = {"embedder": embedder}  # held for the session, as JobProcess.userdata is
    if config.vad:
        from livekit.plugins import silero

        started = time.perf_counter()
        userdata["vad"] = silero.VAD.load()
        report["vad_load_s"] = round(time.perf_counter() - started, 3)
    report["memory"]["prewarm"] = memory_mb()
    try:
        asyncio.run(_job(config, settings, embedder, report, signals))
    except Exception as exc:  # the orchestrator reports it; a traceback goes to stderr
        logging.getLogger("bench.turn").exception("job process failed")
        report["error"] = type(exc).__name__
    signals.results.put(report)


async def _job(config: JobConfig, settings: Any, embedder: Any, report: dict[str, Any], signals: Signals) -> None:
    from livekit.agents import AgentSession
    from prometheus_client import CollectorRegistry

    from agent import SESSION_CONNECT_OPTIONS, build_providers, finish_companion, start_companion, turn_detection
    from infrastructure.turn_metrics import TurnMetrics
    from services.container import open_process, open_session

    started = time.perf_counter()
    process = await open_process(settings, embedder=embedder)
    embeds = _time_embeddings(process.embedder)
    services = await open_session(process, user_id=uuid.UUID(config.user_id))
    report["session_open_s"] = round(time.perf_counter() - started, 3)
    report["memories"] = len(services.memories)
    switch = SwitchedRetrieval(services.retrieval)
    services.retrieval = switch  # type: ignore[assignment]

    sent: list[tuple[float, float]] = []  # (sent, arrived) of this turn's streamed chat requests

    async def on_request(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            request.extensions["bench_sent"] = time.time()

    async def on_response(response: httpx.Response) -> None:
        if ARRIVED in response.headers and "bench_sent" in response.request.extensions:
            sent.append((response.request.extensions["bench_sent"], float(response.headers[ARRIVED])))

    http = process.clients.http
    http.event_hooks["request"].append(on_request)
    http.event_hooks["response"].append(on_response)
    providers = build_providers(settings, client=process.clients.openai)
    session = AgentSession(llm=providers.llm, conn_options=SESSION_CONNECT_OPTIONS,
                           turn_handling={"turn_detection": turn_detection(settings)})  # fmt: skip
    metrics = TurnMetrics(registry=CollectorRegistry())
    await start_companion(session, process=process, services=services, turn_metrics=metrics)
    report["memory"]["session"] = memory_mb()

    signals.ready.put(config.index)
    await asyncio.to_thread(signals.go.wait)
    rng = random.Random(config.seed)
    monitor = StallMonitor()
    watching = asyncio.create_task(monitor.run(), name="stall-monitor")
    turns = []
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    try:
        loop = asyncio.get_running_loop()
        due = loop.time() + rng.uniform(0, config.pace)
        for text, mode in config.turns:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = max(due, loop.time()) + rng.uniform(0.5, 1.5) * config.pace
            switch.bypassed = mode == "off"
            sent.clear()
            embeds.clear()
            misses = switch.stats.deadline_misses
            submitted = time.time()
            await session.run(user_input=text)
            turn: dict[str, Any] = {"mode": mode, "words": len(text.split())}
            if sent:
                turn["send_ms"] = (sent[0][0] - submitted) * 1000
                turn["arrive_ms"] = (sent[0][1] - submitted) * 1000
            if mode == "on":
                turn["retrieval_ms"] = switch.stats.last_ms
                turn["embed_ms"] = sum(embeds)
                turn["missed"] = switch.stats.deadline_misses > misses
            turns.append(turn)
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
    report["cpu_share"] = (time.process_time() - cpu_started) / (time.perf_counter() - wall_started)
    signals.ready.put(config.index)
    await asyncio.to_thread(signals.done.wait)
    report["memory"]["after_turns"] = memory_mb()
    report["turns"] = turns
    report["stats"] = asdict(switch.stats)
    report["stall_ms"] = monitor.summary()
    await finish_companion(process=process, services=services, providers=providers, session=session, llm_budget=5.0)


# The orchestrator -------------------------------------------------------------------------------------------


def forkserver_context(*, local_inference: bool) -> Any:
    """A forkserver that preloads what LiveKit's worker preloads on Linux (livekit/agents/worker.py): the
    registered plugins, then its warm-up and the freeze. The warm-up loads the local VAD and end-of-turn models
    into the forkserver, to be shared by every job process, unless ``local_inference`` is False (LiveKit's
    LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE=0)."""
    from livekit.agents import Plugin

    import agent  # noqa: F401  # registers the plugins agent.py uses, as the worker's import of it does
    from core.config import share_with_job_processes

    if not local_inference:
        share_with_job_processes("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")  # read by the forkserver

    context = mp.get_context("forkserver")
    packages = list(dict.fromkeys(p.package for p in Plugin.registered_plugins))
    context.set_forkserver_preload([*packages, "livekit.agents.ipc._preload", "livekit.agents.ipc._preload_freeze"])
    return context


async def run_count(sessions: int, args: argparse.Namespace, databases: list[tuple[str, Path]], folder: Path,
                    server: FakeLLM, context: Any) -> dict[str, Any]:  # fmt: skip
    """``sessions`` job processes, started together; their turns pooled."""
    signals = Signals(ready=context.Queue(), go=context.Event(), done=context.Event(), results=context.Queue())
    processes = []
    for n in range(sessions):
        user, template = databases[n]
        database = folder / f"{sessions}-{n}.db"
        shutil.copy(template, database)
        rng = random.Random(args.seed * 1000 + sessions * 10 + n)
        modes = [mode for _ in range(args.turns) for mode in rng.sample(["on", "off"], 2)]
        config = JobConfig(index=n, user_id=user, database=str(database), base_url=server.base_url,
                           turns=list(zip(user_turns(len(modes), rng), modes, strict=True)), pace=args.pace,
                           seed=rng.randrange(1 << 30), vad=not args.no_vad,
                           turn_detector=args.turn_detector)  # fmt: skip
        process = context.Process(target=job_process, args=(config, signals), name=f"job-{n}")
        process.start()
        processes.append(process)
    load_before = os.getloadavg()
    reports = []
    try:
        for _ in range(sessions):
            await asyncio.to_thread(signals.ready.get, timeout=args.setup_timeout)
        signals.go.set()
        deadline = time.monotonic() + args.pace * 2 * args.turns * 2 + 120
        for _ in range(sessions):
            await asyncio.to_thread(signals.ready.get, timeout=max(1.0, deadline - time.monotonic()))
        signals.done.set()
        while len(reports) < sessions:
            reports.append(await asyncio.to_thread(signals.results.get, timeout=max(1.0, deadline - time.monotonic())))
    except queue.Empty:
        raise SystemExit(f"{sessions} sessions: a job process did not answer in time") from None
    finally:
        for process in processes:
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.kill()
    failed = [r for r in reports if "error" in r]
    if failed:
        raise SystemExit(f"{sessions} sessions: job processes failed: {[(r['index'], r['error']) for r in failed]}")
    return summarise(reports, load_before=load_before)


def _pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (0 for none)."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, max(0, round(q * len(values) + 0.5) - 1))]


def summarise(reports: list[dict[str, Any]], *, load_before: tuple[float, float, float]) -> dict[str, Any]:
    turns = [t for r in reports for t in r["turns"]]
    out: dict[str, Any] = {}
    for mode in ("on", "off"):
        arrive = sorted(t["arrive_ms"] for t in turns if t["mode"] == mode and "arrive_ms" in t)
        send = sorted(t["send_ms"] for t in turns if t["mode"] == mode and "send_ms" in t)
        out[f"turns_{mode}"] = len(arrive)
        for q in (50, 95, 99):
            out[f"p{q}_{mode}_ms"] = round(_pct(arrive, q / 100), 2)
            out[f"send_p{q}_{mode}_ms"] = round(_pct(send, q / 100), 2)
    out["memory_share_p50_ms"] = round(out["p50_on_ms"] - out["p50_off_ms"], 2)
    out["memory_share_p95_ms"] = round(out["p95_on_ms"] - out["p95_off_ms"], 2)
    retrieval = sorted(t["retrieval_ms"] for t in turns if "retrieval_ms" in t)
    out["retrieval_p50_ms"] = round(_pct(retrieval, 0.5), 2)
    out["retrieval_p95_ms"] = round(_pct(retrieval, 0.95), 2)
    out["retrieval_p99_ms"] = round(_pct(retrieval, 0.99), 2)
    embedding = sorted(t["embed_ms"] for t in turns if "embed_ms" in t)
    rest = sorted(t["retrieval_ms"] - t["embed_ms"] for t in turns if "embed_ms" in t)
    out["embed_p50_ms"], out["embed_p95_ms"] = round(_pct(embedding, 0.5), 2), round(_pct(embedding, 0.95), 2)
    out["retrieval_rest_p50_ms"], out["retrieval_rest_p95_ms"] = round(_pct(rest, 0.5), 2), round(_pct(rest, 0.95), 2)
    out["cpu_share_per_process"] = round(statistics.fmean(r["cpu_share"] for r in reports), 3)
    retrieved = sum(r["stats"]["turns"] for r in reports)
    out["deadline_misses"] = sum(r["stats"]["deadline_misses"] for r in reports)
    out["retrieval_failures"] = sum(r["stats"]["failures"] for r in reports)
    out["miss_rate"] = round(out["deadline_misses"] / retrieved, 4) if retrieved else 0.0
    out["turns_without_request"] = sum(1 for t in turns if "arrive_ms" not in t)
    out["words_per_turn_median"] = statistics.median(t["words"] for t in turns) if turns else 0
    for stage in ("start", "embedder", "prewarm", "session", "after_turns"):
        for kind in ("rss", "pss", "uss"):
            out[f"{kind}_mb_{stage}"] = max(r["memory"][stage][kind] for r in reports)
    out["rss_mb_after_turns_mean"] = round(statistics.fmean(r["memory"]["after_turns"]["rss"] for r in reports), 1)
    out["vad_rss_mb"] = round(max(r["memory"]["prewarm"]["rss"] - r["memory"]["embedder"]["rss"] for r in reports), 1)
    out["vad_pss_mb"] = round(max(r["memory"]["prewarm"]["pss"] - r["memory"]["embedder"]["pss"] for r in reports), 1)
    out["vad_uss_mb"] = round(max(r["memory"]["prewarm"]["uss"] - r["memory"]["embedder"]["uss"] for r in reports), 1)
    out["vad_load_s"] = max((r.get("vad_load_s", 0.0) for r in reports), default=0.0)
    out["embedder_load_s"] = max(r["embedder_load_s"] for r in reports)
    out["session_open_s"] = max(r["session_open_s"] for r in reports)
    out["memories_per_user"] = min(r["memories"] for r in reports)
    out["max_stall_ms"] = max(r["stall_ms"]["max"] for r in reports)
    out["stall_p99_ms"] = max(r["stall_ms"]["p99"] for r in reports)
    out["stalls_over_50ms"] = sum(r["stall_ms"]["over_50"] for r in reports)
    worst = max(reports, key=lambda r: r["stall_ms"]["max"])
    out["max_stall_loop_cpu_ms"] = worst["stall_ms"]["busy_at_max"]  # the loop's own CPU within the longest stall
    out["max_loop_cpu_per_tick_ms"] = max(r["stall_ms"]["max_busy"] for r in reports)
    out["loadavg_before"] = [round(x, 2) for x in load_before]
    out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    context = forkserver_context(local_inference=args.turn_detector == "local")  # as agent.py's main decides
    server = FakeLLM()
    await server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-turn-") as tmp:
            folder = Path(tmp)
            databases = await seed_databases(folder, users=max(args.sessions), memories=args.memories, seed=args.seed)
            report: dict[str, Any] = {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
                },  # fmt: skip
                "config": {
                    "turns_per_mode": args.turns,
                    "pace_s": args.pace,
                    "memories": args.memories,
                    "vad": not args.no_vad,
                    "turn_detector": args.turn_detector,
                    "forkserver_preloads_models": args.turn_detector == "local",
                    "database": "sqlite",
                    "seed": args.seed,
                },  # fmt: skip
                "targets": TARGETS,
                "sessions": {},
            }
            for sessions in args.sessions:
                report["sessions"][str(sessions)] = await run_count(sessions, args, databases, folder, server, context)
            report["llm_requests"] = server.requests
            return report
    finally:
        await server.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8], help="concurrent sessions, per run")
    parser.add_argument("--turns", type=int, default=50, help="turns with memory per session (as many without)")
    parser.add_argument("--pace", type=float, default=3.0, help="seconds between a user's turns, on average")
    parser.add_argument("--memories", type=int, default=2_000, help="memories per user")
    parser.add_argument("--no-vad", action="store_true", help="prewarm without Silero VAD")
    parser.add_argument(
        "--turn-detector",
        choices=["local", "vad"],
        default="local",
        help="TURN_DETECTOR of the sessions; with vad the forkserver preloads no local model, as agent.py's main sets",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--setup-timeout", type=float, default=300.0, help="seconds for the job processes' setup")
    parser.add_argument("--quick", action="store_true", help="1 session, 3 + 3 turns, 200 memories, 0.3 s pace")
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.turns, args.pace, args.memories = [1], 3, 0.3, 200
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
