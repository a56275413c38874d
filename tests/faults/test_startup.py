"""Start-up faults: each either stops at once with status 78 and one line naming the variable to fix, or starts
degraded. Never a hang, never a traceback as the only message, never a failure that exits 0.

The fault matrix runs the start-up probe in process (milliseconds each); ``agent.py`` runs as a subprocess, as a user
meets it, where the wiring is what is tested: exit status, the one line, the console under a pseudo-terminal."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pexpect
import pytest

from core.config import Settings
from core.preflight import EXIT_CONFIG, EXIT_SESSION_FAILED
from infrastructure.startup_probe import Finding, probe
from tests.agent_process import AGENT, REPO, clean_env, run_agent
from tests.conftest import SERVICE_ROLE_KEY, admin_dsn, dsn_for
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.postgrest import PostgrestStub
from tests.net import free_port
from tests.redis_servers import shared_redis_url

STOPS_WITHIN = 20.0  # seconds, imports included; the checks themselves take milliseconds (3 s at most each)


def stopped(tmp_path: Path, **variables: str) -> tuple[str, float]:
    """Run the console with ``variables``; assert it refused to start as it should; return stderr and the time."""
    started = time.monotonic()
    result = run_agent(
        ["console", "--text"], cwd=tmp_path, env=clean_env(tmp_path, OPENAI_API_KEY="sk-test", **variables)
    )
    took = time.monotonic() - started
    assert result.returncode == EXIT_CONFIG, result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert took < STOPS_WITHIN
    return result.stderr, took


def with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def problems(**settings: Any) -> list[Finding]:
    """What the start-up probe finds with these settings (the same call main() makes before LiveKit starts)."""
    return await probe(Settings(_env_file=None, openai_api_key="sk-test", **settings))  # type: ignore[call-arg]


def only_fatal(found: list[Finding]) -> str:
    assert len(found) == 1, found
    assert found[0].fatal
    return found[0].message


@pytest.mark.postgres
def test_a_wrong_postgres_password_stops_the_console_with_78_naming_database_url(tmp_path: Path) -> None:
    stderr, took = stopped(tmp_path, DATABASE_URL=with_password(admin_dsn(), "not-the-password-31337"))

    assert stderr.strip() == (
        f"PostgreSQL at {urlsplit(admin_dsn()).hostname}:{urlsplit(admin_dsn()).port} refused the user name or "
        "password in DATABASE_URL (28P01): fix the credentials in DATABASE_URL."
    )
    assert "not-the-password-31337" not in stderr


@pytest.mark.postgres
async def test_a_database_that_is_down_is_fatal_naming_database_url() -> None:
    parts = urlsplit(admin_dsn())
    closed = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{free_port()}"))
    message = only_fatal(await problems(database_url=closed))

    assert message.startswith("Cannot reach PostgreSQL at 127.0.0.1:")
    assert "(connection refused)" in message
    assert "DATABASE_URL" in message
    assert str(parts.password) not in message


@pytest.mark.postgres
async def test_a_database_that_does_not_exist_is_fatal_naming_database_url() -> None:
    message = only_fatal(await problems(database_url=dsn_for(f"companion_test_missing_{secrets.token_hex(4)}")))

    assert message.startswith("The database named in DATABASE_URL does not exist")


async def test_an_sqlite_path_that_cannot_be_written_is_fatal_naming_database_url(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    message = only_fatal(await problems(database_url=f"sqlite:///{tmp_path}/a-file/companion.db"))

    assert message.startswith(f"Cannot open or write the SQLite database DATABASE_URL ({tmp_path}/a-file/companion.db)")


def test_a_malformed_redis_url_stops_the_console_with_78_naming_redis_url(tmp_path: Path) -> None:
    stderr, _ = stopped(tmp_path, REDIS_URL="garbage")

    assert "REDIS_URL must be redis://" in stderr


async def test_an_unreachable_redis_only_warns(tmp_path: Path) -> None:
    found = await problems(
        database_url=f"sqlite:///{tmp_path}/companion.db", redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )

    assert len(found) == 1
    assert not found[0].fatal
    assert "(REDIS_URL) is not reachable" in found[0].message
    assert "starting with the in-process cache" in found[0].message


async def test_a_refused_supabase_key_is_fatal_naming_the_key(postgrest_stub: PostgrestStub) -> None:
    found = await problems(supabase_url=postgrest_stub.url, supabase_service_role_key="not-" + SERVICE_ROLE_KEY)

    assert only_fatal(found).startswith("Supabase refused SUPABASE_SERVICE_ROLE_KEY (HTTP 401)")
    assert SERVICE_ROLE_KEY not in found[0].message
    assert await problems(supabase_url=postgrest_stub.url, supabase_service_role_key=SERVICE_ROLE_KEY) == []


@pytest.mark.postgres
async def test_a_healthy_configuration_finds_nothing(migrated_database: str) -> None:
    assert await problems(database_url=migrated_database, redis_url=shared_redis_url()) == []


@pytest.mark.slow
def test_a_worker_that_cannot_reach_livekit_exits_non_zero_naming_livekit_url(tmp_path: Path) -> None:
    env = clean_env(
        tmp_path,
        OPENAI_API_KEY="sk-test",
        LIVEKIT_URL=f"ws://127.0.0.1:{free_port()}",
        LIVEKIT_API_KEY="APIkey",
        LIVEKIT_API_SECRET="a-secret-long-enough-for-hmac-sha256-000",
        LIVEKIT_MAX_RETRY="1",  # LiveKit waits 0 s before its one retry
    )
    started = time.monotonic()
    result = run_agent(["start"], cwd=tmp_path, env=env, timeout=60)  # `dev` goes the same way (measured: 2 s)

    assert result.returncode == EXIT_CONFIG  # LiveKit's CLI alone logs "worker failed" and exits 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("The worker could not connect to the LiveKit server at ws://127.0.0.1:")
    assert "LIVEKIT_URL" in last_line
    assert time.monotonic() - started < 30


def test_scripts_console_exits_with_the_console_status_where_make_would_say_2(tmp_path: Path) -> None:
    # GNU make exits 2 whenever a recipe fails; `make console` runs this script, which execs the console.
    env = clean_env(tmp_path, OPENAI_API_KEY="sk-test", REDIS_URL="garbage")
    result = subprocess.run(
        [str(REPO / "scripts" / "console")], env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == EXIT_CONFIG
    assert "REDIS_URL must be redis://" in result.stderr


# The console under a pseudo-terminal ---------------------------------------------------------------------------


def console(home: Path, fake: FakeOpenAIServer, **variables: str) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable,
        [str(AGENT), "console", "--text"],
        cwd=home,
        env=clean_env(home, OPENAI_BASE_URL=fake.base_url, **variables),
        encoding="utf-8",
        codec_errors="replace",
        dimensions=(40, 160),
        timeout=60,
    )


def ended(child: pexpect.spawn, *, within: float) -> tuple[int | None, str]:
    """Wait for the console to exit by itself; return its status and everything it printed."""
    started = time.monotonic()
    child.expect(pexpect.EOF, timeout=within)
    printed = child.before
    child.close()
    assert time.monotonic() - started < within
    return child.exitstatus, printed


@pytest.mark.console
@pytest.mark.slow
def test_redis_unreachable_starts_the_console_on_the_in_process_cache(tmp_path: Path) -> None:
    with FakeOpenAIServer() as fake:
        child = console(tmp_path, fake, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
        try:
            child.expect("is not reachable")
            child.expect("starting with the in-process cache")
            child.expect("lovely to meet you")  # the greeting, printed as an Agent line
            child.send("Hello there\r")
            child.expect("I heard you say: Hello there")
            child.expect("llm_ttft")
            time.sleep(1)
            child.sendcontrol("c")
            status, _ = ended(child, within=60)
        finally:
            child.close(force=True)
    assert status == 0


@pytest.mark.console
@pytest.mark.slow
@pytest.mark.postgres
async def test_a_session_that_fails_inside_the_console_exits_non_zero_at_once(
    tmp_path: Path, empty_database: str
) -> None:
    # Passes the start-up check (the server answers), then the job's migration fails on a table of someone else's.
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute("create table memories (id int)")
    finally:
        await conn.close()

    def run() -> tuple[int | None, str]:
        with FakeOpenAIServer() as fake:
            child = console(tmp_path, fake, DATABASE_URL=empty_database)
            try:
                return ended(child, within=30)  # LiveKit's console alone waits for the job forever
            finally:
                child.close(force=True)

    status, printed = await asyncio.to_thread(run)
    assert status == EXIT_SESSION_FAILED
    assert "The console's session failed (StorageError: postgres error 42703)" in printed


@pytest.mark.console
@pytest.mark.slow
def test_a_turn_whose_llm_fails_in_the_console_is_an_apology_and_the_console_goes_on(tmp_path: Path) -> None:
    with FakeOpenAIServer() as fake:
        child = console(tmp_path, fake)
        try:
            child.expect("lovely to meet you")
            time.sleep(1)
            fake.chat_failure = "500"
            started = time.monotonic()
            child.send("how are you?\r")
            child.expect("lost my train of thought", timeout=30)  # LiveKit's console alone exits 0 here
            assert time.monotonic() - started < 10
            fake.chat_failure = None
            child.send("hello again\r")
            child.expect("I heard you say: hello again", timeout=30)
            assert child.isalive()
        finally:
            child.close(force=True)
