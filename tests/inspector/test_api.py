"""The inspector's JSON API: the fixed interface, its errors as sentences, and changes through the services."""

from __future__ import annotations

import contextlib
import logging
import uuid

import httpx
import pytest

from core.errors import ConflictError
from inspector.access import Access
from inspector.server import serve
from services.container import Process
from services.persona import Persona
from tests.inspector.conftest import OPERATOR_TOKEN, Served

MAYA = "My sister Maya lives in Lisbon"


async def a_user_with_memories(served: Served) -> uuid.UUID:
    user = uuid.uuid4()
    me = await served.session_of(user)
    await me.users.ensure_profile_exists()
    await me.users.update_profile(name="Ana")
    await me.memories.save_memory("RELATIONSHIP", "sister city", MAYA)
    await me.memories.save_memory("PREFERENCE", "drink", "Prefers green tea")
    return user


async def test_memories_lists_each_memory_with_its_history(served: Served) -> None:
    user = await a_user_with_memories(served)
    await (await served.session_of(user)).memories.save_memory("PREFERENCE", "drink", "Prefers black coffee")

    response = await served.api.get(f"/api/users/{user}/memories")

    assert response.status_code == 200
    memories = {m["key"]: m for m in response.json()["memories"]}
    assert memories["sister_city"]["value"] == MAYA
    assert memories["sister_city"]["category"] == "RELATIONSHIP"
    assert memories["drink"]["value"] == "Prefers black coffee"
    assert [(h["old_value"], h["new_value"]) for h in memories["drink"]["history"]] == [
        ("Prefers green tea", "Prefers black coffee")
    ]
    assert {"importance", "created_at", "updated_at", "last_accessed_at", "access_count", "source"} <= set(
        memories["drink"]
    )


async def test_recall_shows_the_ranking_its_parts_and_the_gate(served: Served) -> None:
    user = await a_user_with_memories(served)

    found = (await served.api.get(f"/api/users/{user}/recall", params={"q": "where does my sister live?"})).json()

    assert found["inject"] is True
    assert found["ranked"][0]["value"] == MAYA
    assert {"semantic", "semantic_z", "lexical", "coverage", "recency", "importance"} <= set(
        found["ranked"][0]["parts"]
    )
    assert MAYA in found["notes"]
    unrelated = (await served.api.get(f"/api/users/{user}/recall", params={"q": "quantum chromodynamics"})).json()
    assert unrelated["inject"] is False
    assert unrelated["notes"] == ""


async def test_an_edit_goes_through_the_services_and_keeps_the_old_value(served: Served, caplog) -> None:
    user = await a_user_with_memories(served)
    caplog.set_level(logging.INFO, logger="companion.inspector.audit")

    response = await served.api.patch(
        f"/api/users/{user}/memories/RELATIONSHIP/sister_city", json={"value": "My sister Maya lives in Porto"}
    )

    assert response.status_code == 200, response.text
    assert response.json()["memory"]["value"] == "My sister Maya lives in Porto"
    assert response.json()["memory"]["history"][-1]["old_value"] == MAYA
    stored = await served.process.storage.get_memory(user, "RELATIONSHIP", "sister_city")
    assert stored is not None
    assert stored.value == "My sister Maya lives in Porto"
    assert stored.source == "inspector"
    fresh = await served.session_of(user)  # a session started now retrieves the new value
    assert "Porto" in (await fresh.rag.context_for_turn("where does my sister live?")).text
    importance = await served.api.patch(f"/api/users/{user}/memories/RELATIONSHIP/sister_city", json={"importance": 1})
    assert importance.json()["memory"]["importance"] == 1.0
    [line, _] = [r for r in caplog.records if r.name == "companion.inspector.audit"]
    assert (line.user_id, line.action, line.category, line.key) == (str(user), "edit", "RELATIONSHIP", "sister_city")
    assert "Porto" not in line.getMessage()
    assert "Porto" not in str(line.__dict__)


async def test_forget_removes_the_memory_and_what_mentions_it(served: Served) -> None:
    user = await a_user_with_memories(served)
    await (await served.session_of(user)).users.update_profile(
        summary="Ana's sister Maya lives in Lisbon. Ana likes tea."
    )

    response = await served.api.delete(f"/api/users/{user}/memories/RELATIONSHIP/sister_city")

    assert response.status_code == 204
    assert await served.process.storage.get_memory(user, "RELATIONSHIP", "sister_city") is None
    profile = await served.process.storage.get_profile(user)
    assert profile is not None
    assert "Lisbon" not in (profile.summary or "")
    again = await served.api.delete(f"/api/users/{user}/memories/RELATIONSHIP/sister_city")
    assert again.status_code == 404
    assert again.json() == {"error": "no such memory"}


async def test_erase_needs_the_user_id_typed_and_leaves_the_export_empty(served: Served) -> None:
    user = await a_user_with_memories(served)

    refused = await served.api.post(f"/api/users/{user}/erase", json={"confirm": "yes"})
    assert refused.status_code == 400
    assert "type the user id" in refused.json()["error"]
    erased = await served.api.post(f"/api/users/{user}/erase", json={"confirm": str(user)})
    assert erased.status_code == 200
    assert erased.json()["erased"]["memories"] == 2

    export = (await served.api.get(f"/api/users/{user}/export")).json()
    assert (export["profile"], export["memories"], export["conversations"], export["messages"]) == (None, [], [], [])


async def test_the_export_is_one_document_of_everything(served: Served) -> None:
    user = await a_user_with_memories(served)
    me = await served.session_of(user)
    await me.conversations.start()
    me.conversations.log_message("user", "Hello there")
    await served.process.batcher.flush()

    export = (await served.api.get(f"/api/users/{user}/export")).json()

    assert export["user_id"] == str(user)
    assert export["profile"]["name"] == "Ana"
    assert {m["key"] for m in export["memories"]} == {"sister_city", "drink"}
    assert [c["id"] for c in export["conversations"]] == [str(me.conversations.conversation_id)]
    assert [m["content"] for m in export["messages"]] == ["Hello there"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/memories", None),
        ("GET", "/export", None),
        ("GET", "/recall?q=tea", None),
        ("PATCH", "/memories/FACT/x", {"value": "y"}),
        ("DELETE", "/memories/FACT/x", None),
        ("POST", "/erase", {"confirm": "x"}),
    ],
)
async def test_every_route_needs_a_valid_token(served: Served, method: str, path: str, body: object) -> None:
    url = f"{served.url}/api/users/{uuid.uuid4()}{path}"
    async with httpx.AsyncClient() as anonymous:
        missing = await anonymous.request(method, url, json=body)
        wrong = await anonymous.request(method, url, json=body, headers={"Authorization": "Bearer not-the-token"})
    for response in (missing, wrong):
        assert response.status_code == 401
        assert set(response.json()) == {"error"}


async def test_unknown_users_are_404_and_bad_input_is_400_with_a_sentence(served: Served) -> None:
    user = await a_user_with_memories(served)
    cases = [
        (await served.api.get(f"/api/users/{uuid.uuid4()}/memories"), 404, "no such user"),
        (await served.api.get("/api/users/not-a-uuid/memories"), 400, "user id must be a UUID"),
        (await served.api.get(f"/api/users/{user}/recall"), 400, "say what to recall"),
        (await served.api.patch(f"/api/users/{user}/memories/HOBBY/x", json={"value": "y"}), 400, "category must be"),
        (
            await served.api.patch(f"/api/users/{user}/memories/FACT/unknown", json={"value": "y"}),
            404,
            "no such memory",
        ),
        (await served.api.patch(f"/api/users/{user}/memories/PREFERENCE/drink", content=b"{"), 400, "JSON object"),
        (await served.api.patch(f"/api/users/{user}/memories/PREFERENCE/drink", json={"importance": 2}), 400, "0 to 1"),
        (await served.api.patch(f"/api/users/{user}/memories/PREFERENCE/drink", json={"value": ""}), 400, "empty"),
        (await served.api.patch(f"/api/users/{user}/memories/PREFERENCE/drink", json={"admin": 1}), 400, "only value"),
    ]
    for response, status, sentence in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert sentence in response.json()["error"]
        assert "Traceback" not in response.text


async def test_only_operators_list_users(served: Served) -> None:
    user = await a_user_with_memories(served)

    listed = (await served.api.get("/api/users")).json()["users"]

    assert str(user) in [u["user_id"] for u in listed]


async def test_every_response_carries_a_strict_content_security_policy(served: Served) -> None:
    response = await served.api.get("/login")
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert "script-src" not in response.headers["Content-Security-Policy"]  # none at all: default-src 'none'
    assert response.headers["X-Frame-Options"] == "DENY"


async def test_the_api_is_rate_limited_per_caller(process: Process) -> None:
    settings = process.settings.model_copy(update={"inspector_rate_limit_per_minute": 3})
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(serve(settings, host="127.0.0.1", port=0, process=process))
        api = await stack.enter_async_context(httpx.AsyncClient(base_url=url, headers=headers))
        statuses = [(await api.get("/api/users")).status_code for _ in range(4)]
        limited = await api.get("/api/users")
    assert statuses == [200, 200, 200, 429]
    assert int(limited.headers["Retry-After"]) >= 1
    assert "too many requests" in limited.json()["error"]


async def test_an_edit_that_loses_to_another_sessions_write_is_a_conflict(served: Served) -> None:
    user = await a_user_with_memories(served)
    access = Access(process=served.process, persona=Persona.from_settings(served.process.settings))

    async with access.user(user, actor="operator") as inspected:
        elsewhere = await served.session_of(user)  # a live session changes it after the inspector's page loaded
        await elsewhere.memories.save_memory("RELATIONSHIP", "sister city", "My sister Maya lives in Faro")
        with pytest.raises(ConflictError, match="another session changed this memory"):
            await inspected.edit("RELATIONSHIP", "sister_city", value="My sister Maya lives in Porto")

    stored = await served.process.storage.get_memory(user, "RELATIONSHIP", "sister_city")
    assert stored is not None
    assert stored.value == "My sister Maya lives in Faro"
