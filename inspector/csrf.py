"""CSRF tokens for the pages' forms: an HMAC of the browser session's id under a key the process makes at start.

A form carries the token of the session it was served to; a POST whose token is not its own session's is refused
(403) before anything changes. The JSON API takes no cookies (only a bearer token), so it needs none.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


class CsrfTokens:
    def __init__(self, *, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def token(self, session_id: str) -> str:
        return hmac.new(self._key, f"csrf:{session_id}".encode(), hashlib.sha256).hexdigest()

    def valid(self, session_id: str, token: object) -> bool:
        return isinstance(token, str) and hmac.compare_digest(self.token(session_id), token)
