"""The aiohttp application: security headers, rate limits, sign-in, and errors as sentences (never a traceback).

    app = build_app(access=..., auth=..., rate_limit=RateLimiter(per_minute=120))

Errors: bad input is 400 with the service's sentence, no token 401, another user's data 404 (as if it did not
exist: an app user learns nothing of others), a missing CSRF token 403, a change that lost to another session's 409,
too many requests 429, the database away 503; anything else 500 with a fixed sentence, and the log records its type
only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from core.errors import (
    CompanionError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    StorageUnavailableError,
    UnauthorizedError,
    WriteForbiddenError,
)
from inspector import api, pages
from inspector.access import Access
from inspector.auth import Authenticator, BrowserSessions
from inspector.context import INSPECTOR, Inspector, caller_key, inspector_of
from inspector.csrf import CsrfTokens
from inspector.ratelimit import RateLimiter

logger = logging.getLogger("companion.inspector")

# No script at all; styles from our own file; forms post only to us; no framing, no plugins, no base rewriting.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
MAX_BODY_BYTES = 64 * 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(
    *, access: Access, auth: Authenticator, rate_limit: RateLimiter, csrf: CsrfTokens | None = None
) -> web.Application:
    app = web.Application(middlewares=[_headers, _errors, _limits], client_max_size=MAX_BODY_BYTES)
    app[INSPECTOR] = Inspector(access, auth, BrowserSessions(), csrf or CsrfTokens(), rate_limit)
    api.add_routes(app)
    pages.add_routes(app)
    return app


# Middlewares -----------------------------------------------------------------------------------------------


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "max-age=3600"
    if isinstance(response, web.HTTPException):
        raise response
    return response


@web.middleware
async def _limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/static/"):
        return await handler(request)
    wait = inspector_of(request).rate_limit.allow(caller_key(request))
    if wait > 0:
        retry = str(max(1, round(wait)))
        return _failure(request, 429, "too many requests; try again in a few seconds", headers={"Retry-After": retry})
    return await handler(request)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json" and _wants_json(request):
            return _failure(request, exc.status, exc.reason.lower())
        raise
    except UnauthorizedError as exc:
        if not _wants_json(request):
            raise web.HTTPSeeOther("/login") from None
        status = 503 if exc.retryable else 401
        return _failure(request, status, exc.message, headers={"WWW-Authenticate": 'Bearer realm="inspector"'})
    except NotFoundError as exc:
        return _failure(request, 404, exc.message)
    except ConflictError as exc:
        return _failure(request, 409, exc.message)
    except InvalidInputError as exc:
        return _failure(request, 400, exc.message)
    except WriteForbiddenError:
        return _failure(request, 403, "this account may read, not change: ask an operator, or the companion itself")
    except StorageUnavailableError:
        return _failure(request, 503, "the database is not answering; try again soon")
    except CompanionError as exc:
        logger.warning("inspector request failed", extra={"error": type(exc).__name__})
        return _failure(request, 503 if exc.retryable else 500, "that did not work; try again soon")
    except Exception as exc:
        logger.error("inspector request failed", extra={"error": type(exc).__name__})
        return _failure(request, 500, "something went wrong on our side")


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def _failure(
    request: web.Request, status: int, sentence: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    if _wants_json(request):
        return web.json_response({"error": sentence}, status=status, headers=headers)
    return web.Response(text=pages.error_page(status, sentence), status=status, content_type="text/html",
                        headers=headers)  # fmt: skip
