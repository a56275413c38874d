"""Who is asking: an operator (``INSPECTOR_TOKEN``) or a signed-in app user (a Supabase JWT, checked by Supabase).

An operator may see every user. An app user sees only their own data, and only through the anon key with their
own JWT forwarded (``inspector.access``), so that Supabase's row-level security decides what they can read: the
service role key is never used on a user's behalf. Pages keep the principal in a server-side browser session (an
opaque cookie); the JSON API takes ``Authorization: Bearer <token>`` on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from pydantic import SecretStr

from core.errors import UnauthorizedError
from core.validators import is_user_id, parse_user_id

logger = logging.getLogger("companion.inspector.auth")

SESSION_SECONDS = 12 * 3600
VERIFIED_SECONDS = 60.0  # a JWT Supabase accepted is not asked about again for this long
MAX_SESSIONS = 10_000
MAX_TOKEN_CHARS = 8_192


@dataclass(frozen=True, slots=True)
class Operator:
    kind: str = "operator"


@dataclass(frozen=True, slots=True)
class AppUser:
    user_id: uuid.UUID
    access_token: str = field(repr=False)
    kind: str = "user"


Principal = Operator | AppUser


@dataclass(frozen=True, slots=True)
class SupabaseAuth:
    """The project's Auth service: ``GET /auth/v1/user`` with the anon key answers who a JWT belongs to."""

    url: str
    anon_key: SecretStr = field(repr=False)
    http: httpx.AsyncClient = field(repr=False)

    async def user_id(self, access_token: str) -> uuid.UUID:
        try:
            response = await self.http.get(
                f"{self.url.rstrip('/')}/auth/v1/user",
                headers={"apikey": self.anon_key.get_secret_value(), "Authorization": f"Bearer {access_token}"},
                timeout=5.0,
            )
        except httpx.HTTPError as exc:
            logger.warning("Supabase Auth did not answer", extra={"error": type(exc).__name__})
            raise UnauthorizedError("the sign-in service did not answer; try again soon", retryable=True) from exc
        if response.status_code in (401, 403):
            raise UnauthorizedError("the token was not accepted: sign in again")
        if response.status_code != 200:
            logger.warning("Supabase Auth failed", extra={"status": response.status_code})
            raise UnauthorizedError("the sign-in service failed; try again soon", retryable=True)
        try:
            user_id = response.json().get("id")
        except ValueError:
            user_id = None
        if not is_user_id(user_id):
            raise UnauthorizedError("the token was not accepted: sign in again")
        return parse_user_id(user_id)


class Authenticator:
    """Turns a bearer token into a :data:`Principal`, or raises :class:`UnauthorizedError`."""

    def __init__(
        self,
        *,
        operator_token: SecretStr | None,
        supabase: SupabaseAuth | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if operator_token is None and supabase is None:
            raise ValueError("the inspector needs INSPECTOR_TOKEN, or SUPABASE_URL and SUPABASE_ANON_KEY")
        self._operator = operator_token
        self._supabase = supabase
        self._clock = clock
        self._verified: OrderedDict[str, tuple[uuid.UUID, float]] = OrderedDict()

    @property
    def app_users(self) -> bool:
        return self._supabase is not None

    async def principal(self, token: str | None) -> Principal:
        token = (token or "").strip()
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise UnauthorizedError("sign in: send Authorization: Bearer <token>")
        if self._operator is not None and hmac.compare_digest(
            token.encode(), self._operator.get_secret_value().encode()
        ):
            return Operator()
        if self._supabase is None:
            raise UnauthorizedError("the token was not accepted")
        return AppUser(await self._checked(token), token)

    async def _checked(self, token: str) -> uuid.UUID:
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        cached = self._verified.get(digest)
        if cached is not None and now - cached[1] < VERIFIED_SECONDS:
            return cached[0]
        assert self._supabase is not None
        user_id = await self._supabase.user_id(token)
        self._verified[digest] = (user_id, now)
        while len(self._verified) > MAX_SESSIONS:
            self._verified.popitem(last=False)
        return user_id


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@dataclass
class BrowserSession:
    id: str
    principal: Principal | None
    expires: float


class BrowserSessions:
    """Server-side browser sessions behind an opaque cookie: anonymous until sign-in, a new id at sign-in."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: OrderedDict[str, BrowserSession] = OrderedDict()

    def get(self, session_id: str | None) -> BrowserSession | None:
        if not session_id:
            return None
        found = self._sessions.get(session_id)
        if found is None or found.expires < self._clock():
            self._sessions.pop(session_id, None)
            return None
        return found

    def create(self, principal: Principal | None = None) -> BrowserSession:
        session = BrowserSession(secrets.token_urlsafe(32), principal, self._clock() + SESSION_SECONDS)
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
