"""What a memory is: its categories, keys, values and default importance, checked the same way everywhere.

The user's memory itself (the index, writes, search, forgetting, keeping up with other sessions) is owned by
:class:`services.user_memory.UserMemory`.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass

from core.errors import InvalidInputError
from core.validators import clean_text

MAX_VALUE_LENGTH = 1_000  # characters: a memory is a fact, not a document
MAX_KEY_LENGTH = 64
CATEGORIES = ("FACT", "PREFERENCE", "GOAL", "RELATIONSHIP", "EVENT", "HEALTH", "ROUTINE", "OTHER")
SOURCES = frozenset({"tool", "extraction", "onboarding", "import"})
# When the caller gives no importance: health and people matter more than passing events.
DEFAULT_IMPORTANCE = {
    "HEALTH": 0.8,
    "RELATIONSHIP": 0.7,
    "GOAL": 0.7,
    "FACT": 0.6,
    "PREFERENCE": 0.6,
    "ROUTINE": 0.5,
    "EVENT": 0.5,
    "OTHER": 0.4,
}
LIST_CACHE_KEY = "memories"


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


def normalize_category(category: str) -> str:
    """One of :data:`CATEGORIES`, any case; anything else is an InvalidInputError listing them."""
    name = str(category).strip().upper()
    if name not in CATEGORIES:
        raise InvalidInputError(f"category must be one of {', '.join(CATEGORIES)}")
    return name


def normalize_key(key: str) -> str:
    """``"Sister's City"`` -> ``"sisters_city"``: lower-case ASCII words joined by underscores."""
    ascii_text = unicodedata.normalize("NFKD", str(key)).encode("ascii", "ignore").decode()
    normalized = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower().replace("'", "")).strip("_")
    if not normalized:
        raise InvalidInputError("memory key must contain letters or digits")
    if len(normalized) > MAX_KEY_LENGTH:
        raise InvalidInputError(f"memory key must be at most {MAX_KEY_LENGTH} characters")
    return normalized


def index_text(key: str, value: str) -> str:
    """What is embedded and indexed for a memory: its key in words, then its value."""
    return f"{key.replace('_', ' ')}: {value}"


def default_importance(category: str, importance: float | None) -> float:
    """``importance`` as a number, or the category's default when None."""
    if importance is None:
        return DEFAULT_IMPORTANCE[category]
    try:
        return float(importance)
    except (TypeError, ValueError):
        raise InvalidInputError("memory importance must be a number from 0 to 1") from None


def clean_value(value: str) -> str:
    """A memory's value on one line, checked: not empty, not too long."""
    value = " ".join(clean_text(str(value)).split())
    if not value:
        raise InvalidInputError("memory value is empty")
    if len(value) > MAX_VALUE_LENGTH:
        raise InvalidInputError(f"memory value is longer than {MAX_VALUE_LENGTH} characters; say it shorter")
    return value
