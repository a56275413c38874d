"""Storage behind one narrow async port (:class:`Storage`), with SQLite, PostgreSQL and Supabase backends."""

from __future__ import annotations

import httpx

from core.config import PostgresTarget, SqliteTarget, StorageTarget, SupabaseTarget
from infrastructure.storage.port import Storage
from infrastructure.storage.records import (
    PROFILE_FIELDS,
    Conversation,
    ConversationEnd,
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
    StorageStats,
    Tombstone,
    UserChanges,
    memory_key_hash,
)

__all__ = [
    "PROFILE_FIELDS",
    "Conversation",
    "ConversationEnd",
    "DeletedCounts",
    "Memory",
    "MemoryAccess",
    "MemoryChange",
    "MemoryWrite",
    "Message",
    "MessageWrite",
    "OnboardingAnswers",
    "Profile",
    "SavedMemory",
    "Storage",
    "StorageStats",
    "Tombstone",
    "UserChanges",
    "memory_key_hash",
    "open_storage",
]


async def open_storage(target: StorageTarget, *, http_client: httpx.AsyncClient | None = None) -> Storage:
    """Open the backend the configuration chose (``Settings.storage``). Backends import lazily: each has its driver."""
    match target:
        case SqliteTarget(path=path):
            from infrastructure.storage.sqlite import SqliteStorage

            return await SqliteStorage.open(path)
        case PostgresTarget(dsn=dsn, auto_migrate=migrate, pool_max_size=size, statement_cache_size=cache):
            from infrastructure.storage.postgres import PostgresStorage

            return await PostgresStorage.open(dsn.get_secret_value(), migrate=migrate, max_size=size,
                                              statement_cache_size=cache)  # fmt: skip
        case SupabaseTarget(url=url, service_role_key=key):
            from infrastructure.storage.supabase import SupabaseStorage

            return await SupabaseStorage.open(url, key.get_secret_value(), http_client=http_client)
