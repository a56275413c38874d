"""Log filters: no user text in the logs unless asked for, and no warnings that do not apply to Companion.

LiveKit marks every log field that carries what a user said, tool arguments, tool output or a transcript with a
``pii`` segment in its name (``extra={"lk.pii.text": ...}``, ``lk.pii.arguments``, ``lk.pii.user_input``,
``lk.pii.raw_arguments``...), at every level: DEBUG ``conversation_item_added``, WARNING "repaired malformed
function-call JSON arguments", ERROR "error parsing arguments for `remember`". :class:`UserTextFilter` replaces those
fields with :data:`HIDDEN`. On such a record, and on a record about a tool call (a ``function`` field: "exception
occurred while executing tool"), it hides the exception messages too, because they quote their input (a pydantic
``ValidationError`` quotes the arguments it refused, a tool's error what it was asked to keep); the traceback's
frames and the exception types stay. ``LOG_USER_TEXT=true`` lets everything through.

A logger's filters see only the records logged on that very logger, so :func:`install` puts them on each logger
that LiveKit and its plugins log on, in every process that imports the agent (job processes pass their records
to the main process already filtered).
"""

from __future__ import annotations

import logging
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


def install(*, allow_user_text: Callable[[], bool], loggers: Iterable[str] = LIVEKIT_LOGGERS) -> UserTextFilter:
    """Put both filters on ``loggers`` once (installing twice changes nothing); return the user-text filter."""
    user_text = UserTextFilter(allow=allow_user_text)
    for name in loggers:
        target = logging.getLogger(name)
        if not any(isinstance(f, UserTextFilter) for f in target.filters):
            target.addFilter(user_text)
            target.addFilter(NotForUsFilter())
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
