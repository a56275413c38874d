"""Start-up probe: can this process use the storage and the cache it is configured for?

Run once in the main process before LiveKit starts (so the console, ``dev`` and ``start`` refuse to start before
any job is spawned), each check under a short timeout. A finding is one line that names the variable to fix.

What is fatal, and why:
- storage that cannot be used (database down, password refused, database missing, SQLite path not writable,
  Supabase key refused): fatal. Companion's point is remembering; a session started without its memory would greet
  a returning user as a stranger and could not keep what they say. The supervisor restarts a worker that exited
  non-zero; a person at the console fixes the variable.
- Redis unreachable: not fatal. The cache already falls back to memory and switches back when Redis returns.
- Redis refusing the password: fatal (a wrong setting never fixes itself).
A malformed DATABASE_URL or REDIS_URL never gets here: :mod:`core.config` refuses it.

Messages carry host names, ports, paths and error class names, never a password or a driver's message text.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from core.config import DEFAULT_DATABASE_URL, PostgresTarget, Settings, SqliteTarget, SupabaseTarget
from core.errors import StorageError
from infrastructure.storage.sqlite import SqliteStorage

PROBE_TIMEOUT = 3.0  # seconds per check: a local server answers in milliseconds, a remote one well under a second


@dataclass(frozen=True, slots=True)
class Finding:
    message: str  # one line, naming the variable and the fix
    fatal: bool  # True: the process must not start; False: it starts degraded


async def probe(settings: Settings, *, within: float = PROBE_TIMEOUT) -> list[Finding]:
    """Check the configured storage and cache; return what is wrong (empty: all is well)."""
    found = [await _probe_storage(settings, within=within)]
    if settings.cache_uses_redis and settings.redis_url is not None:
        found.append(await _probe_redis(settings.redis_url, within=within))
    return [finding for finding in found if finding is not None]


async def _probe_storage(settings: Settings, *, within: float) -> Finding | None:
    match settings.storage:
        case SqliteTarget(path=path):
            return await _probe_sqlite(path, default=settings.database_url is None, within=within)
        case PostgresTarget(dsn=dsn):
            return await _probe_postgres(dsn.get_secret_value(), within=within)
        case SupabaseTarget(url=url, service_role_key=key):
            return await _probe_supabase(url, key.get_secret_value(), within=within)


async def _probe_sqlite(path: Path, *, default: bool, within: float) -> Finding | None:
    named = f"the default {DEFAULT_DATABASE_URL} (DATABASE_URL is unset)" if default else f"DATABASE_URL ({path})"
    try:
        async with asyncio.timeout(within):
            storage = await SqliteStorage.open(path)
            await storage.aclose()
    except (StorageError, OSError, TimeoutError) as exc:
        cause = exc.__cause__ if isinstance(exc, StorageError) and exc.__cause__ is not None else exc
        reason = getattr(cause, "strerror", None) or type(cause).__name__
        return Finding(
            f"Cannot open or write the SQLite database {named}: {reason}. Set DATABASE_URL=sqlite:///<a writable "
            "path>.db (its folder is created), or point it at PostgreSQL.",
            fatal=True,
        )
    return None


async def _probe_postgres(dsn: str, *, within: float) -> Finding | None:
    where = _host_port(dsn, default_port=5432)
    try:
        conn = await asyncpg.connect(dsn, timeout=within)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        message = f"PostgreSQL at {where} refused the user name or password in DATABASE_URL ({exc.sqlstate})"
        return Finding(message + ": fix the credentials in DATABASE_URL.", fatal=True)
    except asyncpg.InvalidCatalogNameError:
        return Finding(
            f"The database named in DATABASE_URL does not exist on PostgreSQL at {where}: create it "
            "(createdb <name>) or fix the name at the end of DATABASE_URL.",
            fatal=True,
        )
    except asyncpg.PostgresError as exc:
        return Finding(f"PostgreSQL at {where} refused the connection ({exc.sqlstate}): check DATABASE_URL.", True)
    except (OSError, TimeoutError, asyncpg.InterfaceError, ValueError) as exc:
        return Finding(
            f"Cannot reach PostgreSQL at {where} ({_why(exc)}): start the database, or fix the host and port in "
            "DATABASE_URL. Nothing can be remembered without it, so Companion does not start.",
            fatal=True,
        )
    await conn.close(timeout=within)
    return None


async def _probe_supabase(url: str, key: str, *, within: float) -> Finding | None:
    headers = {"apikey": key, "Authorization": f"Bearer {key}"}
    endpoint = url.rstrip("/") + "/rest/v1/profiles"
    try:
        async with httpx.AsyncClient(timeout=within) as client:
            response = await client.get(endpoint, params={"select": "user_id", "limit": "1"}, headers=headers)
    except httpx.HTTPError as exc:
        return Finding(
            f"Cannot reach Supabase at {_host_port(url, default_port=443)} ({_why(exc)}): check SUPABASE_URL.", True
        )
    if response.status_code in (401, 403):
        return Finding(
            f"Supabase refused SUPABASE_SERVICE_ROLE_KEY (HTTP {response.status_code}): copy the service_role key "
            "from the project's API settings.",
            fatal=True,
        )
    if response.status_code >= 400:
        return Finding(
            f"Supabase at SUPABASE_URL answered HTTP {response.status_code} to a read of the profiles table: check "
            "SUPABASE_URL and that supabase/migrations are applied.",
            fatal=True,
        )
    return None


async def _probe_redis(url: str, *, within: float) -> Finding | None:
    where = _host_port(url, default_port=6379)
    client = aioredis.Redis.from_url(url, socket_timeout=within, socket_connect_timeout=within)
    try:
        await client.ping()
    except AuthenticationError:
        return Finding(f"Redis at {where} refused the password in REDIS_URL: fix REDIS_URL.", fatal=True)
    except ResponseError as exc:  # NOAUTH / WRONGPASS arrive as plain responses on some servers
        if str(exc).split(" ", 1)[0] in ("NOAUTH", "WRONGPASS"):
            return Finding(f"Redis at {where} refused the password in REDIS_URL: fix REDIS_URL.", fatal=True)
        return Finding(f"Redis at {where} refused a PING ({type(exc).__name__}): the in-process cache is used.", False)
    except (RedisError, OSError, TimeoutError) as exc:
        return Finding(
            f"Redis at {where} (REDIS_URL) is not reachable ({_why(exc)}): starting with the in-process cache; "
            "Redis is used again as soon as it answers.",
            fatal=False,
        )
    finally:
        await client.aclose()
    return None


def _host_port(url: str, *, default_port: int) -> str:
    """``host:port`` of ``url``, never its user name or password."""
    parts = urlsplit(url)
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    return f"{parts.hostname or 'localhost'}:{port}"


def _why(exc: BaseException) -> str:
    """A few words on a connection failure: the OS's reason or the error's class, never a driver's message."""
    while exc.__cause__ is not None and not isinstance(exc, OSError):
        exc = exc.__cause__
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__
