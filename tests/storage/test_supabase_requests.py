"""The Supabase backend sends the PostgREST requests PostgREST expects (checked on the stub's request log)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from core.errors import StorageError, StorageUnavailableError
from infrastructure.storage import MemoryAccess, MemoryWrite
from infrastructure.storage.supabase import SupabaseStorage
from tests.conftest import SERVICE_ROLE_KEY, T0
from tests.fakes.postgrest import PostgrestStub, RecordedRequest


@pytest.fixture
async def stub() -> AsyncIterator[PostgrestStub]:
    stub = PostgrestStub(service_role_key=SERVICE_ROLE_KEY)
    await stub.start()
    yield stub
    await stub.aclose()


@pytest.fixture
async def store(stub: PostgrestStub) -> AsyncIterator[SupabaseStorage]:
    store = await SupabaseStorage.open(stub.url, SERVICE_ROLE_KEY)
    yield store
    await store.aclose()


def only_request(stub: PostgrestStub) -> RecordedRequest:
    assert len(stub.requests) == 1, [(r.method, r.path) for r in stub.requests]
    return stub.requests.pop()


async def test_memories_are_upserted_in_one_request_on_their_natural_key(stub, store) -> None:
    user = uuid.uuid4()
    await store.upsert_memories(
        [MemoryWrite(user, "FACT", "a", "one", 0.5, "tool", T0), MemoryWrite(user, "GOAL", "b", "two", 0.9, "tool", T0)]
    )
    request = only_request(stub)
    assert (request.method, request.path) == ("POST", "/rest/v1/memories")
    assert request.param("on_conflict") == "user_id,category,key"
    assert {"resolution=merge-duplicates", "return=representation", "missing=default"} <= request.prefer
    assert [row["key"] for row in request.body] == ["a", "b"]
    assert all("id" not in row for row in request.body)  # the database assigns ids; an update keeps them


async def test_reads_filter_on_the_user_and_order_as_the_port_promises(stub, store) -> None:
    user = uuid.uuid4()
    await store.list_memories(user, category="FACT", include_embeddings=False, limit=20)
    request = only_request(stub)
    assert (request.method, request.path) == ("GET", "/rest/v1/memories")
    assert request.param("user_id") == f"eq.{user}"
    assert request.param("category") == "eq.FACT"
    assert request.param("order") == "updated_at.desc,id.asc"
    assert request.param("limit") == "20"
    assert "embedding" not in request.param("select").split(",")


async def test_claiming_onboarding_is_a_conditional_patch(stub, store) -> None:
    user = uuid.uuid4()
    await store.claim_onboarding(user, at=T0)
    request = only_request(stub)
    assert (request.method, request.path) == ("PATCH", "/rest/v1/onboarding_answers")
    assert request.param("user_id") == f"eq.{user}"
    assert request.param("processed_at") == "is.null"
    assert "return=representation" in request.prefer


async def test_ensuring_a_profile_never_overwrites_one(stub, store) -> None:
    user = uuid.uuid4()
    await store.ensure_profile(user, at=T0)
    request = stub.requests[0]
    assert (request.method, request.path, request.param("on_conflict")) == ("POST", "/rest/v1/profiles", "user_id")
    assert "resolution=ignore-duplicates" in request.prefer


async def test_access_counts_and_deleting_a_user_are_single_function_calls(stub, store) -> None:
    user = uuid.uuid4()
    await store.record_memory_access([MemoryAccess(user, (("FACT", "a"), ("FACT", "b")), T0)])
    access = only_request(stub)
    assert (access.method, access.path) == ("POST", "/rest/v1/rpc/companion_record_memory_access")
    assert [a["key"] for a in access.body["p_accesses"]] == ["a", "b"]

    await store.delete_user_data(user)
    delete = only_request(stub)
    assert (delete.method, delete.path, delete.body) == (
        "POST",
        "/rest/v1/rpc/companion_delete_user_data",
        {"p_user_id": str(user)},
    )


async def test_a_wrong_key_is_an_error_that_retrying_will_not_fix(stub) -> None:
    async with await SupabaseStorage.open(stub.url, "not-the-service-role-key") as store:
        with pytest.raises(StorageError) as caught:
            await store.get_profile(uuid.uuid4())
    assert not caught.value.retryable
    assert "not-the-service-role-key" not in str(caught.value)


async def test_an_unreachable_project_is_reported_as_retryable(stub) -> None:
    url = stub.url
    await stub.aclose()
    async with await SupabaseStorage.open(url, SERVICE_ROLE_KEY) as store:
        with pytest.raises(StorageUnavailableError) as caught:
            await store.ping()
    assert caught.value.retryable


async def test_a_compare_and_set_save_is_an_insert_without_resolution_or_a_patch_on_the_version(stub, store) -> None:
    user = uuid.uuid4()
    first = await store.save_memory_if(
        MemoryWrite(user, "FACT", "job", "nurse", 0.5, "tool", T0), expected_version=None
    )
    insert = stub.requests[0]
    assert (insert.method, insert.path) == ("POST", "/rest/v1/memories")
    assert not any(p.startswith("resolution=") for p in insert.prefer)  # an existing row is a 409: the race is lost
    stub.requests.clear()

    await store.save_memory_if(
        MemoryWrite(user, "FACT", "job", "midwife", 0.5, "tool", T0), expected_version=first.memory.version
    )
    patch = stub.requests[0]
    assert (patch.method, patch.path) == ("PATCH", "/rest/v1/memories")
    assert patch.param("version") == f"eq.{first.memory.version}"
    assert (patch.param("user_id"), patch.param("category"), patch.param("key")) == (f"eq.{user}", "eq.FACT", "eq.job")
    assert len(stub.requests) == 1  # won: nothing read again


async def test_the_change_feed_is_one_request_to_the_database_function(stub, store) -> None:
    user = uuid.uuid4()
    await store.changes_since(user, 7)
    request = only_request(stub)  # one round trip a catch-up, one snapshot
    assert (request.method, request.path) == ("POST", "/rest/v1/rpc/companion_changes_since")
    assert request.body == {"p_user_id": str(user), "p_version": 7}
