"""One owner for background work: every task has a name, a logged failure and a close path.

Profile refreshes, memory extraction and summaries run here, never awaited by a turn. ``aclose()`` lets running
work finish for ``grace`` seconds, then cancels what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("companion.background")


@dataclass(frozen=True, slots=True)
class BackgroundStats:
    running: int
    started: int
    failed: int


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = self._failed = 0
        self._closed = False

    def spawn(self, work: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any] | None:
        """Run ``work`` in the background; None (and the coroutine closed) once the owner is closed."""
        if self._closed:
            work.close()
            return None
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        self._started += 1
        task.add_done_callback(self._finished)
        return task

    def running(self, name: str) -> bool:
        return any(t.get_name() == name and not t.done() for t in self._tasks)

    def stats(self) -> BackgroundStats:
        return BackgroundStats(running=len(self._tasks), started=self._started, failed=self._failed)

    async def aclose(self, *, grace: float = 10.0) -> None:
        self._closed = True
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._failed += 1
            # The type only: an exception's text may quote user content.
            logger.error("background task failed", extra={"task": task.get_name(), "error": type(exc).__name__})
