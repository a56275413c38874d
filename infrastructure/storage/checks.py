"""Input checks shared by the port and the write records: bad input is refused before any query is built."""

from __future__ import annotations

import datetime as dt
import uuid

from core.errors import InvalidInputError

MAX_CATEGORY_LENGTH = 32
MAX_TEXT_LENGTH = 64_000


def check_name(value: object, *, what: str, max_length: int) -> None:
    """A short identifier: category, key, source."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"memory {what} is empty")
    if len(value) > max_length:
        raise InvalidInputError(f"memory {what} is longer than {max_length} characters")
    _check_storable(value, what=f"memory {what}")


def check_text(value: object, *, what: str) -> None:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be text")
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidInputError(f"{what} is longer than {MAX_TEXT_LENGTH} characters")
    _check_storable(value, what=what)


def _check_storable(value: str, *, what: str) -> None:
    # PostgreSQL text cannot hold NUL, and no database takes a lone surrogate (JSON tool arguments can carry
    # "\ud800"); refusing both everywhere keeps the backends identical and a batch free of rows that would fail.
    if "\x00" in value:
        raise InvalidInputError(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} is not valid Unicode text") from None


def utc(at: object) -> dt.datetime:
    """``at`` in UTC; naive datetimes are refused rather than guessed."""
    if not isinstance(at, dt.datetime) or at.tzinfo is None:
        raise InvalidInputError("timestamps must be timezone-aware datetimes")
    return at.astimezone(dt.UTC)


def require_uuid(value: object) -> uuid.UUID:
    if not isinstance(value, uuid.UUID):
        raise InvalidInputError("ids must be uuid.UUID values")
    return value
