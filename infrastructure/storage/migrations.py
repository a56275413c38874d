"""Applies ``supabase/migrations/*.sql`` to a PostgreSQL database, in order, once each.

Applied versions are recorded in ``companion_schema_migrations``; an advisory lock serialises workers that start
together. Every migration is also written to be harmless when applied again (``force=True`` does that), so a
database migrated by the Supabase CLI can be handed to the worker and vice versa.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "supabase" / "migrations"
_LOCK_KEY = 0x636F6D70  # "comp": any fixed 32-bit number shared by every worker
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The numbered migrations in ``directory``, oldest first. A file that is not ``NNNN_name.sql`` is an error."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name} is not named NNNN_description.sql")
        migrations.append(Migration(version=match.group(1), path=path))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError("two migration files share a number")
    return migrations


async def apply_migrations(conn: asyncpg.Connection, *, force: bool = False) -> list[str]:
    """Apply pending migrations (all of them with ``force``) in one transaction; return the versions applied."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("select pg_advisory_xact_lock($1)", _LOCK_KEY)
        # Row-level security with no policy: on Supabase the REST API must not expose this table to anyone.
        await conn.execute(
            "create table if not exists public.companion_schema_migrations ("
            " version text primary key, applied_at timestamptz not null default now());"
            "alter table public.companion_schema_migrations enable row level security"
        )
        done = {r["version"] for r in await conn.fetch("select version from public.companion_schema_migrations")}
        migrations = await asyncio.to_thread(lambda: [(m, m.sql) for m in discover()])
        for migration, sql in migrations:
            if migration.version in done and not force:
                continue
            await conn.execute(sql)
            await conn.execute(
                "insert into public.companion_schema_migrations (version) values ($1) on conflict do nothing",
                migration.version,
            )
            applied_now.append(migration.version)
    return applied_now
