"""The closed sets (memory categories, profile fields) are declared once, in core/categories.py, and everything that
lists them derives from there: adding a category is one edit."""

from __future__ import annotations

import ast
import dataclasses
import datetime as dt
import re
import typing
import uuid
from pathlib import Path

import pytest

from core.categories import (
    MAX_KEY_LENGTH,
    PROFILE_COLUMNS,
    CategoryName,
    MemoryCategory,
    ProfileField,
    ProfileFieldName,
)
from core.errors import InvalidInputError
from core.validators import normalize_key, parse_category, parse_importance, profile_change
from infrastructure.storage import PROFILE_FIELDS, MemoryWrite, Profile
from services.memory_extraction import EXTRACTION_PROMPT
from tests.agent_process import REPO

DECLARED_IN = REPO / "core" / "categories.py"
SOURCES = sorted(
    path
    for folder in ("core", "services", "infrastructure", "rag_system", "tts")
    for path in (REPO / folder).rglob("*.py")
) + [REPO / "agent.py"]


def string_constants(path: Path) -> list[str]:
    return [
        node.value
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def test_every_category_carries_a_default_importance_between_0_and_1() -> None:
    for category in MemoryCategory:
        assert 0 <= category.default_importance <= 1, category
        assert parse_importance(None, category) == category.default_importance


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_lists_the_categories_or_names_one_as_text(path: Path) -> None:
    """A category named in a string ("FACT") or a list of them in a docstring or prompt would not change with the
    enum; code names a member (``MemoryCategory.FACT``) or derives the list (``category_names()``)."""
    if path == DECLARED_IN:
        return
    names = {c.value for c in MemoryCategory}
    for text in string_constants(path):
        assert text not in names, f"{path.name} names the category {text!r} as text"
        listed = names & set(re.findall(r"[A-Z]+", text))
        assert len(listed) < 3, f"{path.name} lists categories {sorted(listed)} in a string"


def test_no_module_lists_the_profile_fields() -> None:
    fields = {f.value for f in ProfileField}
    for path in SOURCES:
        if path == DECLARED_IN:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                items = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                assert len(items & fields) < 3, f"{path.name} lists profile fields {sorted(items & fields)}"


def test_the_schema_has_no_category_list_of_its_own() -> None:
    """Categories are checked where input enters, from the enum; a CHECK constraint listing them would be a second
    place to edit (and would refuse rows an older worker wrote during a rolling deploy)."""
    schemas = [*(REPO / "supabase" / "migrations").glob("*.sql"), REPO / "infrastructure/storage/sqlite_schema.sql"]
    for schema in schemas:
        text = schema.read_text(encoding="utf-8")
        assert not re.search(r"category\s+in\s*\(", text, re.I), schema.name
        assert not any(f"'{c.value}'" in text for c in MemoryCategory), schema.name


def test_the_literal_types_and_the_prompt_list_exactly_the_enum() -> None:
    assert typing.get_args(CategoryName) == tuple(c.value for c in MemoryCategory)
    assert typing.get_args(ProfileFieldName) == tuple(f.value for f in ProfileField)
    listed = re.search(r"Categories: ([A-Z, ]+)\.", EXTRACTION_PROMPT).group(1)  # type: ignore[union-attr]
    assert listed.split(", ") == [c.value for c in MemoryCategory]


def test_the_storage_port_takes_exactly_the_profile_fields_and_the_summary() -> None:
    assert PROFILE_FIELDS == PROFILE_COLUMNS == {*(f.value for f in ProfileField), "summary"}
    assert {f.name for f in dataclasses.fields(Profile)} >= PROFILE_COLUMNS
    sqlite = (REPO / "infrastructure/storage/sqlite_schema.sql").read_text(encoding="utf-8")
    postgres = (REPO / "supabase/migrations/0001_schema.sql").read_text(encoding="utf-8")
    for column in PROFILE_COLUMNS:
        assert re.search(rf"^\s+{column}\s+text", sqlite, re.M), column
        assert re.search(rf"^\s+{column}\s+text", postgres, re.M), column


def test_one_key_length_for_the_services_and_the_storage() -> None:
    longest = "k" * MAX_KEY_LENGTH
    assert normalize_key(longest) == longest
    with pytest.raises(InvalidInputError, match=f"at most {MAX_KEY_LENGTH}"):
        normalize_key(longest + "k")
    user, at = uuid.uuid4(), dt.datetime.now(dt.UTC)
    MemoryWrite(user, MemoryCategory.FACT.value, longest, "v", 0.5, "tool", at)
    with pytest.raises(InvalidInputError, match=f"longer than {MAX_KEY_LENGTH}"):
        MemoryWrite(user, MemoryCategory.FACT.value, longest + "k", "v", 0.5, "tool", at)


def test_a_category_is_read_in_any_case_and_anything_else_is_refused_with_the_list() -> None:
    assert parse_category(" relationship ") is MemoryCategory.RELATIONSHIP
    with pytest.raises(InvalidInputError) as refused:
        parse_category("HOBBY")
    assert refused.value.message == "category must be one of " + ", ".join(MemoryCategory)


@pytest.mark.parametrize("importance", [-0.1, 1.5, "high", True])
def test_an_importance_outside_0_to_1_is_refused(importance: object) -> None:
    with pytest.raises(InvalidInputError, match="from 0 to 1"):
        parse_importance(importance, MemoryCategory.FACT)


def test_a_profile_change_names_its_field_in_any_case_and_checks_the_value() -> None:
    assert profile_change("Preferred_Name", "  Ana  ") == ("preferred_name", "Ana")
    assert profile_change("summary", "A profile.") == ("summary", "A profile.")
    assert profile_change("timezone", "") == ("timezone", None)
    with pytest.raises(InvalidInputError, match="IANA"):
        profile_change("timezone", "Mars/Olympus")
    with pytest.raises(InvalidInputError, match="profile field must be one of name, preferred_name"):
        profile_change("email", "a@b.c")
