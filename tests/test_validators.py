"""User ids, the write guard, and text cleaned where it enters."""

from __future__ import annotations

import uuid

import pytest

from core.errors import InvalidUserIdError, WriteForbiddenError
from core.validators import WriteGuard, clean_text, is_user_id, parse_user_id

USER = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")


@pytest.mark.parametrize("value", [USER, str(USER), str(USER).upper()])
def test_canonical_uuids_are_accepted(value: object) -> None:
    assert parse_user_id(value) == USER


@pytest.mark.parametrize(
    "value",
    [
        "",
        "guest-42",
        "123e4567e89b12d3a456426614174000",  # bare hex: uuid.UUID takes it, an auth id never looks like that
        "{123e4567-e89b-12d3-a456-426614174000}",
        "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
        "123e4567-e89b-12d3-a456-42661417400g",
        None,
        42,
        "00000000-0000-0000-0000-000000000000",  # the nil UUID: a placeholder, never a user
        uuid.UUID(int=0),
    ],
)
def test_anything_else_is_refused(value: object) -> None:
    with pytest.raises(InvalidUserIdError):
        parse_user_id(value)
    assert not is_user_id(value)


def test_the_guard_allows_writes_for_the_served_user_only() -> None:
    guard = WriteGuard(user_id=str(USER))
    assert guard.check(str(USER).upper()) == USER
    with pytest.raises(WriteForbiddenError):
        guard.check(uuid.uuid4())
    with pytest.raises(WriteForbiddenError):
        guard.check_all([USER, uuid.uuid4()])
    with pytest.raises(InvalidUserIdError):
        guard.check("not-a-uuid")


def test_a_guest_session_writes_nothing() -> None:
    guard = WriteGuard.guest()
    assert not guard.can_write
    with pytest.raises(WriteForbiddenError, match="guest"):
        guard.check(USER)


def test_text_is_cleaned_of_what_no_encoder_takes() -> None:
    assert clean_text("a\ud800b\x00c\x1bd\te\nf") == "a\ufffdb c d\te\nf"
    assert clean_text("Olá, مایا") == "Olá, مایا"
