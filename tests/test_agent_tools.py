"""The agent's tools as the LLM sees them: grouped by purpose, with the closed sets as JSON-schema enums built by
LiveKit (1.8.9) from the ``Literal`` arguments, so they list exactly the declared categories and profile fields."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
from livekit.agents import llm
from livekit.agents.llm._provider_format.openai import to_fnc_ctx
from livekit.agents.llm.utils import validated_arguments

from agent import HealthTools, MemoryTools, ProfileTools
from core.categories import MemoryCategory, ProfileField
from core.config import Settings
from services.container import Process, open_process, open_session


@pytest.fixture
async def toolsets(tmp_path: Path) -> AsyncIterator[list[llm.Toolset]]:
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/c.db")  # type: ignore[call-arg]
    process: Process = await open_process(settings)
    services = await open_session(process, user_id=uuid.uuid4())
    yield [
        MemoryTools(memories=services.memories, rag=services.rag, forgetting=services.forgetting, users=services.users),
        ProfileTools(users=services.users),
        HealthTools(clients=process.clients, metrics=process.metrics, memories=services.memories),
    ]  # fmt: skip
    await process.aclose()


def schemas(toolsets: list[llm.Toolset], *, strict: bool) -> dict[str, dict[str, Any]]:
    return {s["function"]["name"]: s["function"] for s in to_fnc_ctx(llm.ToolContext(toolsets), strict=strict)}


def tool(toolsets: list[llm.Toolset], name: str) -> llm.FunctionTool:
    found = llm.ToolContext(toolsets).get_function_tool(name)
    assert isinstance(found, llm.FunctionTool)
    return found


def test_the_tools_come_in_three_groups(toolsets: list[llm.Toolset]) -> None:
    assert {t.id: sorted(f.info.name for f in t.tools) for t in toolsets} == {  # type: ignore[attr-defined]
        "memory": ["forget", "forget_everything", "recall", "remember"],
        "profile": ["update_profile"],
        "health": ["getConnectionPoolStats", "getDatabaseBatchStats", "getMemoryStats", "getRedisCacheStats"],
    }


@pytest.mark.parametrize("strict", [True, False])
def test_the_schemas_list_exactly_the_declared_categories_and_profile_fields(
    toolsets: list[llm.Toolset], strict: bool
) -> None:
    found = schemas(toolsets, strict=strict)
    category = found["remember"]["parameters"]["properties"]["category"]
    assert category["enum"] == [c.value for c in MemoryCategory]
    assert category["type"] == "string"
    field = found["update_profile"]["parameters"]["properties"]["field"]
    assert field["enum"] == [f.value for f in ProfileField]


def test_a_category_is_read_in_any_case_before_the_tool_runs(toolsets: list[llm.Toolset]) -> None:
    arguments = validated_arguments(
        tool(toolsets, "remember"), {"category": " relationship", "key": "sister city", "value": "Maya"}
    )
    assert arguments["category"] == "RELATIONSHIP"
    assert validated_arguments(tool(toolsets, "update_profile"), {"field": "Timezone", "value": "Europe/Lisbon"}) == {
        "field": "timezone",
        "value": "Europe/Lisbon",
    }


def test_an_unknown_category_or_field_is_refused_with_the_list(toolsets: list[llm.Toolset]) -> None:
    with pytest.raises(pydantic.ValidationError, match="category must be one of " + ", ".join(MemoryCategory)):
        validated_arguments(tool(toolsets, "remember"), {"category": "HOBBY", "key": "x", "value": "y"})
    with pytest.raises(pydantic.ValidationError, match="profile field must be one of"):
        validated_arguments(tool(toolsets, "update_profile"), {"field": "email", "value": "a@b.c"})
