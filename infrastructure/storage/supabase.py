"""Supabase backend: PostgREST through the async ``supabase`` client, with the service-role key.

Each method is one HTTP request (``stats.queries`` counts them); the two writes PostgREST cannot express in one
request (incrementing access counters, deleting a user from every table in one transaction) call the SQL functions
of ``supabase/migrations``. The HTTP client is injected so that the process-wide pool owns it; the client's own
retries are off, because retry policy belongs to the write batcher.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
from postgrest import APIError
from postgrest.types import CountMethod, ReturnMethod

from core.errors import InvalidInputError, StorageError, StorageUnavailableError
from infrastructure.storage import wire
from infrastructure.storage.port import Storage
from infrastructure.storage.records import (
    Conversation,
    DeletedCounts,
    Memory,
    MemoryAccess,
    MemoryChange,
    MemoryWrite,
    Message,
    MessageWrite,
    OnboardingAnswers,
    Profile,
    SavedMemory,
    UserChanges,
)
from infrastructure.storage.retryable import is_retryable
from supabase import AsyncClient, AsyncClientOptions, acreate_client

_MEMORY_COLUMNS = ",".join(wire.MEMORY_COLUMNS)


class SupabaseStorage(Storage):
    backend_name = "supabase"

    def __init__(self, *, client: AsyncClient, http_client: httpx.AsyncClient, owns_http_client: bool) -> None:
        super().__init__()
        self._client = client
        self._http = http_client
        self._owns_http = owns_http_client

    @classmethod
    async def open(
        cls,
        url: str,
        service_role_key: str,
        *,
        http_client: httpx.AsyncClient | None = None,
        access_token: str | None = None,
    ) -> SupabaseStorage:
        """Connect to the project at ``url``; pass ``http_client`` to share a pooled client. With ``access_token``
        (a signed-in user's JWT, and the anon key in place of the service role's) every request carries that JWT,
        so row-level security decides what it may read: the inspector's app users."""
        owns = http_client is None
        http = http_client or httpx.AsyncClient(timeout=10.0)
        options = AsyncClientOptions(httpx_client=http, postgrest_client_retry=False)
        if access_token is not None:
            options.headers["Authorization"] = f"Bearer {access_token}"
        client = await acreate_client(url, service_role_key, options=options)
        return cls(client=client, http_client=http, owns_http_client=owns)

    async def aclose(self) -> None:
        if self._owns_http and not self._http.is_closed:
            await self._http.aclose()

    async def ping(self) -> None:
        await self._run(self._client.table("profiles").select("user_id").limit(1))

    # Round trips ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except APIError as exc:
            code = exc.code or ""
            raise StorageError(f"supabase error {code}", retryable=is_retryable(code)) from None
        except (httpx.TransportError, RuntimeError) as exc:  # RuntimeError: the HTTP client was closed
            raise StorageUnavailableError("Supabase is unreachable") from exc

    async def _run(self, request: Any) -> Any:
        """Execute one PostgREST request; returns the response (``.data``, ``.count``)."""
        self.stats.queries += 1
        with self._translate():
            return await request.execute()

    async def _rows(self, request: Any) -> list[dict[str, Any]]:
        return list((await self._run(request)).data or [])

    def _table(self, name: str) -> Any:
        return self._client.table(name)

    # Profiles ---------------------------------------------------------------------------------------------

    async def _ensure_profile(self, user_id: uuid.UUID, at: dt.datetime) -> Profile:
        stamp = wire.time_text(at)
        created = await self._rows(
            self._table("profiles").upsert(
                {"user_id": str(user_id), "created_at": stamp, "updated_at": stamp},
                on_conflict="user_id",
                ignore_duplicates=True,
                default_to_null=False,
            )
        )
        if created:
            return wire.profile_from_row(created[0])
        existing = await self._get_profile(user_id)
        if existing is None:  # deleted between the two requests: a caller-visible race, not a bug of ours
            raise StorageError("profile vanished while being ensured", retryable=True)
        return existing

    async def _get_profile(self, user_id: uuid.UUID) -> Profile | None:
        rows = await self._rows(self._table("profiles").select("*").eq("user_id", str(user_id)))
        return wire.profile_from_row(rows[0]) if rows else None

    async def _recent_profiles(self, limit: int) -> list[Profile]:
        request = self._table("profiles").select("*").order("updated_at", desc=True).order("user_id").limit(limit)
        return [wire.profile_from_row(r) for r in await self._rows(request)]

    async def _update_profile(self, user_id: uuid.UUID, changes: dict[str, str | None], at: dt.datetime) -> Profile:
        # PostgREST's upsert sets the columns sent; the profiles_keep_created_at trigger keeps the first created_at.
        stamp = wire.time_text(at)
        rows = await self._rows(
            self._table("profiles").upsert(
                {"user_id": str(user_id), **changes, "created_at": stamp, "updated_at": stamp},
                on_conflict="user_id",
                default_to_null=False,
            )
        )
        return wire.profile_from_row(rows[0])

    # Onboarding -------------------------------------------------------------------------------------------

    async def _save_onboarding(self, user_id: uuid.UUID, answers: dict[str, Any], at: dt.datetime) -> OnboardingAnswers:
        rows = await self._rows(
            self._table("onboarding_answers").upsert(
                {"user_id": str(user_id), "answers": answers, "submitted_at": wire.time_text(at)},
                on_conflict="user_id",
                default_to_null=False,
            )
        )
        return wire.onboarding_from_row(rows[0])

    async def _get_onboarding(self, user_id: uuid.UUID) -> OnboardingAnswers | None:
        rows = await self._rows(self._table("onboarding_answers").select("*").eq("user_id", str(user_id)))
        return wire.onboarding_from_row(rows[0]) if rows else None

    async def _claim_onboarding(self, user_id: uuid.UUID, at: dt.datetime) -> bool:
        # The filter on processed_at makes the PATCH a compare-and-set: only one racing caller gets a row back.
        rows = await self._rows(
            self._table("onboarding_answers")
            .update({"processed_at": wire.time_text(at)})
            .eq("user_id", str(user_id))
            .is_("processed_at", "null")
        )
        return len(rows) == 1

    # Memories ---------------------------------------------------------------------------------------------

    async def _upsert_memories(self, writes: list[MemoryWrite], read_back: bool) -> list[Memory]:
        request = self._table("memories").upsert(
            [wire.memory_write_row(w) | {"created_at": wire.time_text(w.at)} for w in writes],
            on_conflict="user_id,category,key",
            default_to_null=False,
            returning=ReturnMethod.representation if read_back else ReturnMethod.minimal,
        )
        # created_at is sent for new rows; on an update the memories_keep_created_at trigger keeps the first one.
        if not read_back:
            await self._run(request)
            return []
        # Everything but the embedding, which the writes hold already.
        return wire.in_write_order(writes, await self._rows(request.select(_MEMORY_COLUMNS)))

    async def _save_memory_if(self, write: MemoryWrite, expected_version: int | None) -> SavedMemory:
        # PostgREST's own compare-and-set: "only if absent" is an insert without a conflict resolution (a row that
        # exists makes it a 409), "only at version v" a PATCH filtered on the version.
        row = wire.memory_write_row(write)
        try:
            if expected_version is None:
                rows = await self._rows(
                    self._table("memories")
                    .insert(row | {"created_at": wire.time_text(write.at)}, default_to_null=False)
                    .select(_MEMORY_COLUMNS)
                )
            else:
                changes = {k: row[k] for k in ("value", "importance", "source", "embedding", "updated_at")}
                rows = await self._rows(
                    self._table("memories")
                    .update(changes)
                    .eq("user_id", str(write.user_id))
                    .eq("category", write.category)
                    .eq("key", write.key)
                    .eq("version", expected_version)
                    .select(_MEMORY_COLUMNS)
                )
        except StorageError as exc:
            if exc.message != "supabase error 23505":  # not "the memory exists": a failure, not a lost race
                raise
            rows = []
        if rows:
            return SavedMemory(
                won=True, memory=dataclasses.replace(wire.memory_from_row(rows[0]), embedding=write.embedding)
            )
        return SavedMemory(won=False, memory=await self._get_memory(write.user_id, write.category, write.key))

    async def _get_memory(self, user_id: uuid.UUID, category: str, key: str) -> Memory | None:
        rows = await self._rows(
            self._table("memories")
            .select(_MEMORY_COLUMNS + ",embedding")
            .eq("user_id", str(user_id))
            .eq("category", category)
            .eq("key", key)
        )
        return wire.memory_from_row(rows[0]) if rows else None

    async def _list_memories(
        self, user_id: uuid.UUID, category: str | None, include_embeddings: bool, limit: int | None
    ) -> list[Memory]:
        request = (
            self._table("memories")
            .select(_MEMORY_COLUMNS + (",embedding" if include_embeddings else ""))
            .eq("user_id", str(user_id))
        )
        if category is not None:
            request = request.eq("category", category)
        request = request.order("updated_at", desc=True).order("id")
        if limit is not None:
            request = request.limit(limit)
        return [wire.memory_from_row(r) for r in await self._rows(request)]

    async def _delete_memories(self, user_id: uuid.UUID, keys: list[tuple[str, str]]) -> int:
        deleted = 0
        by_category: dict[str, list[str]] = {}
        for category, key in keys:
            by_category.setdefault(category, []).append(key)
        for category, names in by_category.items():
            response = await self._run(
                self._table("memories")
                .delete(count=CountMethod.exact, returning=ReturnMethod.minimal)
                .eq("user_id", str(user_id))
                .eq("category", category)
                .in_("key", names)
            )
            deleted += response.count or 0
        return deleted

    async def _record_memory_access(self, accesses: list[MemoryAccess]) -> None:
        await self._run(self._client.rpc("companion_record_memory_access", {"p_accesses": wire.access_rows(accesses)}))

    async def _memory_history(self, user_id: uuid.UUID, category: str, key: str) -> list[MemoryChange]:
        rows = await self._rows(
            self._table("memory_history")
            .select("user_id,category,key,old_value,new_value,changed_at")
            .eq("user_id", str(user_id))
            .eq("category", category)
            .eq("key", key)
            .order("changed_at")
            .order("id")
        )
        return [wire.memory_change_from_row(r) for r in rows]

    async def _all_memory_history(self, user_id: uuid.UUID) -> list[MemoryChange]:
        rows = await self._rows(
            self._table("memory_history")
            .select("user_id,category,key,old_value,new_value,changed_at")
            .eq("user_id", str(user_id))
            .order("changed_at")
            .order("id")
        )
        return [wire.memory_change_from_row(r) for r in rows]

    # Conversations ----------------------------------------------------------------------------------------

    async def _start_conversation(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, at: dt.datetime
    ) -> Conversation:
        await self._run(
            self._table("conversations").upsert(
                {"id": str(conversation_id), "user_id": str(user_id), "started_at": wire.time_text(at)},
                on_conflict="id",
                ignore_duplicates=True,
                returning=ReturnMethod.minimal,
                default_to_null=False,
            )
        )
        rows = await self._rows(
            self._table("conversations").select("*").eq("id", str(conversation_id)).eq("user_id", str(user_id))
        )
        if not rows:
            raise InvalidInputError("conversation id is already used by another user")
        return wire.conversation_from_row(rows[0])

    async def _finish_conversation(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        at: dt.datetime,
        summary: str | None,
        open_threads: tuple[str, ...],
    ) -> None:
        stamp = wire.time_text(at)
        updated = await self._rows(
            self._table("conversations")
            .update({"ended_at": stamp, "summary": summary, "open_threads": list(open_threads)})
            .eq("id", str(conversation_id))
            .eq("user_id", str(user_id))
        )
        if not updated:  # the start was never stored (or is still queued): record the conversation whole
            await self._run(
                self._table("conversations").upsert(
                    {
                        "id": str(conversation_id),
                        "user_id": str(user_id),
                        "started_at": stamp,
                        "ended_at": stamp,
                        "summary": summary,
                        "open_threads": list(open_threads),
                    },
                    on_conflict="id",
                    ignore_duplicates=True,
                    returning=ReturnMethod.minimal,
                )
            )

    async def _recent_conversations(self, user_id: uuid.UUID, limit: int) -> list[Conversation]:
        rows = await self._rows(
            self._table("conversations")
            .select("*")
            .eq("user_id", str(user_id))
            .order("started_at", desc=True)
            .order("id")
            .limit(limit)
        )
        return [wire.conversation_from_row(r) for r in rows]

    async def _append_messages(self, messages: list[MessageWrite]) -> int:
        rows = await self._rows(
            self._table("messages").upsert(
                [wire.message_row(m) for m in messages], on_conflict="id", ignore_duplicates=True
            )
        )
        return len(rows)

    async def _recent_messages(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID | None, limit: int
    ) -> list[Message]:
        request = self._table("messages").select("*").eq("user_id", str(user_id))
        if conversation_id is not None:
            request = request.eq("conversation_id", str(conversation_id))
        rows = await self._rows(request.order("created_at", desc=True).order("id", desc=True).limit(limit))
        return [wire.message_from_row(r) for r in reversed(rows)]

    async def _delete_user_data(self, user_id: uuid.UUID) -> DeletedCounts:
        response = await self._run(self._client.rpc("companion_delete_user_data", {"p_user_id": str(user_id)}))
        return DeletedCounts(**response.data)

    async def _user_version(self, user_id: uuid.UUID) -> int:
        rows = await self._rows(self._table("user_versions").select("version").eq("user_id", str(user_id)))
        return int(rows[0]["version"]) if rows else 0

    async def _changes_since(self, user_id: uuid.UUID, version: int) -> UserChanges:
        # One request, one snapshot (0007's companion_changes_since): the version, the rows and the pruning horizon
        # agree, as PostgresStorage's transaction reads them; five PostgREST reads in a row would cost a turn five
        # round trips to the project and could not see a prune committed between them.
        response = await self._run(
            self._client.rpc("companion_changes_since", {"p_user_id": str(user_id), "p_version": version})
        )
        return wire.changes_from_json(response.data)

    async def _prune_tombstones(self, before: dt.datetime) -> int:
        response = await self._run(self._client.rpc("companion_prune_tombstones", {"p_before": before.isoformat()}))
        return int(response.data)

    async def _record_forgetting(self, user_id: uuid.UUID, at: dt.datetime) -> None:
        # PostgREST's upsert sets what it is sent: times of forgetting only grow, so the last one is the latest.
        await self._run(
            self._table("forgettings").upsert(
                {"user_id": str(user_id), "forgotten_at": wire.time_text(at)},
                on_conflict="user_id",
                returning=ReturnMethod.minimal,
            )
        )

    async def _forgotten_at(self, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, dt.datetime]:
        rows = await self._rows(
            self._table("forgettings").select("user_id, forgotten_at").in_("user_id", [str(u) for u in user_ids])
        )
        return {uuid.UUID(r["user_id"]): dt.datetime.fromisoformat(r["forgotten_at"]) for r in rows}

    async def _rewrite_texts(
        self,
        user_id: uuid.UUID,
        conversations: dict[uuid.UUID, tuple[str | None, tuple[str, ...]]],
        messages: dict[uuid.UUID, str],
    ) -> int:
        # PostgREST updates one filter at a time: one PATCH a row. Each is whole on its own, and rewriting again
        # is harmless, so a failure halfway is mended by running the same rewrite again.
        changed = 0
        for cid, (summary, threads) in conversations.items():
            changed += len(await self._rows(
                self._table("conversations").update({"summary": summary, "open_threads": list(threads)})
                .eq("id", str(cid)).eq("user_id", str(user_id))
            ))  # fmt: skip
        for mid, content in messages.items():
            changed += len(await self._rows(
                self._table("messages").update({"content": content}).eq("id", str(mid)).eq("user_id", str(user_id))
            ))  # fmt: skip
        return changed
