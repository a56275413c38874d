"""The one exception tree of Companion.

    CompanionError                 base; ``retryable`` says whether trying again can help
    ├── ConfigError                the environment or .env is wrong; the message names the variable and the fix
    ├── InvalidInputError          a caller passed something unusable (bad UUID, unknown field, oversized text)
    │   └── InvalidUserIdError     a user id that is not a UUID
    ├── NotFoundError              no such user or memory (the inspector answers 404)
    ├── UnauthorizedError          no valid token or sign-in (the inspector answers 401)
    ├── ConflictError              another session changed the same memory first (the inspector answers 409), or
    │                              kept changing it while a save tried again; retryable
    ├── WriteForbiddenError        a session tried to write for a user it does not serve
    ├── WriteCancelledError        background work begun before a forget tried to save; it saves nothing
    ├── StorageError               the database failed (translated from the driver at the backend boundary)
    │   └── StorageUnavailableError  the database could not be reached; retryable
    ├── EmbeddingError             the embedding provider failed
    ├── LLMError                   the language model failed or answered with something unusable
    ├── CacheError                 Redis refused an operation (``retryable`` says whether it may succeed later)
    │   ├── CacheUnavailableError  Redis unreachable, timed out or read-only; retryable (the fallback cache serves)
    │   └── CacheValueError        a value or TTL the cache cannot hold (also an InvalidInputError)
    ├── BatcherFullError           the write batcher refused a write because its queue is full; retryable
    ├── OutboxError                the local outbox file cannot be opened or written (unwritable, corrupt)
    │   └── OutboxFullError        the outbox is at its bound (rows, bytes or disk): the write was refused; retryable
    └── ClosedError                used after aclose() (a closed batcher or connection pool)

Messages are fixed strings plus identifiers: they never carry user text, memory values or secrets, because
they end up in logs.
"""

from __future__ import annotations


class CompanionError(Exception):
    """Base of every error Companion raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class ConfigError(CompanionError):
    """The configuration is unusable. ``problems`` holds one line per variable to fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("Configuration problem:\n" + "\n".join(f"  - {p}" for p in problems))


class InvalidInputError(CompanionError, ValueError):
    """The caller passed something that no retry will fix."""


class InvalidUserIdError(InvalidInputError):
    """A user id is not a valid UUID."""


class NotFoundError(CompanionError, LookupError):
    """No such user or memory: nothing to show, change or forget."""


class UnauthorizedError(CompanionError):
    """The caller has no valid token (or the sign-in service could not check it: then ``retryable``)."""


class ConflictError(CompanionError):
    """A change lost to another session's write to the same memory; retryable once the caller has seen the new value."""

    retryable = True


class WriteForbiddenError(CompanionError, PermissionError):
    """A write for a user other than the one the session serves (the write guard)."""


class WriteCancelledError(CompanionError):
    """Background work (an extraction, a profile refresh) begun before the user forgot something tried to save:
    it may hold what was forgotten, so nothing is saved. Retrying the same work would not help."""


class StorageError(CompanionError):
    """A storage backend failed. ``retryable`` is set by the backend that translated the driver error."""


class StorageUnavailableError(StorageError):
    """The database could not be reached (connection refused, pool closed, timeout)."""

    retryable = True


class EmbeddingError(CompanionError):
    """The embedding provider failed; ``retryable`` when the provider may answer next time."""


class IndexFileError(CompanionError):
    """The memory index's temporary file of exact vectors could not be written or read (a full or failing disk).
    What the index held is unchanged; a retry helps only once the disk has room."""


class LLMError(CompanionError):
    """The language model failed (``retryable`` when it may answer next time) or answered unusably."""


class CacheError(CompanionError):
    """A cache backend failed. Behind :class:`~infrastructure.cache.FallbackCache` only a CacheValueError reaches
    a caller: an outage moves the cache to the in-process one, another refusal counts as a miss."""


class CacheUnavailableError(CacheError):
    """Redis is unreachable, timed out, or refused a write (a read-only replica after a failover)."""

    retryable = True


class CacheValueError(CacheError, InvalidInputError):
    """Misuse: a value that is not JSON, a TTL that is not positive. No retry helps."""


class BatcherFullError(CompanionError):
    """The write batcher's queue is full: the write was not accepted. Retry after the database catches up."""

    retryable = True


class OutboxError(CompanionError):
    """The local outbox cannot keep a write (its folder is unwritable, its file is not SQLite, an I/O error):
    the write was not accepted. The message names the path and the fix, never the write's content."""


class OutboxFullError(OutboxError):
    """The outbox holds as many rows or bytes as allowed (or the disk is full): the write was refused, never
    acknowledged. Retry once the database is back and the outbox drains."""

    retryable = True


class ClosedError(CompanionError):
    """Used after ``aclose()``: a write offered to a closing batcher, a client asked of a closed pool."""
