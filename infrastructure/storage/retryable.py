"""Which database errors are worth trying again: one table for the PostgreSQL and Supabase backends."""

from __future__ import annotations

# SQLSTATE classes: connection exception, transaction rollback (serialization, deadlock), insufficient
# resources (too many connections, disk full), operator intervention (shutdown, cancel on timeout).
_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57"})
# PostgREST's own codes for "could not reach or use the database": PGRST000-003 (connection, pool timeout).
_POSTGREST_CODES = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003"})
# HTTP statuses a gateway answers in front of PostgREST when it is down or busy.
_HTTP_STATUSES = frozenset({"408", "429", "500", "502", "503", "504", "520", "521", "522", "523", "524"})


def is_retryable(code: str | None) -> bool:
    """``code``: a SQLSTATE (``40001``), a PostgREST code (``PGRST001``) or an HTTP status (``503``)."""
    if not code:
        return False
    if code in _POSTGREST_CODES or code in _HTTP_STATUSES:
        return True
    return len(code) == 5 and code[:2] in _SQLSTATE_CLASSES
