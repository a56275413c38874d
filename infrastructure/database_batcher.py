"""Batches database writes: many small writes become one statement per table, off the turn's path.

Lanes. Each kind of write has a lane (memories, messages, memory accesses) that maps to one batch method of the
storage port. A lane flushes when it holds ``max_rows`` writes or its oldest write is ``max_delay`` old, whichever
comes first. Repeated upserts of the same memory within a batch merge (the last write wins, every caller's future
resolves), so a batch never names a row twice.

Failure. A batch that fails with a retryable error is retried with exponential backoff and full jitter, for as long
as it takes while the batcher runs (the database may be gone for a while; the queue bounds the memory). A
non-retryable error fails that batch's futures and is counted. Rows are idempotent on retry: memories upsert on
their key, messages are skipped by id, so a batch that failed halfway is stored once.

Backpressure. At most ``max_pending`` writes wait; one more raises :class:`BatcherFullError` to the caller (and is
logged), it is never dropped silently. ``flush()`` and ``aclose()`` return when every accepted write is stored or
has failed; ``aclose()`` gives a database that is down ``close_timeout`` seconds, then fails what is left.

The retry loop is written here rather than with tenacity because it must interleave with the lane's queue (new
writes keep merging into a batch that waits to be retried) and be cut short by ``aclose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from core.config import Settings
from core.errors import BatcherFullError, ClosedError, CompanionError, StorageError
from infrastructure.storage import MemoryAccess, MemoryWrite, MessageWrite, Storage

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


@dataclass(frozen=True, slots=True)
class BatcherStats:
    accepted: int
    statements: int
    rows_written: int
    merged: int
    roundtrip_saving: float  # 1 - statements / accepted: the share of round trips batching saved
    failures: int
    retries: int
    rejected: int
    queue_depth: int
    oldest_pending_s: float


def backoff_delay(attempt: int, *, initial: float, ceiling: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(ceiling, initial * 2**attempt)] (attempt counts from 0)."""
    return rng.uniform(0.0, min(ceiling, initial * (2**attempt)))


@dataclass
class _Pending(Generic[Item]):
    item: Item
    accepted_at: float
    futures: list[asyncio.Future[None]] = field(default_factory=list)


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
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._storage = storage
        self._params = params or BatcherParams()
        self._clock = clock
        self._rng = rng or random.Random()
        self._sequence = 0
        self._lanes: dict[str, _Lane[Any]] = {
            "memories": _Lane(
                "memories",
                lambda writes: storage.upsert_memories(writes, read_back=False),
                lambda w: (w.user_id, w.category, w.key),
            ),
            "messages": _Lane("messages", storage.append_messages, lambda m: m.id),
            "memory_access": _Lane("memory_access", storage.record_memory_access, lambda _: self._next_sequence()),
        }
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._flush_all = False
        self._close_deadline: float | None = None
        self._accepted = self._statements = self._rows = self._merged = 0
        self._failures = self._retries = self._rejected = 0

    # Lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="database-batcher")

    async def __aenter__(self) -> DatabaseBatcher:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def flush(self) -> None:
        """Write everything accepted so far now; return when it is stored or has failed."""
        self.start()
        self._flush_all = True
        self._wakeup.set()
        while self._depth() or self._in_flight:
            self._idle.clear()
            self._wakeup.set()
            await self._idle.wait()
        self._flush_all = False

    async def aclose(self) -> None:
        """Refuse new writes, flush the rest (retrying up to ``close_timeout``), stop the task. Idempotent."""
        if self._task is None:
            self._fail_all(ClosedError("batcher closed before it started"))
            self._closing = True
            return
        if not self._closing:
            self._closing = True
            self._close_deadline = self._clock() + self._params.close_timeout
            self._wakeup.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    # Writes -----------------------------------------------------------------------------------------------

    def upsert_memory(self, write: MemoryWrite) -> asyncio.Future[None]:
        return self._offer("memories", write)

    def append_message(self, message: MessageWrite) -> asyncio.Future[None]:
        return self._offer("messages", message)

    def record_access(self, access: MemoryAccess) -> asyncio.Future[None]:
        return self._offer("memory_access", access)

    def stats(self) -> BatcherStats:
        oldest = [o for o in (lane.oldest() for lane in self._lanes.values()) if o is not None]
        return BatcherStats(
            accepted=self._accepted,
            statements=self._statements,
            rows_written=self._rows,
            merged=self._merged,
            roundtrip_saving=1.0 - self._statements / self._accepted if self._accepted else 0.0,
            failures=self._failures,
            retries=self._retries,
            rejected=self._rejected,
            queue_depth=self._depth(),
            oldest_pending_s=self._clock() - min(oldest) if oldest else 0.0,
        )

    def _offer(self, lane_name: str, item: Any) -> asyncio.Future[None]:
        """Accept one write; the future resolves when it is stored (or fails). Raises when it cannot accept."""
        if self._closing:
            raise ClosedError("the batcher is closing; the write was not accepted")
        lane = self._lanes[lane_name]
        key = lane.key(item)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        existing = lane.pending.get(key)
        if existing is not None:  # the same row again before it was written: last write wins
            existing.item = item
            existing.futures.append(future)
            self._merged += 1
        else:
            if self._depth() >= self._params.max_pending:
                self._rejected += 1
                logger.warning("write batcher queue full, write refused", extra={"lane": lane_name})
                raise BatcherFullError(f"the write queue is full ({self._params.max_pending} pending)")
            lane.pending[key] = _Pending(item=item, accepted_at=self._clock(), futures=[future])
        self._accepted += 1
        self._idle.clear()
        if len(lane.pending) >= self._params.max_rows or len(lane.pending) == 1:
            self._wakeup.set()
        return future

    # The task ---------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            due = self._due_lanes()
            for lane in due:
                await self._write_batch(lane)
            if self._closing and not self._depth():
                break
            if not self._depth():
                self._idle.set()
            if not due:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=self._next_due_in())
        self._idle.set()

    def _due_lanes(self) -> list[_Lane[Any]]:
        now = self._clock()
        urgent = self._closing or self._flush_all
        return [
            lane
            for lane in self._lanes.values()
            if lane.pending
            and (
                urgent
                or len(lane.pending) >= self._params.max_rows
                or now - (lane.oldest() or now) >= self._params.max_delay
            )
        ]

    def _next_due_in(self) -> float | None:
        oldest = [o for o in (lane.oldest() for lane in self._lanes.values()) if o is not None]
        if not oldest:
            return None
        return max(0.0, min(oldest) + self._params.max_delay - self._clock())

    async def _write_batch(self, lane: _Lane[Any]) -> None:
        batch = lane.take(self._params.max_rows)
        self._in_flight += len(batch)
        try:
            attempt = 0
            while True:
                try:
                    self._statements += 1
                    await lane.write([p.item for p in batch])
                except StorageError as exc:
                    give_up = not exc.retryable or (
                        self._close_deadline is not None and self._clock() >= self._close_deadline
                    )
                    if give_up:
                        self._fail(lane, batch, exc)
                        return
                    self._retries += 1
                    delay = backoff_delay(
                        attempt, initial=self._params.retry_initial, ceiling=self._params.retry_max, rng=self._rng
                    )
                    if self._close_deadline is not None:
                        delay = min(delay, max(0.0, self._close_deadline - self._clock()))
                    attempt += 1
                    await asyncio.sleep(delay)
                    continue
                except CompanionError as exc:  # invalid input: retrying cannot help
                    self._fail(lane, batch, exc)
                    return
                self._rows += len(batch)
                for pending in batch:
                    for future in pending.futures:
                        if not future.done():
                            future.set_result(None)
                return
        finally:
            self._in_flight -= len(batch)

    def _fail(self, lane: _Lane[Any], batch: list[_Pending[Any]], exc: CompanionError) -> None:
        self._failures += len(batch)
        logger.error(
            "write batch failed",
            extra={"lane": lane.name, "rows": len(batch), "error": type(exc).__name__, "retryable": exc.retryable},
        )
        for pending in batch:
            for future in pending.futures:
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # a caller that fired and forgot must not get "exception never retrieved"

    def _fail_all(self, exc: CompanionError) -> None:
        for lane in self._lanes.values():
            if lane.pending:
                self._fail(lane, lane.take(len(lane.pending)), exc)

    def _depth(self) -> int:
        return sum(len(lane.pending) for lane in self._lanes.values())

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence
