"""The inspector's pages in a real headless browser (Debian's Chromium), against a real text-mode session of the
agent: what is said appears on the page, an edit there reaches the next turn's LLM request, an erasure leaves the
export empty, and stored markup is shown as text."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit.agents import AgentSession
from livekit.plugins import openai

from agent import start_companion
from core.config import Settings
from inspector.server import serve
from services.container import Process, open_process, open_session
from services.persona import NOTES_HEADER
from tests.fakes.openai_server import FakeOpenAIServer, ToolCall, tool_results
from tests.inspector.browser import Browser, drivers
from tests.inspector.conftest import OPERATOR_TOKEN

pytestmark = pytest.mark.slow

MAYA = "My sister Maya lives in Lisbon"
PORTO = "My sister Maya lives in Porto"
REMEMBER = "Remember that my sister Maya lives in Lisbon"


class Brain:
    """The fake LLM: the agent's requests by the user's words (a tool call or a short answer), the services' own
    (extraction, summary, profile) with nothing to add."""

    def __init__(self) -> None:
        self.tools = {REMEMBER: ToolCall("remember", {"category": "RELATIONSHIP", "key": "sister city", "value": MAYA})}

    def __call__(self, body: dict[str, Any]) -> str | ToolCall | None:
        if body["messages"][0]["content"].startswith("You are Companion"):
            if tool_results(body):
                return "Done."
            said = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
            return self.tools.get(said, "I see.")
        return '{"memories": []}' if "JSON" in body["messages"][0]["content"] else "A profile."


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(responder=Brain()) as server:
        yield server


@pytest.fixture
async def process(tmp_path: Path, fake: FakeOpenAIServer) -> AsyncIterator[Process]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite:///{tmp_path}/companion.db",
        openai_base_url=fake.base_url,
        retrieval_deadline_ms=2_000,
        inspector_token=OPERATOR_TOKEN,
        inspector_rate_limit_per_minute=10_000,
    )
    process = await open_process(settings)
    yield process
    await process.aclose()


@pytest.fixture
async def site(process: Process) -> AsyncIterator[str]:
    async with serve(process.settings, host="127.0.0.1", port=0, process=process) as url:
        yield url


@pytest.fixture
async def browser(site: str) -> AsyncIterator[Browser]:
    for driver in drivers():
        page = Browser(driver, site)
        await page.sign_in(OPERATOR_TOKEN)
        yield page


async def say(process: Process, fake: FakeOpenAIServer, user: uuid.UUID, line: str) -> None:
    """One typed turn in a text-mode session of the agent, as the console runs it; the session then ends."""
    services = await open_session(process, user_id=user)
    model = openai.LLM(model="fake", base_url=fake.base_url, api_key="x")
    session = AgentSession(llm=model)
    try:
        await start_companion(session, process=process, services=services)
        await session.run(user_input=line)
    finally:
        await session.aclose()
        await model.aclose()
    await process.batcher.flush()


def notes_of_last_reply(fake: FakeOpenAIServer) -> str:
    asked = [r for r in fake.chat_requests if r["messages"][0]["content"].startswith("You are Companion")]
    return "\n".join(str(m["content"]) for m in asked[-1]["messages"] if str(m["content"]).startswith(NOTES_HEADER))


async def test_a_memory_said_in_a_session_is_on_the_page_and_an_edit_reaches_the_next_turn(
    process: Process, fake: FakeOpenAIServer, browser: Browser
) -> None:
    user = uuid.uuid4()
    await say(process, fake, user, REMEMBER)

    await browser.open(f"/users/{user}")
    card = "#m-RELATIONSHIP-sister_city"
    assert MAYA in await browser.text(card)
    await browser.click(f"{card} details:last-of-type summary")  # "Edit or forget"
    await browser.fill(f"{card} textarea[name=value]", PORTO)
    await browser.submit(f"{card} form.edit button[type=submit]")

    assert await browser.path() == f"/users/{user}?done=edited"
    assert PORTO in await browser.text(card)
    assert "Earlier values (1)" in await browser.text(card)
    await say(process, fake, user, "Where does my sister live?")
    notes = notes_of_last_reply(fake)
    assert PORTO in notes
    assert "Lisbon" not in notes


async def test_erase_with_the_typed_user_id_leaves_the_export_empty(
    process: Process, fake: FakeOpenAIServer, browser: Browser, site: str
) -> None:
    user = uuid.uuid4()
    await say(process, fake, user, REMEMBER)
    await browser.open(f"/users/{user}")

    await browser.fill("input[name=confirm]", "yes please")
    await browser.submit(".danger-zone button")
    assert "type the user id" in await browser.text()
    await browser.open(f"/users/{user}")
    await browser.fill("input[name=confirm]", str(user))
    await browser.submit(".danger-zone button")

    assert "Everything was erased." in await browser.text()
    assert "Nothing is remembered." in await browser.text()
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}) as api:
        export = (await api.get(f"{site}/api/users/{user}/export")).json()
    assert (export["profile"], export["memories"], export["conversations"], export["messages"]) == (None, [], [], [])


async def test_a_stored_script_is_shown_as_text(process: Process, browser: Browser) -> None:
    user = uuid.uuid4()
    hostile = "<script>alert('memory')</script><img src=x onerror=alert(1)>"
    await (await open_session(process, user_id=user)).memories.save_memory("FACT", "note", hostile)

    await browser.open(f"/users/{user}")

    assert hostile in await browser.text("#m-FACT-note .value")
    assert not await browser.alert_shown()
    assert "<script>alert" not in await browser.source()  # the DOM holds text, not an element
    await browser.open(f"/users/{user}/recall?q=" + "alert memory")
    assert not await browser.alert_shown()


async def test_pages_need_a_sign_in_and_forms_their_csrf_token(site: str, process: Process) -> None:
    user = uuid.uuid4()
    await (await open_session(process, user_id=user)).memories.save_memory("FACT", "note", "Likes chess")
    async with httpx.AsyncClient(base_url=site) as anonymous:
        assert (await anonymous.get(f"/users/{user}")).headers["location"] == "/login"
        await anonymous.get("/login")  # an anonymous browser session
        forged = await anonymous.post(f"/users/{user}/erase", data={"confirm": str(user), "csrf": "forged"})
    assert forged.status_code == 303  # not signed in: to the sign-in page, nothing erased
    async for signed_in in _signed_in_client(site):
        refused = await signed_in.post(f"/users/{user}/erase", data={"confirm": str(user), "csrf": "forged"})
        assert refused.status_code == 403
    assert await process.storage.get_memory(user, "FACT", "note") is not None


async def test_the_pages_show_recall_profile_and_conversations(
    process: Process, fake: FakeOpenAIServer, browser: Browser
) -> None:
    user = uuid.uuid4()
    await say(process, fake, user, REMEMBER)

    await browser.open(f"/users/{user}/recall?q=where+does+my+sister+live%3F")
    recall = await browser.text()
    assert "The relevance gate lets these into the LLM request." in recall
    assert MAYA in recall
    assert "meaning (z)" in recall
    await browser.open(f"/users/{user}/profile")
    assert "You are Companion" in await browser.text()
    await browser.open(f"/users/{user}/conversations")
    assert "messages" in await browser.text()
    await browser.open("/")
    assert str(user) in await browser.text()


async def _signed_in_client(site: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=site) as client:
        form = (await client.get("/login")).text
        csrf = form.split('name="csrf" value="')[1].split('"')[0]
        signed = await client.post("/login", data={"csrf": csrf, "token": OPERATOR_TOKEN})
        assert signed.status_code == 303
        yield client


async def test_an_edit_reaches_the_next_turn_of_a_session_already_live(
    process: Process, fake: FakeOpenAIServer, browser: Browser
) -> None:
    user = uuid.uuid4()
    await say(process, fake, user, REMEMBER)
    services = await open_session(process, user_id=user)
    model = openai.LLM(model="fake", base_url=fake.base_url, api_key="x")
    session = AgentSession(llm=model)
    try:
        await start_companion(session, process=process, services=services)
        await session.run(user_input="Where does my sister live?")
        assert MAYA in notes_of_last_reply(fake)

        await browser.open(f"/users/{user}")
        card = "#m-RELATIONSHIP-sister_city"
        await browser.click(f"{card} details:last-of-type summary")
        await browser.fill(f"{card} textarea[name=value]", PORTO)
        await browser.submit(f"{card} form.edit button[type=submit]")
        await session.run(user_input="Where does my sister live?")

        assert PORTO in notes_of_last_reply(fake)
    finally:
        await session.aclose()
        await model.aclose()
