"""Proof at scale: K workers, each running M text sessions in job processes of their own, against one PostgreSQL and
one Redis, with users whose two sessions run on different workers.

    python bench/scale.py                      2 workers x 3 sessions, 20 + 20 turns each, 3 s pace, 2,000 memories
    python bench/scale.py --workers 2 --sessions 3 --turns 20 --pace 3 --memories 2000 --probes 3
                          [--postgres postgresql://admin...] [--redis redis://...]
    python bench/scale.py --quick              2 workers x 1 session (one user), 3 + 3 turns, 200 memories, 0.5 s pace

Each worker is a process of its own (spawned) with a forkserver of its own, which preloads what LiveKit's worker
preloads (``bench/turn.py``'s ``forkserver_context``); it forks one job process per session, as LiveKit does. The
sessions' turn detection is TURN_DETECTOR=vad, so no forkserver or job process maps LiveKit's 244 MB end-of-turn
model. A job process does what agent.py's ``prewarm`` and ``entrypoint`` do, in text mode: the embedder and Silero
VAD load first; then, when every job process of every worker is prewarmed, all open at once (``open_process``,
``open_session``, which loads the user's memories, the ``AgentSession`` and ``start_companion``): that burst is the
session-open throughput. Storage is a database of the bench's own on the PostgreSQL server (created, migrated with
supabase/migrations, dropped at the end), the cache a Redis key prefix of its own (deleted at the end); each job
process has the default asyncpg pool (1 to 10 connections) and its own outbox folder.

Users. Sessions are paired across workers: the two sessions of one user (seeded with ``--memories`` memories) run on
different workers. Each of them, ``--probes`` times, asks the companion to remember a fact with a made-up name in it
(the fake LLM answers with a ``remember`` tool call: a compare-and-set save); the moment the save returns, the other
session hears of it (a queue between the processes, not part of the product) and (1) catches up at once on a second
``UserMemory`` of the user, outside its conversation, timing when it holds the fact: the pure data lag; (2) makes
its next turn, at its own pace, a question about the fact, and the fake server reports whether that turn's LLM
request carries the name: the time a change takes to reach another session's reply. A question whose request lacks
the name is a miss.

Turns: a turn every ``--pace`` seconds on average (jittered between half and one and a half of it), spoken-style
lines from bench/data; turns come in pairs, one with memory and one with retrieval bypassed, as in bench/turn.py;
memory's share of a turn is the difference of their message-to-LLM-request times (p50 and p95, all sessions).

Database connections: the server's view, ``pg_stat_activity`` for the bench database every 100 ms during the run
(each job process names its connections by ``application_name``), and each pool's own (size and connections in
use, every 50 ms); Redis connections the same way (each process's redis-py pool, and the server's client count,
which counts other users of a shared Redis too). Memory: RSS, PSS and USS of every job process (prewarmed, session open, after the turns).
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
import secrets
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from aiohttp import web  # noqa: E402

from bench.turn import (  # noqa: E402
    ARRIVED,
    FakeLLM,
    SwitchedRetrieval,
    _background_answer,
    _chunk,
    _completion,
    _event,
    _pct,
    forkserver_context,
    memory_mb,
    seed_embeddings,
    seed_writes,
    stream_reply,
    user_turns,
)
from core.config import Settings  # noqa: E402

CARRIED = "x-bench-carried"  # the fact names the fake server found in a streamed chat request
REMEMBER = "Remember that "
POOL_MAX = Settings.model_fields["database_pool_max_size"].default  # every job process's pool, at most
RELATIONS = ["neighbour", "cousin", "landlord", "dentist", "piano teacher", "barber", "godmother", "old flatmate"]
PETS = ["parrot", "tortoise", "ferret", "goldfish", "iguana", "hamster", "donkey", "canary"]
SYLLABLES = ["zor", "vath", "quel", "brim", "tano", "wex", "lup", "dris", "mork", "yan", "fel", "gorp"]


@dataclass(frozen=True)
class Fact:
    """What one session asks the companion to remember, and what the other then asks about. ``name`` is made up, so
    a request carries the fact exactly when it carries the name."""

    name: str
    key: str
    value: str
    question: str
    category: str = "RELATIONSHIP"


def make_facts(count: int, rng: random.Random) -> list[Fact]:
    combos = rng.sample([(r, p) for r in RELATIONS for p in PETS], count)
    names: set[str] = set()
    facts = []
    for relation, pet in combos:
        name = ""
        while not name or name in names:
            name = "".join(rng.sample(SYLLABLES, 3)).capitalize()
        names.add(name)
        facts.append(Fact(name=name, key=f"{relation} {pet}", value=f"Their {relation} has a {pet} called {name}",
                          question=f"What is my {relation}'s {pet} called again?"))  # fmt: skip
    return facts


# The fake LLM: bench/turn.py's, which also answers "Remember that ..." with a remember tool call -------------


class ScaleLLM(FakeLLM):
    """bench/turn.py's fake server; a streamed request also gets the fact names it carries (in a header), and a user
    message "Remember that <value>" of a known fact gets a ``remember`` tool call for it."""

    def __init__(self, facts: Sequence[Fact]) -> None:
        super().__init__()
        self._facts = {f.value: f for f in facts}
        self._calls = 0

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        arrived = time.time()
        self.requests += 1
        body = await request.json()
        if not body.get("stream"):
            return web.json_response(_completion(body, _background_answer(body)))
        text = json.dumps(body["messages"], ensure_ascii=False)
        carried = ",".join(f.name for f in self._facts.values() if f.name in text)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", ARRIVED: repr(arrived), CARRIED: carried}
        )
        await response.prepare(request)
        last = body["messages"][-1]
        said = last.get("content") if last.get("role") == "user" else None
        said = " ".join(p.get("text", "") for p in said) if isinstance(said, list) else str(said or "")
        fact = self._facts.get(said.removeprefix(REMEMBER)) if said.startswith(REMEMBER) else None
        if fact is not None:
            self._calls += 1
            arguments = json.dumps({"category": fact.category, "key": fact.key, "value": fact.value})
            call = {"index": 0, "id": f"call_{self._calls}", "type": "function",
                    "function": {"name": "remember", "arguments": arguments}}  # fmt: skip
            await response.write(_event(_chunk(body, {"role": "assistant", "tool_calls": [call]}, finish=None)))
            await response.write(_event(_chunk(body, {}, finish="tool_calls")))
        else:
            await stream_reply(response, body)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


# One job process --------------------------------------------------------------------------------------------


@dataclass
class ScaleJob:
    worker: int
    slot: int
    name: str  # "w0-s1": the job process's application_name and LLM model name
    user_id: str
    dsn: str
    redis_url: str
    redis_prefix: str
    outbox: str
    base_url: str
    turns: list[tuple[str, str]]  # (what the user says, "on" | "off")
    remembers: dict[int, Fact]  # before which of ``turns`` a remember turn comes
    expected: int  # facts the user's other session will save, each to be asked about here
    partner: int | None  # the index of the other session's inbox
    inbox: int
    pace: float
    seed: int
    vad: bool


@dataclass
class Signals:
    """Every job process says it is prewarmed, then all open on ``open``; each says its session is open, then all
    talk on ``go``; each says its turns are done, then all measure memory on ``done`` (while all are alive)."""

    ready: Any
    open: Any
    go: Any
    done: Any
    results: Any
    inboxes: list[Any]


def job_process(job: ScaleJob, signals: Signals) -> None:
    """A LiveKit job process's life, in text mode: prewarm, then the session, its turns and its end."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("livekit.agents").setLevel(logging.ERROR)
    from threadpoolctl import threadpool_limits

    from core.config import Settings
    from infrastructure.embeddings import preload_embedder

    report: dict[str, Any] = {"name": job.name, "worker": job.worker, "memory": {}}
    settings = Settings(_env_file=None, database_url=job.dsn, redis_url=job.redis_url,  # type: ignore[call-arg]
                        redis_key_prefix=job.redis_prefix, outbox_dir=Path(job.outbox), openai_base_url=job.base_url,
                        openai_api_key="bench", llm_model=job.name, turn_detector="vad")  # fmt: skip
    threadpool_limits(limits=1, user_api="blas")
    userdata: dict[str, Any] = {"embedder": preload_embedder(settings)}  # held for the session, as JobProcess.userdata
    if job.vad:
        from livekit.plugins import silero

        userdata["vad"] = silero.VAD.load()
    report["memory"]["prewarm"] = memory_mb()
    signals.ready.put(job.name)
    try:
        asyncio.run(_job(job, settings, userdata["embedder"], report, signals))
    except Exception as exc:  # the orchestrator reports it; a traceback goes to stderr
        logging.getLogger("bench.scale").exception("job process failed")
        report["error"] = type(exc).__name__
        signals.ready.put(job.name)  # whichever wait the orchestrator is in goes on
    signals.results.put(report)


async def _job(job: ScaleJob, settings: Any, embedder: Any, report: dict[str, Any], signals: Signals) -> None:
    from livekit.agents import AgentSession
    from prometheus_client import CollectorRegistry

    from agent import SESSION_CONNECT_OPTIONS, build_providers, finish_companion, start_companion, turn_detection
    from core.validators import WriteGuard
    from infrastructure.turn_metrics import TurnMetrics
    from services.container import open_process, open_session
    from services.user_memory import UserMemory

    await asyncio.to_thread(signals.open.wait)
    opened = time.time()
    process = await open_process(settings, embedder=embedder)
    user = uuid.UUID(job.user_id)
    services = await open_session(process, user_id=user)
    switch = SwitchedRetrieval(services.retrieval)
    services.retrieval = switch  # type: ignore[assignment]
    responses: list[tuple[float, float, str]] = []  # (sent, arrived, carried) of this turn's streamed requests

    async def on_request(request: httpx.Request) -> None:
        if request.url.path.endswith("/chat/completions"):
            request.extensions["bench_sent"] = time.time()

    async def on_response(response: httpx.Response) -> None:
        if ARRIVED in response.headers and "bench_sent" in response.request.extensions:
            sent = response.request.extensions["bench_sent"]
            responses.append((sent, float(response.headers[ARRIVED]), response.headers.get(CARRIED, "")))

    process.clients.http.event_hooks["request"].append(on_request)
    process.clients.http.event_hooks["response"].append(on_response)
    providers = build_providers(settings, client=process.clients.openai)
    session = AgentSession(llm=providers.llm, conn_options=SESSION_CONNECT_OPTIONS,
                           turn_handling={"turn_detection": turn_detection(settings)})  # fmt: skip
    await start_companion(session, process=process, services=services,
                          turn_metrics=TurnMetrics(registry=CollectorRegistry()))  # fmt: skip
    report["open"] = [opened, time.time()]
    report["memories"] = len(services.memories)
    report["memory"]["session"] = memory_mb()

    # The other session's saves: heard the moment they return, caught up with at once outside the conversation.
    observer = UserMemory(user_id=user, guard=WriteGuard(user_id=user), storage=process.storage,
                          batcher=process.batcher, embedder=process.embedder,
                          analyzer=services.memories.analyzer)  # fmt: skip
    observer.version = await process.storage.user_version(user)  # only what changes from now on
    facts = {f.value: f for f in job.remembers.values()}
    saves: list[dict[str, Any]] = []
    real_save = services.memories.save_memory

    async def stamped_save(category: str, key: str, value: str, *args: Any, **kwargs: Any) -> Any:
        started = time.time()
        saved = await real_save(category, key, value, *args, **kwargs)
        ended = time.time()
        fact = facts.get(value)
        if fact is not None:
            saves.append({"name": fact.name, "won": saved.won, "queued": saved.queued, "started": started,
                          "ended": ended})  # fmt: skip
            if job.partner is not None:
                notice = {"fact": asdict(fact), "started": started, "ended": ended, "won": saved.won}
                signals.inboxes[job.partner].put(notice)
        return saved

    services.memories.save_memory = stamped_save  # type: ignore[method-assign]
    heard: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    held: list[dict[str, Any]] = []
    listening = asyncio.create_task(_listen(job, signals, observer, heard, held), name="bench-inbox")
    pool = getattr(process.storage, "pool", None)
    pool_samples: list[tuple[int, int, int]] = []
    sampling = asyncio.create_task(_sample_pools(pool, process.clients.redis, pool_samples), name="bench-pools")

    signals.ready.put(job.name)
    await asyncio.to_thread(signals.go.wait)
    rng = random.Random(job.seed)
    turns: list[dict[str, Any]] = []
    asked = 0
    loop = asyncio.get_running_loop()
    due = loop.time() + rng.uniform(0, job.pace)
    plan: list[tuple[str, str, Fact | None]] = []
    for i, (text, mode) in enumerate(job.turns):
        if i in job.remembers:
            fact = job.remembers[i]
            plan.append((REMEMBER + fact.value, "remember", fact))
        plan.append((text, mode, None))
    try:
        while plan or asked < job.expected:
            early = None
            if not plan and heard.empty():  # the other session's last saves may still come
                try:
                    async with asyncio.timeout(job.pace * 6 + 30):
                        early = await heard.get()
                except TimeoutError:
                    break
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = max(due, loop.time()) + rng.uniform(0.5, 1.5) * job.pace
            notice = early if early is not None else (None if heard.empty() else heard.get_nowait())
            if notice is not None:  # the turn after the other session saved asks about what it saved
                asked += 1
                fact = Fact(**notice["fact"])
                text, mode = fact.question, "ask"
            else:
                text, mode, fact = plan.pop(0)
            switch.bypassed = mode == "off"
            responses.clear()
            submitted = time.time()
            await session.run(user_input=text)
            turn: dict[str, Any] = {"mode": mode}
            if responses:
                turn["arrive_ms"] = (responses[0][1] - submitted) * 1000
            if mode == "ask" and fact is not None:
                first = responses[0] if responses else None
                turn |= {"name": fact.name, "submitted": submitted, "saved_started": notice["started"],
                         "saved_ended": notice["ended"], "won": notice["won"],
                         "arrived": first[1] if first else None,
                         "carried": first is not None and fact.name in first[2].split(","),
                         "held": services.memories.get(fact.category, _key(fact.key)) is not None}  # fmt: skip
            turns.append(turn)
    finally:
        listening.cancel()
        sampling.cancel()
        for task in (listening, sampling):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    signals.ready.put(job.name)
    await asyncio.to_thread(signals.done.wait)
    report["memory"]["after_turns"] = memory_mb()
    report |= {"turns": turns, "saves": saves, "held": held, "stats": asdict(switch.stats),
               "pool": pool_samples, "pool_max_size": pool.get_max_size() if pool is not None else None}  # fmt: skip
    await finish_companion(process=process, services=services, providers=providers, session=session, llm_budget=5.0)


def _key(key: str) -> str:
    from core.validators import normalize_key

    return normalize_key(key)


async def _listen(job: ScaleJob, signals: Signals, observer: Any, heard: asyncio.Queue[dict[str, Any]],
                  held: list[dict[str, Any]]) -> None:  # fmt: skip
    """Each save the other session reports: caught up with at once on ``observer`` (the pure data lag), then handed
    to the turn loop, whose next turn asks about it."""
    inbox = signals.inboxes[job.inbox]
    while True:
        try:
            notice = await asyncio.to_thread(inbox.get, timeout=0.2)
        except queue.Empty:
            continue
        fact = Fact(**notice["fact"])
        heard_at = time.time()
        await observer.catch_up()
        holds = observer.get(fact.category, _key(fact.key))
        held.append({"name": fact.name, "saved_started": notice["started"], "saved_ended": notice["ended"],
                     "heard": heard_at, "held_at": time.time(), "holds": holds is not None and holds.value == fact.value})  # fmt: skip
        heard.put_nowait(notice)


async def _sample_pools(pool: Any, redis: Any, samples: list[tuple[int, int, int]]) -> None:
    """Every 50 ms: the asyncpg pool's size and connections in use, and the connections redis-py's pool holds."""
    while True:
        size = pool.get_size() if pool is not None else 0
        used = size - pool.get_idle_size() if pool is not None else 0
        held = 0
        if redis is not None:
            connections = redis.connection_pool
            held = len(connections._available_connections) + len(connections._in_use_connections)
        samples.append((size, used, held))
        await asyncio.sleep(0.05)


# A worker: a process of its own, with its own forkserver, forking one job process per session ----------------


def worker_process(jobs: list[ScaleJob], signals: Signals) -> None:
    context = forkserver_context(local_inference=False)  # TURN_DETECTOR=vad: what agent.py's main decides for it
    processes = [context.Process(target=job_process, args=(job, signals), name=job.name) for job in jobs]
    for process in processes:
        process.start()
    for process in processes:
        process.join()


# The orchestrator -------------------------------------------------------------------------------------------


def with_application_name(dsn: str, name: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    query = urllib.parse.parse_qsl(parts.query) + [("application_name", name)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def with_database(dsn: str, database: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(dsn)._replace(path=f"/{database}"))


async def seed_users(dsn: str, *, users: int, memories: int, seed: int) -> list[str]:
    """Migrate the bench database, then give each user a profile and ``memories`` memories (bench/turn.py's)."""
    from infrastructure.storage.postgres import PostgresStorage

    needed, vectors = await seed_embeddings(users=users, memories=memories)
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    storage = await PostgresStorage.open(dsn, migrate=True)
    ids = []
    try:
        for n in range(users):
            user = uuid.uuid4()
            await storage.update_profile(user, {"name": f"Bench User {n}", "timezone": "Europe/London"}, at=now)
            writes = seed_writes(user, n, needed=needed, vectors=vectors, memories=memories, rng=rng, now=now)
            for start in range(0, len(writes), 500):
                await storage.upsert_memories(writes[start : start + 500], read_back=False)
            ids.append(str(user))
    finally:
        await storage.aclose()
    return ids


async def poll_connections(admin: Any, cache: Any, database: str, samples: list[dict[str, int]],
                           stop: asyncio.Event) -> None:  # fmt: skip
    """``pg_stat_activity`` for the bench database every 100 ms: connections per application_name, and those not
    idle (running a statement, or inside a transaction); and Redis's connected clients, but for this one."""
    while not stop.is_set():
        rows = await admin.fetch("select application_name, state from pg_stat_activity where datname = $1", database)
        sample: dict[str, int] = defaultdict(int)
        for row in rows:
            sample[row["application_name"] or "?"] += 1
            sample["_total"] += 1
            sample["_active"] += row["state"] not in ("idle", None)
        sample["_redis"] = int((await cache.info("clients"))["connected_clients"]) - 1
        samples.append(dict(sample))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


def plan_jobs(args: argparse.Namespace, *, users: list[str], dsn: str, redis_url: str, prefix: str, folder: Path,
              base_url: str, facts: list[Fact]) -> list[ScaleJob]:  # fmt: skip
    """Sessions in slot-major order over the workers ((w0,s0), (w1,s0), ..., (w0,s1), ...), paired in that order,
    so with two workers or more the two sessions of a user are on different workers."""
    order = [(w, s) for s in range(args.sessions) for w in range(args.workers)]
    jobs = []
    facts_left = list(facts)
    for n, (w, s) in enumerate(order):
        pair, partner = n // 2, (n ^ 1 if (n ^ 1) < len(order) else None)
        rng = random.Random(args.seed * 1000 + n)
        modes = [mode for _ in range(args.turns) for mode in rng.sample(["on", "off"], 2)]
        own = [facts_left.pop(0) for _ in range(args.probes)] if partner is not None else []
        # Saves spread over the run, the two sessions of a user alternating: n even at 1/4, 3/4 ... of its probes' slots.
        step = len(modes) / max(1, args.probes)
        offset = 0.25 if n % 2 == 0 else 0.6
        remembers = {min(len(modes) - 1, int(step * (k + offset))): f for k, f in enumerate(own)}
        name = f"w{w}-s{s}"
        jobs.append(ScaleJob(worker=w, slot=s, name=name, user_id=users[pair],
                             dsn=with_application_name(dsn, name), redis_url=redis_url, redis_prefix=prefix,
                             outbox=str(folder / f"w{w}"), base_url=base_url,
                             turns=list(zip(user_turns(len(modes), rng), modes, strict=True)), remembers=remembers,
                             expected=args.probes if partner is not None else 0, partner=partner, inbox=n,
                             pace=args.pace, seed=rng.randrange(1 << 30), vad=not args.no_vad))  # fmt: skip
    return jobs


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg
    import redis.asyncio as aioredis

    from bench.infrastructure import test_services

    services = test_services() if args.postgres is None or args.redis is None else {}
    admin_dsn = args.postgres or services["TEST_DATABASE_URL"]
    redis_url = args.redis or services["TEST_REDIS_URL"]
    sessions = args.workers * args.sessions
    database, prefix = f"companion_scale_{secrets.token_hex(4)}", f"bench-scale-{secrets.token_hex(4)}"
    dsn = with_database(admin_dsn, database)
    rng = random.Random(args.seed)
    facts = make_facts(args.probes * sessions, rng)
    admin = await asyncpg.connect(admin_dsn)
    cache = aioredis.Redis.from_url(redis_url)
    await admin.execute(f'create database "{database}"')
    server = ScaleLLM(facts)
    await server.start()
    spawn = mp.get_context("spawn")
    workers: list[Any] = []
    stop, polling = asyncio.Event(), None
    try:
        users = await seed_users(dsn, users=(sessions + 1) // 2, memories=args.memories, seed=args.seed)
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            jobs = plan_jobs(args, users=users, dsn=dsn, redis_url=redis_url, prefix=prefix, folder=Path(tmp),
                             base_url=server.base_url, facts=facts)  # fmt: skip
            signals = Signals(ready=spawn.Queue(), open=spawn.Event(), go=spawn.Event(), done=spawn.Event(),
                              results=spawn.Queue(), inboxes=[spawn.Queue() for _ in jobs])  # fmt: skip
            started = time.time()
            for w in range(args.workers):
                mine = [j for j in jobs if j.worker == w]
                workers.append(spawn.Process(target=worker_process, args=(mine, signals), name=f"worker-{w}"))
                workers[-1].start()
            load_before = os.getloadavg()
            samples: list[dict[str, int]] = []
            deadline = time.monotonic() + args.setup_timeout

            async def wait_all(what: str) -> None:
                for _ in range(sessions):
                    try:
                        await asyncio.to_thread(signals.ready.get, timeout=max(1.0, deadline - time.monotonic()))
                    except queue.Empty:
                        raise SystemExit(f"a job process did not answer in time ({what})") from None

            await wait_all("prewarm")
            prewarmed = time.time()
            polling = asyncio.create_task(poll_connections(admin, cache, database, samples, stop), name="bench-pg-poll")
            signals.open.set()
            await wait_all("session open")
            opening_samples = len(samples)
            signals.go.set()
            deadline = time.monotonic() + args.pace * 2 * (2 * args.turns + 2 * args.probes) + 180
            await wait_all("turns")
            stop.set()
            await polling
            polling = None
            signals.done.set()
            reports = []
            while len(reports) < sessions:
                try:
                    reports.append(await asyncio.to_thread(signals.results.get, timeout=60))
                except queue.Empty:
                    raise SystemExit("a job process did not report") from None
            for worker in workers:
                await asyncio.to_thread(worker.join, 60)
    finally:
        stop.set()
        if polling is not None:
            await polling
        for worker in workers:
            if worker.is_alive():
                worker.kill()
        await server.aclose()
        max_connections = int(await admin.fetchval("show max_connections"))
        await admin.execute(f'drop database if exists "{database}" with (force)')
        await admin.close()
        async for key in cache.scan_iter(match=f"{prefix}:*", count=1000):
            await cache.delete(key)
        await cache.aclose()
    failed = [(r["name"], r["error"]) for r in reports if "error" in r]
    if failed:
        raise SystemExit(f"job processes failed: {failed}")
    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in load_before],
        },  # fmt: skip
        "config": {
            "workers": args.workers,
            "sessions_per_worker": args.sessions,
            "job_processes": sessions,
            "users": len(users),
            "turns_per_mode": args.turns,
            "probes_per_session": args.probes,
            "pace_s": args.pace,
            "memories": args.memories,
            "vad": not args.no_vad,
            "turn_detector": "vad",
            "turn_detector_note": "TURN_DETECTOR=vad: no process loads LiveKit's 244 MB end-of-turn model",
            "database": "postgresql",
            "pool_max_size": POOL_MAX,
            "postgres_max_connections": max_connections,
            "seed": args.seed,
        },
        "worker_start_to_prewarmed_s": round(prewarmed - started, 2),
    }
    report |= summarise(reports, samples, workers=args.workers, opening_samples=opening_samples)
    report["llm_requests"] = server.requests
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return report


def _ms(values: Sequence[float], q: float) -> float:
    return round(_pct(sorted(values), q), 2)


def summarise(
    reports: list[dict[str, Any]], samples: list[dict[str, int]], *, workers: int, opening_samples: int
) -> dict[str, Any]:
    """``samples[:opening_samples]`` were taken while the sessions opened, the rest during the turns."""
    out: dict[str, Any] = {}
    # Session opens: all at once; sessions per second from the first open's start to the last one's end.
    opens = [r["open"] for r in reports]
    span = max(end for _, end in opens) - min(start for start, _ in opens)
    per_worker = {}
    for w in range(workers):
        mine = [r["open"] for r in reports if r["worker"] == w]
        wspan = max(end for _, end in mine) - min(start for start, _ in mine)
        per_worker[f"w{w}"] = {"sessions": len(mine), "span_s": round(wspan, 3),
                               "sessions_per_s": round(len(mine) / wspan, 2)}  # fmt: skip
    durations = [end - start for start, end in opens]
    out["session_open"] = {"sessions": len(opens), "span_s": round(span, 3),
                           "sessions_per_s": round(len(opens) / span, 2), "per_worker": per_worker,
                           "open_p50_s": round(_pct(sorted(durations), 0.5), 3),
                           "open_p95_s": round(_pct(sorted(durations), 0.95), 3),
                           "memories_loaded_per_session": min(r["memories"] for r in reports)}  # fmt: skip
    # Memory's share of a turn.
    turns = [t for r in reports for t in r["turns"]]
    share: dict[str, Any] = {}
    for mode in ("on", "off"):
        arrive = [t["arrive_ms"] for t in turns if t["mode"] == mode and "arrive_ms" in t]
        share[f"turns_{mode}"] = len(arrive)
        for q in (50, 95):
            share[f"p{q}_{mode}_ms"] = _ms(arrive, q / 100)
    share["memory_share_p50_ms"] = round(share["p50_on_ms"] - share["p50_off_ms"], 2)
    share["memory_share_p95_ms"] = round(share["p95_on_ms"] - share["p95_off_ms"], 2)
    retrieved = sum(r["stats"]["turns"] for r in reports)
    share["deadline_misses"] = sum(r["stats"]["deadline_misses"] for r in reports)
    share["miss_rate"] = round(share["deadline_misses"] / retrieved, 4) if retrieved else 0.0
    share["turns_without_request"] = sum(1 for t in turns if "arrive_ms" not in t)
    out["turns"] = share
    # Database connections: the server's view over the run, and each pool's own.
    totals = [s.get("_total", 0) for s in samples]
    per_process = [max((s.get(r["name"], 0) for s in samples), default=0) for r in reports]
    pools = [r["pool"] for r in reports if r["pool"]]
    out["database_connections"] = {
        "samples": len(samples),
        "max": max(totals, default=0),
        "median": statistics.median(totals) if totals else 0,
        "active_max": max((s.get("_active", 0) for s in samples), default=0),
        "active_median": statistics.median(s.get("_active", 0) for s in samples) if samples else 0,
        "active_max_opening": max((s.get("_active", 0) for s in samples[:opening_samples]), default=0),
        "active_max_turns": max((s.get("_active", 0) for s in samples[opening_samples:]), default=0),
        "per_process_max": max(per_process, default=0),
        "per_process_median_of_max": statistics.median(per_process) if per_process else 0,
        "pool_size_max": max((size for p in pools for size, _, _ in p), default=0),
        "pool_in_use_max": max((used for p in pools for _, used, _ in p), default=0),
        "pool_in_use_p95": _ms([used for p in pools for _, used, _ in p], 0.95),
        "redis_connections_per_process_max": max((held for p in pools for _, _, held in p), default=0),
        "redis_server_clients_max": max((s.get("_redis", 0) for s in samples), default=0),  # others' clients too
    }
    # Memory per job process.
    memory: dict[str, Any] = {}
    for stage in ("prewarm", "session", "after_turns"):
        for kind in ("rss", "pss", "uss"):
            values = [r["memory"][stage][kind] for r in reports]
            memory[f"{kind}_mb_{stage}_max"] = max(values)
            memory[f"{kind}_mb_{stage}_mean"] = round(statistics.fmean(values), 1)
    out["memory_per_job_process"] = memory
    # Propagation between the two sessions of a user.
    saves = [s for r in reports for s in r["saves"]]
    held = [h for r in reports for h in r["held"]]
    asks = [t for t in turns if t["mode"] == "ask"]
    to_held = [(h["held_at"] - h["saved_started"]) * 1000 for h in held if h["holds"]]
    to_request = [(t["arrived"] - t["saved_started"]) * 1000 for t in asks if t["carried"]]
    out["propagation"] = {
        "saves": len(saves),
        "saves_won": sum(1 for s in saves if s["won"] and not s["queued"]),
        "save_p50_ms": _ms([(s["ended"] - s["started"]) * 1000 for s in saves], 0.5),
        "save_p95_ms": _ms([(s["ended"] - s["started"]) * 1000 for s in saves], 0.95),
        "catch_ups": len(held),
        "held": len(to_held),
        "to_held_p50_ms": _ms(to_held, 0.5),
        "to_held_p95_ms": _ms(to_held, 0.95),
        "notice_p50_ms": _ms([(h["heard"] - h["saved_ended"]) * 1000 for h in held], 0.5),
        "catch_up_p50_ms": _ms([(h["held_at"] - h["heard"]) * 1000 for h in held], 0.5),
        "catch_up_p95_ms": _ms([(h["held_at"] - h["heard"]) * 1000 for h in held], 0.95),
        "save_and_catch_up_p50_ms": _ms(
            [(h["saved_ended"] - h["saved_started"] + h["held_at"] - h["heard"]) * 1000 for h in held], 0.5
        ),
        "save_and_catch_up_p95_ms": _ms(
            [(h["saved_ended"] - h["saved_started"] + h["held_at"] - h["heard"]) * 1000 for h in held], 0.95
        ),
        "asked": len(asks),
        "carried": len(to_request),
        "misses": sum(1 for t in asks if not t["carried"]),
        "misses_not_held": sum(1 for t in asks if not t["carried"] and not t["held"]),
        "to_request_p50_ms": _ms(to_request, 0.5),
        "to_request_p95_ms": _ms(to_request, 0.95),
        "save_to_question_p50_ms": _ms([(t["submitted"] - t["saved_ended"]) * 1000 for t in asks], 0.5),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (K)")
    parser.add_argument("--sessions", type=int, default=3, help="concurrent sessions per worker (M)")
    parser.add_argument("--turns", type=int, default=20, help="turns with memory per session (as many without)")
    parser.add_argument("--probes", type=int, default=3, help="facts each paired session saves for the other")
    parser.add_argument("--pace", type=float, default=3.0, help="seconds between a user's turns, on average")
    parser.add_argument("--memories", type=int, default=2_000, help="memories per user")
    parser.add_argument("--no-vad", action="store_true", help="prewarm without Silero VAD")
    parser.add_argument("--postgres", help="an admin DSN (CREATEDB); default: scripts/test-services.sh's role")
    parser.add_argument("--redis", help="a Redis URL; default: scripts/test-services.sh's")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--setup-timeout", type=float, default=300.0, help="seconds for prewarm and session opens")
    parser.add_argument("--quick", action="store_true", help="2 workers x 1 session, 3 + 3 turns, 200 memories")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.sessions, args.turns, args.probes, args.pace, args.memories = 2, 1, 3, 1, 0.5, 200
    if args.workers < 1 or args.sessions < 1 or args.turns < 1 or args.probes < 0:
        parser.error("--workers, --sessions and --turns must be at least 1, --probes at least 0")
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
