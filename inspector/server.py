"""Builds the inspector's object graph (the services' process, auth, the app) and serves it; closes it all."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from core.config import Settings
from inspector.access import Access, shared_http
from inspector.app import build_app
from inspector.auth import Authenticator, SupabaseAuth
from inspector.ratelimit import RateLimiter
from services.container import Process, open_process
from services.persona import Persona


async def inspector_app(settings: Settings, process: Process) -> web.Application:
    """The app over an open ``process`` (the caller closes it)."""
    app_users = None
    if settings.supabase_url and settings.supabase_anon_key:
        app_users = SupabaseAuth(settings.supabase_url, settings.supabase_anon_key, await shared_http(process))
    return build_app(
        access=Access(process=process, persona=Persona.from_settings(settings), app_users=app_users),
        auth=Authenticator(operator_token=settings.inspector_token, supabase=app_users),
        rate_limit=RateLimiter(per_minute=settings.inspector_rate_limit_per_minute),
    )


@contextlib.asynccontextmanager
async def serve(settings: Settings, *, host: str, port: int, process: Process | None = None) -> AsyncIterator[str]:
    """Serve on ``host:port`` (0: any free port) and yield the base URL; with ``process``, over that one (a test's,
    shared with an agent session), else over one of its own."""
    async with contextlib.AsyncExitStack() as stack:
        if process is None:
            process = await stack.enter_async_context(await open_process(settings))
        runner = web.AppRunner(await inspector_app(settings, process), access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://{host}:{bound}"
