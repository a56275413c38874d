"""Companion: a LiveKit Agents worker whose agent remembers each user.

    python agent.py console --text     chat in the terminal (no LiveKit server needed)
    python agent.py dev | start        join LiveKit rooms (LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET)

This file only wires things together; behaviour lives in core/, services/, infrastructure/ and tts/.
"""

from __future__ import annotations

import sys

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, JobProcess, cli
from livekit.plugins import openai, silero

from core.config import Settings, get_settings
from core.errors import ConfigError
from core.preflight import EXIT_CONFIG, preflight


class Companion(Agent):
    """The companion persona. Memory, tools and the per-turn context arrive with the services."""

    def __init__(self, *, name: str) -> None:
        super().__init__(
            instructions=(
                f"You are {name}, a warm, attentive companion in a voice conversation. Answer in one to three short "
                "spoken sentences, without markdown, lists or emoji. Ask at most one question at a time."
            )
        )


def prewarm(proc: JobProcess) -> None:
    proc.userdata["vad"] = silero.VAD.load()


server = AgentServer(setup_fnc=prewarm)


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    settings = get_settings()
    session = AgentSession(
        vad=ctx.proc.userdata["vad"],
        stt=openai.STT(base_url=settings.openai_base_url, api_key=settings.openai_key_for_client),
        llm=_llm(settings),
        tts=openai.TTS(base_url=settings.openai_base_url, api_key=settings.openai_key_for_client),
    )
    await session.start(agent=Companion(name=settings.agent_name), room=ctx.room)


def _llm(settings: Settings) -> openai.LLM:
    return openai.LLM(
        model=settings.llm_model, base_url=settings.openai_base_url, api_key=settings.openai_key_for_client
    )


def main(argv: list[str]) -> int:
    """Check the configuration for the command in ``argv``, then hand over to LiveKit's CLI."""
    try:
        settings = get_settings()
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_CONFIG
    problem = preflight(settings, argv[1:])
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_CONFIG
    cli.run_app(server)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
