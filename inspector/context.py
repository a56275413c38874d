"""What every handler needs: the shared objects, who is asking, and which user's data they may see."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from core.errors import InvalidInputError, NotFoundError
from core.validators import is_user_id, parse_user_id
from inspector.access import Access, UserAccess
from inspector.auth import AppUser, Authenticator, BrowserSession, BrowserSessions, Principal, bearer
from inspector.csrf import CsrfTokens
from inspector.ratelimit import RateLimiter

SESSION_COOKIE = "inspector_session"


@dataclass(frozen=True, slots=True)
class Inspector:
    """What the handlers share, kept in the application under :data:`INSPECTOR`."""

    access: Access
    auth: Authenticator
    sessions: BrowserSessions
    csrf: CsrfTokens
    rate_limit: RateLimiter


INSPECTOR = web.AppKey("inspector", Inspector)


def inspector_of(request: web.Request) -> Inspector:
    return request.app[INSPECTOR]


# Who is asking ---------------------------------------------------------------------------------------------


async def api_principal(request: web.Request) -> Principal:
    """The API's caller, from ``Authorization: Bearer``; raises :class:`UnauthorizedError`."""
    return await inspector_of(request).auth.principal(bearer(request.headers.get("Authorization")))


def browser_session(request: web.Request) -> BrowserSession | None:
    return inspector_of(request).sessions.get(request.cookies.get(SESSION_COOKIE))


def user_id_for(request: web.Request, principal: Principal) -> uuid.UUID:
    """The ``{user_id}`` of the path, if ``principal`` may see it: an operator any, an app user only their own
    (any other is "no such user", so nothing is learned of others)."""
    raw = request.match_info["user_id"]
    if not is_user_id(raw):
        raise InvalidInputError("the user id must be a UUID such as 123e4567-e89b-12d3-a456-426614174000")
    user_id = parse_user_id(raw)
    if isinstance(principal, AppUser) and principal.user_id != user_id:
        raise NotFoundError("no such user")
    return user_id


def caller_key(request: web.Request) -> str:
    """Whom a rate limit counts: the token's hash, else the browser session, else the address."""
    token = bearer(request.headers.get("Authorization"))
    if token:
        return "t:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and inspector_of(request).sessions.get(cookie) is not None:
        return "s:" + hashlib.sha256(cookie.encode()).hexdigest()[:32]
    return "a:" + (request.remote or "unknown")


@contextlib.asynccontextmanager
async def user_access(request: web.Request, principal: Principal) -> AsyncIterator[UserAccess]:
    """The services of the path's user, read as ``principal`` may (an app user through their own JWT)."""
    user_id = user_id_for(request, principal)
    app_user = principal if isinstance(principal, AppUser) else None
    async with inspector_of(request).access.user(user_id, actor=principal.kind, app_user=app_user) as user:  # type: ignore[arg-type]
        yield user
