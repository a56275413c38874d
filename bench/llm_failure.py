"""LLM failure benchmark: how soon the user hears the apology when no language model answers.

    python bench/llm_failure.py [--runs 5]

The agent in LiveKit's text mode (SQLite in a temporary folder, the local embedder) with the session's own provider
settings (``agent.SESSION_CONNECT_OPTIONS``, the plugin's 5 s read timeout, no SDK retries), against an
OpenAI-compatible server that fails the way providers do: nothing listening (``dead_port``), 500, 429, a 200 whose
body is no completion (``malformed``), and headers then nothing (``stall``). For each: seconds from the user's
message to the apology in the chat (median and max of ``--runs``), and whether the next turn, once the server
answers again, is answered. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from livekit.agents import AgentSession  # noqa: E402
from livekit.plugins import openai  # noqa: E402

from agent import APOLOGY, SESSION_CONNECT_OPTIONS, finish_companion, start_companion  # noqa: E402
from core.config import Settings  # noqa: E402
from services.container import open_process, open_session  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402  (the network edge, as in the tests)
from tests.net import free_port  # noqa: E402

FAILURES = ("dead_port", "500", "429", "malformed", "stall")


async def one_run(fake: FakeOpenAIServer, failure: str, folder: Path) -> tuple[float, bool]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=f"sqlite:///{folder}/{uuid.uuid4()}.db", openai_base_url=fake.base_url
    )
    process = await open_process(settings)
    services = await open_session(process, user_id=uuid.uuid4())
    dead = f"http://127.0.0.1:{free_port()}/v1"
    model = openai.LLM(model="fake", base_url=dead if failure == "dead_port" else fake.base_url, api_key="x",
                       timeout=5.0, max_retries=0)  # fmt: skip
    session = AgentSession(llm=model, conn_options=SESSION_CONNECT_OPTIONS)
    await start_companion(session, process=process, services=services)
    fake.chat_failure = None if failure == "dead_port" else failure
    started = time.perf_counter()
    await session.run(user_input="How are you today?")
    seconds = time.perf_counter() - started
    replies = [i.text_content for i in session.history.items if getattr(i, "role", None) == "assistant"]
    assert replies[-1] == APOLOGY, replies[-1]
    fake.chat_failure = None
    await session.run(user_input="Hello again")
    replies = [i.text_content for i in session.history.items if getattr(i, "role", None) == "assistant"]
    goes_on = replies[-1] != APOLOGY
    await finish_companion(process=process, services=services, session=session)
    await model.aclose()
    return seconds, goes_on


async def main(runs: int) -> dict[str, object]:
    results: dict[str, object] = {}
    with FakeOpenAIServer() as fake, tempfile.TemporaryDirectory() as tmp:
        for failure in FAILURES:
            timings, went_on = [], []
            for _ in range(runs):
                seconds, goes_on = await one_run(fake, failure, Path(tmp))
                timings.append(seconds)
                went_on.append(goes_on)
            results[failure] = {
                "apology_after_s_median": round(statistics.median(timings), 3),
                "apology_after_s_max": round(max(timings), 3),
                "next_turn_answered": all(went_on) if failure != "dead_port" else None,
            }
    return {"runs": runs, "failures": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    print(json.dumps(asyncio.run(main(parser.parse_args().runs))))
