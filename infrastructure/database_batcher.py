"""Batches database writes: many small writes become one statement per table, off the turn's path.

Lanes. Each kind of write has a lane (memories, messages, conversation ends, memory accesses) that maps to one
method of the storage port. A lane flushes when it holds ``max_rows`` writes or its oldest write is ``max_delay`` old, whichever
comes first. Repeated upserts of the same memory within a batch merge (the last write wins, every caller's future
resolves), so a batch never names a row twice.

Failure. A batch that fails with a retryable error is retried with exponential backoff and full jitter, for as long
as it takes while the batcher runs (the database may be gone for a while; the queue bounds the memory). A
non-retryable error fails that batch's futures and is counted. Rows are idempotent on retry: memories upsert on
their key, messages are skipped by id, so a batch that failed halfway is stored once.

Backpressure. At most ``max_pending`` writes wait; one more raises :class:`BatcherFullError` to the caller (and is
logged), it is never dropped silently. ``flush()`` and ``aclose()`` return when every accepted write is stored or
has failed; ``aclose()`` gives a database that is down ``close_timeout`` seconds, then fails what is left.

Durability. With an :class:`~infrastructure.outbox.Outbox`, a write (but a memory access, a counter) is first
appended to the local outbox file, fsynced, in groups, by a second task; only then does it join its lane, and
``durable()`` returns, which is the caller's acknowledgement. The rows are deleted when the database confirms their
batch, or refuses it for good; what a dead database leaves at ``aclose()`` stays there, and the next batcher to
start on the folder replays it, in order, before any new write. A full outbox refuses the write when it is offered.
A replayed write older than its user's latest forgetting (``Storage.forgotten_at``) is dropped, not stored: it was
queued before the user asked to forget, and may hold what they asked to forget. So is a write not yet stored of a
user whose erasure a session saw (:meth:`DatabaseBatcher.discard_user`): it would bring the erased rows back.

Metrics. Queue depth, outbox rows, flush latency per lane, writes, statements, failures, retries and refusals are
Prometheus instruments (``infrastructure/metrics.py``); ``stats()`` reads them back, as the health tool does.

The retry loop is written here rather than with tenacity because it must interleave with the lane's queue (new
writes keep merging into a batch that waits to be retried) and be cut short by ``aclose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from core.config import Settings
from core.errors import (
    BatcherFullError,
    ClosedError,
    CompanionError,
    OutboxFullError,
    StorageError,
    StorageUnavailableError,
)
from infrastructure.metrics import BatchReading, Metrics, flag
from infrastructure.outbox import CONVERSATION_ENDS, KEPT_LANES, MEMORIES, MESSAGES, Outbox, encode
from infrastructure.storage import ConversationEnd, MemoryAccess, MemoryWrite, MessageWrite, Storage

logger = logging.getLogger("companion.batcher")

Item = TypeVar("Item")


@dataclass(frozen=True, slots=True)
class BatcherParams:
    max_rows: int = 50  # rows per statement
    max_delay: float = 0.1  # seconds a write may wait for company
    max_pending: int = 10_000  # writes waiting, across lanes
    retry_initial: float = 0.05  # first backoff, seconds
    retry_max: float = 5.0  # backoff ceiling, seconds
    close_timeout: float = 10.0  # how long aclose() keeps retrying a database that is down

    @classmethod
    def from_settings(cls, settings: Settings) -> BatcherParams:
        return cls(
            max_rows=settings.batch_max_rows,
            max_delay=settings.batch_max_delay_ms / 1000,
            max_pending=settings.batch_max_pending,
        )

    def __post_init__(self) -> None:
        if self.max_rows < 1 or self.max_pending < 1:
            raise ValueError("max_rows and max_pending must be at least 1")
        if self.max_delay < 0 or self.retry_initial <= 0 or self.retry_max < self.retry_initial:
            raise ValueError("delays must be positive, with retry_max >= retry_initial")


def backoff_delay(attempt: int, *, initial: float, ceiling: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(ceiling, initial * 2**attempt)] (attempt counts from 0)."""
    return rng.uniform(0.0, min(ceiling, initial * (2**attempt)))


@dataclass
class _Pending(Generic[Item]):
    item: Item
    accepted_at: float
    futures: list[asyncio.Future[None]] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)  # its rows in the outbox (a merged upsert has several)


@dataclass(frozen=True, slots=True)
class _Unsynced:
    """A write offered but not yet in the outbox file."""

    lane: str
    item: Any
    key: str
    body: bytes
    future: asyncio.Future[None]


class _Lane(Generic[Item]):
    def __init__(self, name: str, write: Callable[[list[Item]], Awaitable[Any]], key: Callable[[Item], Hashable]):
        self.name = name
        self.write = write
        self.key = key
        self.pending: dict[Hashable, _Pending[Item]] = {}  # insertion-ordered: oldest first

    def oldest(self) -> float | None:
        return next(iter(self.pending.values())).accepted_at if self.pending else None

    def take(self, limit: int) -> list[_Pending[Item]]:
        keys = list(self.pending)[:limit]
        return [self.pending.pop(k) for k in keys]


class DatabaseBatcher:
    """Owns one background task; ``start()`` it (or use ``async with``), ``aclose()`` it."""

    def __init__(
        self,
        *,
        storage: Storage,
        params: BatcherParams | None = None,
        outbox: Outbox | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._storage = storage
        self._metrics = metrics or Metrics.process()
        self._outbox = outbox
        self._params = params or BatcherParams()
        self._clock = clock
        self._rng = rng or random.Random()
        self._sequence = 0
        self._lanes: dict[str, _Lane[Any]] = {
            MEMORIES: _Lane(
                MEMORIES,
                lambda writes: storage.upsert_memories(writes, read_back=False),
                lambda w: (w.user_id, w.category, w.key),
            ),
            MESSAGES: _Lane(MESSAGES, storage.append_messages, lambda m: m.id),
            CONVERSATION_ENDS: _Lane(CONVERSATION_ENDS, self._finish_conversations, lambda e: e.conversation_id),
            "memory_access": _Lane("memory_access", storage.record_memory_access, lambda _: self._next_sequence()),
        }
        self._wakeup = asyncio.Event()
        self._in_flight: list[_Pending[Any]] = []
        self._in_flight_lane: _Lane[Any] | None = None
        self._urgent = 0  # flush() calls waiting
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._dead = False
        self._close_deadline: float | None = None
        # The outbox side: writes waiting for their fsync, and callers waiting for everything they offered.
        self._unsynced: list[_Unsynced] = []
        self._sync_wakeup = asyncio.Event()
        self._sync_task: asyncio.Task[None] | None = None
        self._offered = self._synced = 0
        self._durable_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._kept = 0  # this batcher's, for its close warning
        self._replayed_seqs: set[int] = set()
        self._discarded: dict[uuid.UUID, dt.datetime] = {}  # user: their writes made up to this are dropped

    # Lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the task (and the outbox's); what the outbox recovered is queued first, before any new write."""
        if self._task is None and not self._closing:
            if self._outbox is not None:
                loop = asyncio.get_running_loop()
                for row in self._outbox.take_recovered():  # a future of their own, so that flush() waits for them
                    self._place(row.lane, row.item, futures=[loop.create_future()], seqs=[row.seq])
                    self._metrics.batcher_replayed.inc()
                    self._replayed_seqs.add(row.seq)
                self._gauge_outbox()
                self._sync_task = asyncio.create_task(self._sync_loop(), name="database-batcher-outbox")
            self._task = asyncio.create_task(self._run(), name="database-batcher")

    @property
    def durable_writes(self) -> bool:
        """Whether an accepted write survives a crash (there is an outbox) once :meth:`durable` returns."""
        return self._outbox is not None

    async def durable(self) -> None:
        """Return when every write offered before this call is in the outbox file (fsynced) or has failed to get
        there (its future then holds the error). That is the acknowledgement; without an outbox it is immediate."""
        if self._outbox is None or self._synced >= self._offered:
            return
        self.start()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._durable_waiters.append((self._offered, waiter))
        await waiter

    async def __aenter__(self) -> DatabaseBatcher:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def flush(self, *, within: float | None = None) -> None:
        """Write what was accepted before this call now; return when each of those writes is stored or has
        failed, or after ``within`` seconds (the writes stay queued). Writes offered meanwhile do not delay it."""
        self.start()
        waiting = [f for p in self._outstanding() for f in p.futures if not f.done()]
        waiting += [u.future for u in self._unsynced if not u.future.done()]
        if not waiting:
            return
        self._urgent += 1
        self._wakeup.set()
        try:
            await asyncio.wait(waiting, timeout=within)  # asyncio.wait never cancels what it waits for
        finally:
            self._urgent -= 1

    async def aclose(self) -> None:
        """Refuse new writes, flush the rest (retrying up to ``close_timeout``), stop the task. Idempotent.

        What the database has not taken by the deadline fails with StorageUnavailableError; with an outbox those
        writes stay in it for the next start (``companion_batcher_kept_for_next_start_total``). Cancelling the
        caller does not cancel the flush. The outbox itself is its opener's to close, after this."""
        if self._task is None:
            self._closing = True
            self._fail_all(ClosedError("batcher closed before it started"))
            return
        if not self._closing:
            self._closing = True
            self._close_deadline = self._clock() + self._params.close_timeout
            self._wakeup.set()
            self._sync_wakeup.set()
        tasks = [t for t in (self._sync_task, self._task) if t is not None]
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*tasks)), timeout=self._params.close_timeout + 1.0)
        except TimeoutError:  # a write that ignores its own timeout: stop it and report what is left
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._kept:
            logger.warning("database did not take every write by close; the outbox keeps them for the next start",
                           extra={"rows": self._kept})  # fmt: skip

    # Writes -----------------------------------------------------------------------------------------------

    def upsert_memory(self, write: MemoryWrite) -> asyncio.Future[None]:
        return self._offer("memories", write)

    def append_message(self, message: MessageWrite) -> asyncio.Future[None]:
        return self._offer("messages", message)

    def record_access(self, access: MemoryAccess) -> asyncio.Future[None]:
        return self._offer("memory_access", access)

    def finish_conversation(self, end: ConversationEnd) -> asyncio.Future[None]:
        return self._offer(CONVERSATION_ENDS, end)

    def discard_user(self, user_id: uuid.UUID, *, before: dt.datetime) -> None:
        """The user was erased (seen from another session): their writes made up to ``before`` that are not stored
        yet are dropped when their batch comes, not stored; their callers' futures resolve. (A batch already being
        written when this is called still lands.)"""
        self._discarded[user_id] = max(before, self._discarded.get(user_id, before))

    def stats(self) -> BatchReading:
        """What the instruments say (the process's, unless this batcher was given its own ``metrics``)."""
        return BatchReading.read(self._metrics)

    def _offer(self, lane_name: str, item: Any) -> asyncio.Future[None]:
        """Accept one write; the future resolves when it is stored (or fails). Raises when it cannot accept."""
        if self._closing or self._dead:
            raise ClosedError("the batcher is closed; the write was not accepted")
        lane = self._lanes[lane_name]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._outbox is not None and lane_name in KEPT_LANES:
            self._check_room(lane_name)
            key, body = encode(lane_name, item)
            try:
                self._outbox.reserve(len(body))
            except OutboxFullError:
                self._metrics.batcher_rejected.labels(reason="outbox_full").inc()
                logger.warning("outbox full, write refused", extra={"lane": lane_name})
                raise
            self._count_accepted(lane_name)
            self._unsynced.append(_Unsynced(lane_name, item, key, body, future))
            self._gauge_depth()
            self._offered += 1
            self._sync_wakeup.set()
            return future
        if lane.key(item) not in lane.pending:
            self._check_room(lane_name)
        self._count_accepted(lane_name)
        self._place(lane_name, item, futures=[future], seqs=[])
        return future

    def _count_accepted(self, lane_name: str) -> None:
        # Once, when accepted: a write the next process replays from the outbox is not a new write.
        self._metrics.batcher_writes.labels(lane=lane_name).inc()

    def _check_room(self, lane_name: str) -> None:
        if self._depth() >= self._params.max_pending:
            self._metrics.batcher_rejected.labels(reason="queue_full").inc()
            logger.warning("write batcher queue full, write refused", extra={"lane": lane_name})
            raise BatcherFullError(f"the write queue is full ({self._params.max_pending} pending)")

    def _place(self, lane_name: str, item: Any, *, futures: list[asyncio.Future[None]], seqs: list[int]) -> None:
        """Put an accepted write in its lane; the same row again before it was written merges (last write wins)."""
        lane = self._lanes[lane_name]
        key = lane.key(item)
        existing = lane.pending.get(key)
        if existing is not None:
            existing.item = item
            existing.futures += futures
            existing.seqs += seqs
            self._metrics.batcher_merged.inc()
        else:
            lane.pending[key] = _Pending(item=item, accepted_at=self._clock(), futures=futures, seqs=seqs)
        self._gauge_depth()
        if len(lane.pending) >= self._params.max_rows or len(lane.pending) == 1:
            self._wakeup.set()

    async def _finish_conversations(self, ends: list[ConversationEnd]) -> None:
        for end in ends:  # one statement each: a conversation ends once per session, batching would save nothing
            await self._storage.finish_conversation(
                end.user_id, end.conversation_id, at=end.at, summary=end.summary, open_threads=end.open_threads
            )

    # The outbox task --------------------------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        """Append offered writes to the outbox in groups (one fsync per group), then hand them to their lanes."""
        assert self._outbox is not None
        group: list[_Unsynced] = []
        try:
            while True:
                if not self._unsynced:
                    if self._closing:
                        return
                    self._sync_wakeup.clear()
                    await self._sync_wakeup.wait()
                    continue
                # The group stays in _unsynced while it is appended: it counts as pending for _run and flush().
                group = list(self._unsynced)
                try:
                    seqs = await self._outbox.append([(u.lane, u.key, u.body) for u in group])
                except CompanionError as exc:  # unwritable or full: refused, never acknowledged
                    del self._unsynced[: len(group)]
                    self._gauge_depth()
                    self._metrics.batcher_rejected.labels(reason="outbox_error").inc(len(group))
                    logger.error("outbox append failed, writes refused",
                                 extra={"rows": len(group), "error": type(exc).__name__})  # fmt: skip
                    for u in group:
                        _set_exception(u.future, exc)
                else:
                    del self._unsynced[: len(group)]
                    for u, seq in zip(group, seqs, strict=True):
                        self._place(u.lane, u.item, futures=[u.future], seqs=[seq])
                    self._gauge_outbox()
                self._synced += len(group)
                group = []
                self._resolve_durable()
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                logger.error("outbox task stopped", extra={"error": type(exc).__name__})
                self._dead = True
            stopped = ClosedError("the write batcher stopped before the outbox took these writes")
            if group:  # cut short mid-append: append() gave their room back; they may still reach the file
                del self._unsynced[: len(group)]
                for u in group:
                    _set_exception(u.future, stopped)
                self._synced += len(group)
            self._refuse_unsynced(stopped)
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _resolve_durable(self) -> None:
        still = []
        for target, waiter in self._durable_waiters:
            if target <= self._synced or self._dead:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((target, waiter))
        self._durable_waiters = still

    def _refuse_unsynced(self, exc: CompanionError) -> None:
        group, self._unsynced = self._unsynced, []
        if group and self._outbox is not None:
            self._outbox.release([len(u.body) for u in group])
        for u in group:
            _set_exception(u.future, exc)
        self._synced += len(group)
        self._gauge_depth()
        self._resolve_durable()

    async def _forget_rows(self, batch: list[_Pending[Any]]) -> None:
        """The database has these rows, or will never take them: the outbox need not keep them."""
        seqs = [seq for pending in batch for seq in pending.seqs]
        if self._outbox is None or not seqs:
            return
        try:
            await self._outbox.remove(seqs)
        except CompanionError as exc:  # they stay and replay idempotently; nothing is lost
            logger.warning("outbox rows not removed", extra={"rows": len(seqs), "error": type(exc).__name__})
        self._gauge_outbox()

    # The task ---------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                due = self._due_lanes()
                for lane in due:
                    await self._write_batch(lane)
                if self._closing and not self._depth():
                    return
                if not due:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), timeout=self._next_due_in())
        except asyncio.CancelledError:
            self._fail_all(StorageUnavailableError("the batcher was stopped before the database took these writes"))
            raise
        except Exception as exc:  # our bug: never leave callers waiting on futures nobody will resolve
            self._dead = True
            logger.error("write batcher stopped", extra={"error": type(exc).__name__})
            self._fail_all(ClosedError("the write batcher stopped on an unexpected error"))

    def _due_lanes(self) -> list[_Lane[Any]]:
        now = self._clock()
        urgent = self._closing or self._urgent > 0
        due = [
            lane
            for lane in self._lanes.values()
            if lane.pending
            and (
                urgent
                or len(lane.pending) >= self._params.max_rows
                or now - (lane.oldest() or now) >= self._params.max_delay
            )
        ]
        memories = self._lanes["memories"]
        if self._lanes["memory_access"] in due and memories.pending and memories not in due:
            due.insert(0, memories)  # an access count must not reach the database before its memory
        return due

    def _next_due_in(self) -> float | None:
        oldest = [o for o in (lane.oldest() for lane in self._lanes.values()) if o is not None]
        if not oldest:
            return None
        return max(0.0, min(oldest) + self._params.max_delay - self._clock())

    async def _write_batch(self, lane: _Lane[Any]) -> None:
        self._in_flight, self._in_flight_lane = lane.take(self._params.max_rows), lane
        self._gauge_depth()
        try:
            await self._write_with_retry(lane, self._in_flight)
        finally:
            self._in_flight, self._in_flight_lane = [], None

    async def _write_with_retry(self, lane: _Lane[Any], batch: list[_Pending[Any]]) -> None:
        attempt = 0
        started = time.perf_counter()
        while True:
            if self._close_deadline is not None and self._clock() >= self._close_deadline:
                kept = sum(1 for p in batch if p.seqs)
                self._kept += kept
                self._metrics.batcher_kept.inc(kept)
                self._fail(lane, batch, StorageUnavailableError(_NOT_TAKEN if self._outbox is None else _KEPT))
                return
            try:
                if self._replayed_seqs and any(seq in self._replayed_seqs for p in batch for seq in p.seqs):
                    batch = await self._without_forgotten(batch)
                if self._discarded:
                    batch = await self._without_discarded(batch)
                if not batch:
                    return
                await self._bounded(lane.write([p.item for p in batch]))
            except StorageError as exc:
                if not exc.retryable:
                    await self._isolate(lane, batch, exc)
                    return
            except TimeoutError:  # the close deadline cut this attempt short; the loop reports it
                pass
            except CompanionError as exc:
                await self._isolate(lane, batch, exc)
                return
            except Exception as exc:  # an untranslated error: fail this batch, keep serving the others
                logger.error("write batch raised unexpectedly", extra={"lane": lane.name, "error": type(exc).__name__})
                self._fail(lane, batch, StorageError("unexpected error while writing a batch"))
                await self._forget_rows(batch)
                return
            else:
                self._metrics.batcher_statements.labels(lane=lane.name).inc()
                self._metrics.batcher_rows.labels(lane=lane.name).inc(len(batch))
                self._metrics.batcher_flush_seconds.labels(lane=lane.name).observe(time.perf_counter() - started)
                for pending in batch:
                    for future in pending.futures:
                        if not future.done():
                            future.set_result(None)
                await self._forget_rows(batch)
                return
            self._metrics.batcher_retries.labels(lane=lane.name).inc()
            delay = backoff_delay(attempt, initial=self._params.retry_initial, ceiling=self._params.retry_max,
                                  rng=self._rng)  # fmt: skip
            if self._close_deadline is not None:
                delay = min(delay, max(0.0, self._close_deadline - self._clock()))
            attempt += 1
            await asyncio.sleep(delay)

    async def _without_forgotten(self, batch: list[_Pending[Any]]) -> list[_Pending[Any]]:
        """The batch without replayed writes older than their user's latest forgetting; those are resolved (the
        caller that queued them is long gone) and leave the outbox."""
        owners = [_owner_and_time(p.item) for p in batch]
        forgotten = await self._storage.forgotten_at({user for user, _ in owners})
        kept, dropped = [], []
        for pending, (user, at) in zip(batch, owners, strict=True):
            replayed = any(seq in self._replayed_seqs for seq in pending.seqs)
            (dropped if replayed and user in forgotten and at < forgotten[user] else kept).append(pending)
        await self._drop(dropped, why="replayed writes dropped: their user forgot since")
        for pending in batch:
            self._replayed_seqs.difference_update(pending.seqs)
        return kept

    async def _without_discarded(self, batch: list[_Pending[Any]]) -> list[_Pending[Any]]:
        """The batch without writes of erased users made before their erasure was seen (:meth:`discard_user`)."""
        kept, dropped = [], []
        for pending in batch:
            user, at = _owner_and_time(pending.item)
            (dropped if user in self._discarded and at <= self._discarded[user] else kept).append(pending)
        await self._drop(dropped, why="queued writes dropped: their user was erased")
        return kept

    async def _drop(self, dropped: list[_Pending[Any]], *, why: str) -> None:
        """Writes not to be stored: their callers hear success (what they wrote is meant to be gone), and the
        outbox lets them go."""
        for pending in dropped:
            for future in pending.futures:
                if not future.done():
                    future.set_result(None)
        if dropped:
            self._metrics.batcher_dropped_forgotten.inc(len(dropped))
            logger.info(why, extra={"writes": len(dropped)})
            await self._forget_rows(dropped)

    async def _isolate(self, lane: _Lane[Any], batch: list[_Pending[Any]], exc: CompanionError) -> None:
        """A batch the database refused for good: write its rows one by one, so one bad row fails alone."""
        if len(batch) == 1:
            self._fail(lane, batch, exc)
            await self._forget_rows(batch)  # replaying a row the database refuses for good would fail forever
            return
        for pending in batch:
            await self._write_with_retry(lane, [pending])

    async def _bounded(self, write: Awaitable[Any]) -> Any:
        if self._close_deadline is None:
            return await write
        return await asyncio.wait_for(write, timeout=max(0.0, self._close_deadline - self._clock()))

    def _fail(self, lane: _Lane[Any], batch: list[_Pending[Any]], exc: CompanionError) -> None:
        self._metrics.batcher_failures.labels(lane=lane.name, retryable=flag(exc.retryable)).inc(len(batch))
        logger.error(
            "write batch failed",
            extra={"lane": lane.name, "rows": len(batch), "error": type(exc).__name__, "retryable": exc.retryable},
        )
        for pending in batch:
            for future in pending.futures:
                _set_exception(future, exc)

    def _fail_all(self, exc: CompanionError) -> None:
        """Fail every waiting caller; rows already in the outbox stay there for the next start."""
        self._refuse_unsynced(exc)
        in_flight, lane_of_it, self._in_flight = self._in_flight, self._in_flight_lane, []
        if in_flight and lane_of_it is not None:
            self._fail(lane_of_it, in_flight, exc)
        for lane in self._lanes.values():
            if lane.pending:
                self._fail(lane, lane.take(len(lane.pending)), exc)
        self._gauge_depth()

    def _outstanding(self) -> list[_Pending[Any]]:
        return [*self._in_flight, *(p for lane in self._lanes.values() for p in lane.pending.values())]

    def _depth(self) -> int:
        return len(self._unsynced) + sum(len(lane.pending) for lane in self._lanes.values())

    def _gauge_depth(self) -> None:
        self._metrics.batcher_queue_depth.set(self._depth())

    def _gauge_outbox(self) -> None:
        if self._outbox is not None:
            self._metrics.batcher_outbox_rows.set(self._outbox.stats().rows)

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence


_NOT_TAKEN = "the database did not take these writes in time"
_KEPT = "the database did not take these writes in time; the outbox keeps them for the next start"


def _set_exception(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # a caller that fired and forgot must not get "exception never retrieved"


def _owner_and_time(item: MemoryWrite | MessageWrite | ConversationEnd | MemoryAccess) -> tuple[uuid.UUID, dt.datetime]:
    """Whose write this is, and when it was made: what a forgetting is compared with."""
    return item.user_id, item.at
