"""Input validation shared by every layer: user ids, the write guard, and text as it enters.

The write guard is the design's rule that a session writes only for the user it serves. It is checked before any
query is built, so a refused write never reaches the database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from core.errors import InvalidUserIdError, WriteForbiddenError

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(text: str) -> str:
    """Text as every later step can take it: a lone surrogate (which no UTF-8 encoder accepts, so the tokenizer,
    the database and the LLM client would all raise) becomes U+FFFD, and control characters other than tab and
    newline become spaces."""
    return _CONTROL.sub(" ", _LONE_SURROGATE.sub("\ufffd", text))


_NOT_A_UUID = "user id must be a UUID such as 123e4567-e89b-12d3-a456-426614174000"


def parse_user_id(value: object) -> uuid.UUID:
    """Return ``value`` as a UUID, or raise :class:`InvalidUserIdError`.

    Accepts a ``uuid.UUID`` or its canonical 36-character string form (any case). Braces, URNs and bare hex, which
    ``uuid.UUID`` would also accept, are refused: an identity that arrives that way is not a Supabase auth id.
    """
    if isinstance(value, uuid.UUID):
        value = str(value)
    if not isinstance(value, str) or len(value) != 36:
        raise InvalidUserIdError(_NOT_A_UUID)
    try:
        parsed = uuid.UUID(value)
    except ValueError as exc:
        raise InvalidUserIdError(_NOT_A_UUID) from exc
    if str(parsed) != value.lower():
        raise InvalidUserIdError(_NOT_A_UUID)
    if parsed.int == 0:  # the nil UUID is a placeholder, never a Supabase user
        raise InvalidUserIdError("user id must not be the nil UUID 00000000-0000-0000-0000-000000000000")
    return parsed


def is_user_id(value: object) -> bool:
    """True when ``value`` would pass :func:`parse_user_id`."""
    try:
        parse_user_id(value)
    except InvalidUserIdError:
        return False
    return True


class WriteGuard:
    """Allows writes for exactly one user: the one the session serves.

    A guest session (an identity that is not a UUID) has no user and may write nothing: build it with
    :meth:`guest`.
    """

    __slots__ = ("_user_id",)

    def __init__(self, *, user_id: uuid.UUID | str | None) -> None:
        self._user_id = None if user_id is None else parse_user_id(user_id)

    @classmethod
    def guest(cls) -> WriteGuard:
        return cls(user_id=None)

    @property
    def user_id(self) -> uuid.UUID | None:
        return self._user_id

    @property
    def can_write(self) -> bool:
        return self._user_id is not None

    def revoke(self) -> None:
        """From now on this session writes nothing (after the user asked to forget everything)."""
        self._user_id = None

    def check(self, user_id: uuid.UUID | str) -> uuid.UUID:
        """Return the parsed id if this session may write for it; raise otherwise, before any query."""
        target = parse_user_id(user_id)
        if self._user_id is None:
            raise WriteForbiddenError("guest session: nothing is written")
        if target != self._user_id:
            raise WriteForbiddenError("write refused: a session writes only for the user it serves")
        return target

    def check_all(self, user_ids: Iterable[uuid.UUID | str]) -> None:
        for user_id in user_ids:
            self.check(user_id)
