"""App users on Supabase: a signed-in user's JWT is checked by Supabase Auth and forwarded with the anon key, so
row-level security decides what they read; they see only their own data, never a list of users, and change
nothing. The fakes are Supabase's HTTP edge (``tests/fakes/postgrest.py``: PostgREST and Auth's ``/user``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.config import Settings
from inspector import auth
from inspector.__main__ import problem
from inspector.server import serve
from services.container import Process, open_process, open_session
from tests.conftest import SERVICE_ROLE_KEY
from tests.fakes.postgrest import PostgrestStub

ANON_KEY = "test-anon-key"


@dataclass
class Project:
    stub: PostgrestStub
    url: str  # the inspector's
    process: Process
    ana: uuid.UUID
    bo: uuid.UUID

    def client(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture
async def project(tmp_path: Path) -> AsyncIterator[Project]:
    stub = PostgrestStub(service_role_key=SERVICE_ROLE_KEY, anon_key=ANON_KEY)
    await stub.start()
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        supabase_url=stub.url,
        supabase_service_role_key=SERVICE_ROLE_KEY,
        supabase_anon_key=ANON_KEY,
        openai_base_url="http://127.0.0.1:9/v1",
        inspector_rate_limit_per_minute=10_000,
    )
    process = await open_process(settings)
    ana, bo = uuid.uuid4(), uuid.uuid4()
    for user, value in ((ana, "Ana's sister Maya lives in Lisbon"), (bo, "Bo keeps bees")):
        services = await open_session(process, user_id=user)  # the worker, as the service role
        await services.users.ensure_profile_exists()
        await services.memories.save_memory("FACT", "note", value)
    stub.access_tokens.update({"jwt-of-ana": str(ana), "jwt-of-bo": str(bo)})
    try:
        async with serve(settings, host="127.0.0.1", port=0, process=process) as url:
            yield Project(stub, url, process, ana, bo)
    finally:
        await process.aclose()
        await stub.aclose()


async def test_an_app_user_reads_their_own_memories_through_their_own_jwt(project: Project) -> None:
    before = len(project.stub.requests)
    async with project.client("jwt-of-ana") as ana:
        response = await ana.get(f"/api/users/{project.ana}/memories")

    assert response.status_code == 200, response.text
    assert [m["value"] for m in response.json()["memories"]] == ["Ana's sister Maya lives in Lisbon"]
    asked = project.stub.requests[before:]
    assert asked, "the memories were read from the database"
    assert {(r.role, r.sub) for r in asked} == {("authenticated", str(project.ana))}  # never the service role
    assert project.stub.auth_requests[-1] == {"apikey": ANON_KEY, "token": "jwt-of-ana"}


async def test_an_app_user_sees_no_one_else_and_no_list_of_users(project: Project) -> None:
    async with project.client("jwt-of-ana") as ana:
        someone_else = await ana.get(f"/api/users/{project.bo}/memories")
        export = await ana.get(f"/api/users/{project.bo}/export")
        listed = await ana.get("/api/users")
        own_export = await ana.get(f"/api/users/{project.ana}/export")

    assert (someone_else.status_code, export.status_code) == (404, 404)
    assert someone_else.json() == {"error": "no such user"}
    assert listed.status_code == 403
    assert "Bo keeps bees" not in own_export.text
    assert own_export.json()["memories"][0]["value"] == "Ana's sister Maya lives in Lisbon"


async def test_an_app_user_changes_nothing_and_a_bad_token_is_401(project: Project) -> None:
    async with project.client("jwt-of-ana") as ana:
        edit = await ana.patch(f"/api/users/{project.ana}/memories/FACT/note", json={"value": "changed"})
        erase = await ana.post(f"/api/users/{project.ana}/erase", json={"confirm": str(project.ana)})
    async with project.client("not-a-jwt") as stranger:
        refused = await stranger.get(f"/api/users/{project.ana}/memories")

    assert (edit.status_code, erase.status_code) == (403, 403)
    assert "may read, not change" in edit.json()["error"]
    stored = await project.process.storage.get_memory(project.ana, "FACT", "note")
    assert stored is not None
    assert stored.value == "Ana's sister Maya lives in Lisbon"
    assert refused.status_code == 401
    assert refused.json() == {"error": "the token was not accepted: sign in again"}


def test_supabase_sign_in_lets_the_inspector_start_without_an_operator_token(tmp_path: Path) -> None:
    base = {"_env_file": None, "database_url": f"sqlite:///{tmp_path}/c.db"}
    assert problem(Settings(**base)) is not None  # type: ignore[arg-type]
    supabase = Settings(  # type: ignore[arg-type]
        **base, supabase_url="https://p.supabase.co", supabase_service_role_key="s", supabase_anon_key="a"
    )
    assert problem(supabase) is None


async def test_an_app_user_signs_in_to_the_pages_with_their_jwt_and_sees_only_their_own(project: Project) -> None:
    async with httpx.AsyncClient(base_url=project.url, timeout=30) as browser:
        form = (await browser.get("/login")).text
        assert "access token (a Supabase JWT)" in form
        csrf = form.split('name="csrf" value="')[1].split('"')[0]
        signed = await browser.post("/login", data={"csrf": csrf, "token": "jwt-of-ana"})
        home = await browser.get("/")
        own = await browser.get(f"/users/{project.ana}")
        other = await browser.get(f"/users/{project.bo}")

    assert signed.status_code == 303
    assert home.headers["location"] == f"/users/{project.ana}"  # no list of users
    assert "Ana&#x27;s sister Maya lives in Lisbon" in own.text
    assert "Edit or forget" not in own.text  # read-only: no forms that could only fail
    assert "ask the companion" in own.text
    assert other.status_code == 404
    assert "Bo keeps bees" not in other.text


async def test_an_app_user_whose_jwt_expired_is_sent_to_sign_in_again(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "VERIFIED_SECONDS", 0.0)  # every request asks Supabase Auth again
    project.stub.access_tokens["jwt-that-expires"] = str(project.ana)
    async with httpx.AsyncClient(base_url=project.url, timeout=30) as browser:
        form = (await browser.get("/login")).text
        csrf = form.split('name="csrf" value="')[1].split('"')[0]
        await browser.post("/login", data={"csrf": csrf, "token": "jwt-that-expires"})
        assert (await browser.get(f"/users/{project.ana}")).status_code == 200
        del project.stub.access_tokens["jwt-that-expires"]  # Supabase no longer takes it
        expired = await browser.get(f"/users/{project.ana}")
        again = await browser.get(f"/users/{project.ana}")

    assert expired.status_code == 303
    assert expired.headers["location"] == "/login"
    assert again.headers["location"] == "/login"  # the browser session is gone
