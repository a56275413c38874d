"""Log filters: no user text in the logs unless asked for, and no warnings that do not apply to Companion.

LiveKit marks every log field that carries what a user said, tool arguments, tool output or a transcript with a
``pii`` segment in its name (``extra={"lk.pii.text": ...}``, ``lk.pii.arguments``, ``lk.pii.user_input``,
``lk.pii.raw_arguments``...), at every level: DEBUG ``conversation_item_added``, WARNING "repaired malformed
function-call JSON arguments", ERROR "error parsing arguments for `remember`". :class:`UserTextFilter` replaces those
fields with :data:`HIDDEN`. On such a record, and on a record about a tool call (a ``function`` field: "exception
occurred while executing tool"), it hides the exception messages too, because they quote their input (a pydantic
``ValidationError`` quotes the arguments it refused, a tool's error what it was asked to keep); the traceback's
frames and the exception types stay. ``LOG_USER_TEXT=true`` lets everything through.

:class:`OnePerOutage` keeps asyncpg's pool from logging a traceback at every reconnection attempt while the
database is down ("Failed to restore the pool connection floor; retrying", after 1, 2, 4 ... 60 s): one line per
outage, with the error's class.

A logger's filters see only the records logged on that very logger, so :func:`install` puts them on each logger
that LiveKit and its plugins log on, in every process that imports the agent (job processes pass their records
to the main process already filtered).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterable

HIDDEN = "[hidden; LOG_USER_TEXT=true shows it]"

# Every logger LiveKit Agents 1.8.9 and the plugins we use log on (their getLogger calls).
LIVEKIT_LOGGERS = (
    "livekit",
    "livekit.agents",
    "livekit.plugins.openai",
    "livekit.plugins.silero",
    "livekit.plugins.upliftai",
)

# LiveKit warnings about features Companion does not use: LiveKit Cloud inference (the turn detector runs the local
# v1-mini model) and the adaptive interruption detector (a LiveKit Cloud model; interruptions use the VAD).
NOT_FOR_US = (
    "LIVEKIT_INFERENCE_URL is set but",
    "failed to create AdaptiveInterruptionDetector",
)

# In the console, where one session runs in the console's own process, this is expected, not a warning.
CONSOLE_NOISE = ("no warmed process available for job",)


def is_user_data(field: str) -> bool:
    """LiveKit's own rule (``livekit.agents.telemetry.pii``): a field carries user data when a dot-separated part
    of its name is ``pii``."""
    return "pii" in field.split(".")


class UserTextFilter(logging.Filter):
    """Hides user text in a record. ``allow`` is asked on the first record (settings load after logging is set up)."""

    def __init__(self, *, allow: Callable[[], bool]) -> None:
        super().__init__()
        self._allow = allow
        self._allowed: bool | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self._allowed is None:
            self._allowed = self._allow()
        if self._allowed:
            return True
        marked = [field for field in vars(record) if is_user_data(field)]
        for field in marked:
            setattr(record, field, HIDDEN)
        about_user_data = marked or hasattr(record, "function")
        if about_user_data and record.exc_info and record.exc_info[1] is not None:
            record.exc_text = _traceback_without_messages(record.exc_info[1])
            record.exc_info = None
        return True


class NotForUsFilter(logging.Filter):
    """Drops the records whose message starts with one of ``prefixes`` (LiveKit's warnings about features Companion
    does not use, :data:`NOT_FOR_US`, by default)."""

    def __init__(self, *, prefixes: tuple[str, ...] = NOT_FOR_US) -> None:
        super().__init__()
        self._prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self._prefixes))


class OnePerOutage(logging.Filter):
    """The first record of an outage whose message starts with ``prefix`` passes, as one line naming the error's
    class (no traceback); the next ones are dropped. After ``quiet`` seconds without one, the outage is over: the
    next record starts another. asyncpg retries at most every 60 s, after a connection attempt of up to 60 s."""

    def __init__(self, *, prefix: str, says: str, quiet: float = 180.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._prefix, self._says, self._quiet, self._clock = prefix, says, quiet, clock
        self._last: float | None = None
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(self._prefix)):
            return True
        now, last = self._clock(), self._last
        self._last = now
        if last is not None and now - last <= self._quiet:
            self.dropped += 1
            return False
        error = record.exc_info[1] if record.exc_info else None
        record.msg, record.args = self._says, None
        record.exc_info, record.exc_text = None, None
        record.error = type(error).__name__ if error is not None else None
        return True


ASYNCPG_POOL_RETRY = "Failed to restore the pool connection floor"
ASYNCPG_POOL_OUTAGE = "PostgreSQL unreachable: asyncpg keeps reconnecting in the background (logged once per outage)"


def install(*, allow_user_text: Callable[[], bool], loggers: Iterable[str] = LIVEKIT_LOGGERS) -> UserTextFilter:
    """Put the filters on ``loggers`` and asyncpg's pool logger once (installing twice changes nothing); return the
    user-text filter."""
    user_text = UserTextFilter(allow=allow_user_text)
    for name in loggers:
        target = logging.getLogger(name)
        if not any(isinstance(f, UserTextFilter) for f in target.filters):
            target.addFilter(user_text)
            target.addFilter(NotForUsFilter())
    asyncpg_pool = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, OnePerOutage) for f in asyncpg_pool.filters):
        asyncpg_pool.addFilter(OnePerOutage(prefix=ASYNCPG_POOL_RETRY, says=ASYNCPG_POOL_OUTAGE))
    return user_text


def _traceback_without_messages(exc: BaseException) -> str:
    """The traceback of ``exc`` (and its causes) with each exception's message replaced by :data:`HIDDEN`."""
    formatted = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    pending = [formatted]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current._str = HIDDEN  # the one way to format a traceback without the message
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        pending.extend(getattr(current, "exceptions", None) or ())
    return "".join(formatted.format()).rstrip("\n")
