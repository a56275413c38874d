"""The closed sets of the memory model, each declared once: memory categories and the profile's fields.

Everything that lists them derives from here: the services' checks, the extraction prompt, the tools' argument
schemas (``CategoryName`` and ``ProfileFieldName`` are the ``Literal`` types LiveKit turns into JSON-schema enums),
the storage port's allowed profile columns. Adding a category is one line in :class:`MemoryCategory`
(``tests/test_categories.py`` fails if anything lists them on its own).
"""

from __future__ import annotations

import enum
from typing import Literal

# Characters. A key is a short topic ("sister_city"), a value one sentence about the user.
MAX_KEY_LENGTH = 64
MAX_VALUE_LENGTH = 1_000


class MemoryCategory(enum.StrEnum):
    """What a memory is about, with what each member carries:

    - ``default_importance``: when the caller gives none (health and people matter more than passing events);
    - ``single_valued``: a person has one of it at a time (one job, one home city), so extraction takes a close new
      value under another key as the old one changing rather than as a second memory.
    """

    default_importance: float
    single_valued: bool

    FACT = "FACT", 0.6, True
    PREFERENCE = "PREFERENCE", 0.6
    GOAL = "GOAL", 0.7
    RELATIONSHIP = "RELATIONSHIP", 0.7
    EVENT = "EVENT", 0.5
    HEALTH = "HEALTH", 0.8
    ROUTINE = "ROUTINE", 0.5
    OTHER = "OTHER", 0.4

    def __new__(cls, value: str, default_importance: float, single_valued: bool = False) -> MemoryCategory:
        member = str.__new__(cls, value)
        member._value_ = value
        member.default_importance = default_importance
        member.single_valued = single_valued
        return member


class ProfileField(enum.StrEnum):
    """The profile's plain fields: what the user (or the app's onboarding) may set. The written profile,
    ``summary``, is the profile service's, never set from a tool."""

    NAME = "name"
    PREFERRED_NAME = "preferred_name"
    TIMEZONE = "timezone"
    LANGUAGE = "language"


SUMMARY_FIELD = "summary"
# The profile columns a caller may change (the storage port's ``update_profile``).
PROFILE_COLUMNS = frozenset({*(f.value for f in ProfileField), SUMMARY_FIELD})

# The same sets as ``Literal`` types, for argument schemas (built from the enums, so never listed twice).
CategoryName = Literal[tuple(c.value for c in MemoryCategory)]  # type: ignore[valid-type]
ProfileFieldName = Literal[tuple(f.value for f in ProfileField)]  # type: ignore[valid-type]


def category_names() -> str:
    """``"FACT, PREFERENCE, ..."``: the categories as prompts and error messages list them."""
    return ", ".join(MemoryCategory)


def profile_field_names() -> str:
    return ", ".join(ProfileField)
