"""Input validation, one definition of each rule: user ids, the write guard, text as it enters, and a memory's and
a profile's fields.

Each rule is applied once, where input enters: a tool's arguments (the agent's argument types call these), or a
service's public method for every other caller. The write guard is the design's rule that a session writes only
for the user it serves. It is checked before any query is built, so a refused write never reaches the database.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
import zoneinfo
from collections.abc import Iterable

from core.categories import (
    MAX_KEY_LENGTH,
    MAX_VALUE_LENGTH,
    SUMMARY_FIELD,
    MemoryCategory,
    ProfileField,
    category_names,
    profile_field_names,
)
from core.errors import InvalidInputError, InvalidUserIdError, WriteForbiddenError

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


# Memories -----------------------------------------------------------------------------------------------------------


def parse_category(category: object) -> MemoryCategory:
    """One of :class:`MemoryCategory`, any case; anything else is an InvalidInputError listing them."""
    try:
        return MemoryCategory(str(category).strip().upper())
    except ValueError:
        raise InvalidInputError(f"category must be one of {category_names()}") from None


def normalize_key(key: object) -> str:
    """``"Sister's City"`` -> ``"sisters_city"``: lower-case ASCII words joined by underscores."""
    ascii_text = unicodedata.normalize("NFKD", str(key)).encode("ascii", "ignore").decode()
    normalized = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower().replace("'", "")).strip("_")
    if not normalized:
        raise InvalidInputError("memory key must contain letters or digits")
    if len(normalized) > MAX_KEY_LENGTH:
        raise InvalidInputError(f"memory key must be at most {MAX_KEY_LENGTH} characters")
    return normalized


def clean_value(value: object) -> str:
    """A memory's value: one line of storable text, not empty, at most :data:`MAX_VALUE_LENGTH` characters."""
    text = " ".join(clean_text(str(value)).split())
    if not text:
        raise InvalidInputError("memory value is empty")
    if len(text) > MAX_VALUE_LENGTH:
        raise InvalidInputError(f"memory value is longer than {MAX_VALUE_LENGTH} characters; say it shorter")
    return text


def parse_importance(importance: object, category: MemoryCategory) -> float:
    """From 0 to 1; None is the category's default."""
    if importance is None:
        return category.default_importance
    if isinstance(importance, bool):
        raise InvalidInputError("memory importance must be a number from 0 to 1")
    try:
        value = float(importance)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError("memory importance must be a number from 0 to 1") from None
    if not 0 <= value <= 1:
        raise InvalidInputError("memory importance must be a number from 0 to 1")
    return value


# Profiles -----------------------------------------------------------------------------------------------------------

MAX_NAME_LENGTH = 80
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")  # BCP 47, as "en", "pt-BR"


def parse_profile_field(name: object) -> ProfileField:
    try:
        return ProfileField(str(name).strip().lower())
    except ValueError:
        raise InvalidInputError(f"profile field must be one of {profile_field_names()}") from None


def profile_change(name: object, value: str | None) -> tuple[str, str | None]:
    """A profile field and its value as stored: None clears it; a name's length, an IANA time zone, a language code
    are checked. ``name`` is a :class:`ProfileField` (any case) or ``summary`` (the written profile)."""
    field = SUMMARY_FIELD if name == SUMMARY_FIELD else parse_profile_field(name).value
    if value is None:
        return field, None
    value = " ".join(str(value).split())
    if not value:
        return field, None
    if field in (ProfileField.NAME, ProfileField.PREFERRED_NAME) and len(value) > MAX_NAME_LENGTH:
        raise InvalidInputError(f"{field} must be at most {MAX_NAME_LENGTH} characters")
    if field == ProfileField.TIMEZONE:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise InvalidInputError("timezone must be an IANA name such as Europe/Lisbon") from None
    if field == ProfileField.LANGUAGE and not _LANGUAGE.match(value):
        raise InvalidInputError("language must be a language code such as en or pt-BR")
    return field, value
