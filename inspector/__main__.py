"""``python -m inspector``: serve the memory inspector on 127.0.0.1:INSPECTOR_PORT until Ctrl+C or SIGTERM.

It refuses to start (exit 78, one line naming the fix) without INSPECTOR_TOKEN, unless SUPABASE_URL and
SUPABASE_ANON_KEY let app users sign in with their own Supabase JWT.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from core.config import Settings, load_settings
from core.errors import ConfigError
from core.preflight import EXIT_CONFIG
from inspector.logs import configure as configure_logs
from inspector.server import serve

NEEDS_A_TOKEN = (
    "The inspector needs INSPECTOR_TOKEN (operators; make one with: python -c 'import secrets; "
    "print(secrets.token_urlsafe(32))'), or SUPABASE_URL and SUPABASE_ANON_KEY for app users to sign in."
)


def problem(settings: Settings) -> str | None:
    if settings.inspector_token is None and not (settings.supabase_url and settings.supabase_anon_key):
        return NEEDS_A_TOKEN
    return None


async def _run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(settings, host="127.0.0.1", port=settings.inspector_port) as url:
        print(f"Memory inspector on {url}", file=sys.stderr, flush=True)
        await stop.wait()


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return EXIT_CONFIG
    found = problem(settings)
    if found is not None:
        print(found, file=sys.stderr)
        return EXIT_CONFIG
    configure_logs()
    asyncio.run(_run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
