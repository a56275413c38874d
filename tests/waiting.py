"""Waiting for background work in tests, without sleeping a fixed time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(predicate: Callable[[], bool], *, within: float = 10.0) -> None:
    """Return as soon as ``predicate()`` holds; fail with TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (what tests watch, stats and modes, has no event)
            await asyncio.sleep(0.01)
