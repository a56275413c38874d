"""What each command line needs before LiveKit's CLI starts.

LiveKit's own CLI exits 0 when ``start`` cannot reach a server (no ``LIVEKIT_URL``), so a supervisor would never
see the failure. The agent runs :func:`preflight` first and exits with :data:`EXIT_CONFIG` (sysexits' EX_CONFIG)
and a message that names the fix. :func:`preflight_warnings` are printed and the command goes on: the configuration works,
but not as well as it could.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.config import Settings

EXIT_CONFIG = 78
EXIT_SESSION_FAILED = 70  # sysexits' EX_SOFTWARE: the console's session failed after start-up

WORKER_COMMANDS = frozenset({"start", "dev", "connect"})
LLM_COMMANDS = frozenset({"console", "start", "dev", "connect"})

_LIVEKIT_FLAGS = {"LIVEKIT_URL": "--url", "LIVEKIT_API_KEY": "--api-key", "LIVEKIT_API_SECRET": "--api-secret"}

LLM_MISSING = (
    "Companion needs a language model, and none is configured. Set OPENAI_API_KEY to use OpenAI "
    "(export OPENAI_API_KEY=sk-..., or put it in .env), or point OPENAI_BASE_URL at any OpenAI-compatible server, "
    "for example a local Ollama: OPENAI_BASE_URL=http://localhost:11434/v1 LLM_MODEL=llama3.2 (no key needed). "
    "See .env.example for every setting."
)


def command_of(argv: Sequence[str]) -> str | None:
    """The CLI sub-command in ``argv`` (``sys.argv[1:]``), or None for ``--help`` and friends."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def preflight(settings: Settings, argv: Sequence[str]) -> str | None:
    """Return the message to print (and exit with) when ``argv``'s command cannot run, else None."""
    command = command_of(argv)
    if command is None or "--help" in argv:
        return None
    paragraphs: list[str] = []
    if command in WORKER_COMMANDS:
        missing = [name for name in settings.missing_livekit_variables if not _given_as_flag(name, argv)]
        if missing:
            paragraphs.append(
                f"`{command}` connects this worker to a LiveKit server, but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set. Set them in the environment or .env (LiveKit "
                "Cloud: the project's Settings > Keys page; self-hosted: your server's URL and API key/secret), "
                "or try the agent locally with `python agent.py console --text`, which needs no LiveKit server."
            )
    if command in LLM_COMMANDS and not settings.llm_configured:
        paragraphs.append(LLM_MISSING)
    if command in LLM_COMMANDS and settings.turn_detector == "cloud":
        missing = [name for name in settings.missing_livekit_variables if name != "LIVEKIT_URL"]
        if missing:
            paragraphs.append(
                f"TURN_DETECTOR=cloud runs LiveKit Inference's end-of-turn model, which needs {' and '.join(missing)} "
                "in the environment or .env. Set them, or use TURN_DETECTOR=local (the offline model) or vad."
            )
    return "\n\n".join(paragraphs) or None


LOCAL_EMBEDDER_IS_ENGLISH = (
    "AGENT_LANGUAGE is {language}, but the local embedder (all-MiniLM-L6-v2) knows only English: memories will be "
    "found by their words alone, not by what they mean. Set EMBEDDING_PROVIDER=openai (a multilingual model) for "
    "retrieval by meaning in {language}."
)


def preflight_warnings(settings: Settings) -> list[str]:
    """What works but works poorly with this configuration, each with the fix."""
    found = []
    language = settings.agent_language.split("-")[0].lower()
    if settings.embedding_provider == "local" and language != "en":
        found.append(LOCAL_EMBEDDER_IS_ENGLISH.format(language=settings.agent_language))
    return found


def _given_as_flag(variable: str, argv: Sequence[str]) -> bool:
    flag = _LIVEKIT_FLAGS[variable]
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)
