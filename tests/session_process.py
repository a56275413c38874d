"""One user's conversation in a job process of its own, for tests of several sessions of one user at once:
``python -m tests.session_process <user id> <name>``.

It opens the real services (``open_process`` / ``open_session``, on the storage and LLM the environment names) and
the Companion in LiveKit's text mode, with the LLM model named ``session-<name>`` so that the fake server can tell
the sessions' requests apart. It prints ``READY``, then for each line on stdin (what the user types) runs one turn
and prints ``DONE``; an empty line or the end of stdin closes the session as the job's shutdown would.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from livekit.agents import AgentSession
from livekit.plugins import openai

from agent import finish_companion, start_companion, turn_detection
from core.config import Settings, load_settings
from services.container import open_process, open_session


def text_session(settings: Settings, model: openai.LLM) -> AgentSession:
    """LiveKit's session in text mode, with TURN_DETECTOR's detection: left to itself, AgentSession would build the
    local end-of-turn model (244 MB) in every session process."""
    return AgentSession(llm=model, turn_handling={"turn_detection": turn_detection(settings)})


async def main(user: uuid.UUID, name: str) -> None:
    settings = load_settings(env_file=None)
    process = await open_process(settings)
    services = await open_session(process, user_id=user)
    model = openai.LLM(model=f"session-{name}", base_url=settings.openai_base_url, api_key="x")
    session = text_session(settings, model)
    await start_companion(session, process=process, services=services)
    print("READY", flush=True)
    try:
        while line := (await asyncio.to_thread(sys.stdin.readline)).strip():
            await session.run(user_input=line)
            print("DONE", flush=True)
    finally:
        await finish_companion(process=process, services=services, session=session, llm_budget=1.0)
        await model.aclose()


if __name__ == "__main__":
    asyncio.run(main(uuid.UUID(sys.argv[1]), sys.argv[2]))
