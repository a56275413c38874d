"""What a memory is for the services: where it came from (``SOURCES``), a new one to store in bulk, the counts, and
the text embedded for it. Categories, keys and values are checked by :mod:`core.validators` (the closed sets in
:mod:`core.categories`).

The user's memory itself (the index, writes, search, forgetting, keeping up with other sessions) is owned by
:class:`services.user_memory.UserMemory`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

SOURCES = frozenset({"tool", "extraction", "onboarding", "import", "inspector"})


@dataclass(frozen=True, slots=True)
class NewMemory:
    category: str
    key: str
    value: str
    importance: float | None = None
    source: str = "import"
    at: dt.datetime | None = None  # when it was learned; now if not given


@dataclass(frozen=True, slots=True)
class MemoryStats:
    count: int
    by_category: dict[str, int]


def index_text(key: str, value: str) -> str:
    """What is embedded and indexed for a memory: its key in words, then its value."""
    return f"{key.replace('_', ' ')}: {value}"
