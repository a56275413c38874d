"""A PostgREST stand-in for tests: the HTTP edge of Supabase, answering as PostgREST would.

It knows Companion's schema (columns, types, defaults, keys, the triggers and functions of
``supabase/migrations``), keeps rows in memory, and refuses what PostgREST would refuse: missing credentials,
unknown tables or columns, an ``on_conflict`` that names no unique key, a duplicate key without a resolution,
a NULL in a NOT NULL column, a value that does not parse as its column's type. Every request is recorded so
that tests can assert on method, path, filters and ``Prefer`` headers.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from infrastructure.storage import memory_key_hash


class PgError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Column:
    type: str  # uuid | text | real | bytea | integer | bigint | timestamptz | jsonb
    nullable: bool = True
    default: Callable[[], Any] | None = None


@dataclass
class Table:
    columns: dict[str, Column]
    primary_key: tuple[str, ...]
    unique: tuple[tuple[str, ...], ...] = ()
    rows: list[dict[str, Any]] = field(default_factory=list)

    def unique_keys(self) -> tuple[tuple[str, ...], ...]:
        return (self.primary_key, *self.unique)


def _schema() -> dict[str, Table]:
    uid = Column("uuid", nullable=False)
    text = Column("text", nullable=False)
    now = Column("timestamptz", nullable=False, default=_now)
    history_ids = itertools.count(1)
    return {
        "profiles": Table(
            columns={
                "user_id": uid,
                "name": Column("text"),
                "preferred_name": Column("text"),
                "timezone": Column("text"),
                "language": Column("text"),
                "summary": Column("text"),
                "created_at": now,
                "updated_at": now,
                "version": Column("bigint", nullable=False, default=lambda: 0),
            },  # fmt: skip
            primary_key=("user_id",),
        ),
        "onboarding_answers": Table(
            columns={
                "user_id": uid,
                "answers": Column("jsonb", nullable=False, default=dict),
                "submitted_at": now,
                "processed_at": Column("timestamptz"),
            },  # fmt: skip
            primary_key=("user_id",),
        ),
        "memories": Table(
            columns={
                "id": Column("uuid", nullable=False, default=lambda: str(uuid.uuid4())),
                "user_id": uid,
                "category": text,
                "key": text,
                "value": text,
                "importance": Column("real", nullable=False, default=lambda: 0.5),
                "source": Column("text", nullable=False, default=lambda: "tool"),
                "embedding": Column("bytea"),
                "created_at": now,
                "updated_at": now,
                "last_accessed_at": Column("timestamptz"),
                "access_count": Column("integer", nullable=False, default=lambda: 0),
                "version": Column("bigint", nullable=False, default=lambda: 0),
            },  # fmt: skip
            primary_key=("id",),
            unique=(("user_id", "category", "key"),),
        ),
        "memory_tombstones": Table(
            columns={"user_id": uid, "key_hash": text, "version": Column("bigint", nullable=False), "created_at": now},
            primary_key=("user_id", "key_hash"),
        ),
        "memory_history": Table(
            columns={
                "id": Column("bigint", nullable=False, default=lambda: next(history_ids)),
                "memory_id": uid,
                "user_id": uid,
                "category": text,
                "key": text,
                "old_value": text,
                "new_value": text,
                "changed_at": Column("timestamptz", nullable=False),
            },  # fmt: skip
            primary_key=("id",),
        ),
        "conversations": Table(
            columns={
                "id": uid,
                "user_id": uid,
                "started_at": Column("timestamptz", nullable=False),
                "ended_at": Column("timestamptz"),
                "summary": Column("text"),
                "open_threads": Column("jsonb", nullable=False, default=list),
            },  # fmt: skip
            primary_key=("id",),
        ),
        "messages": Table(
            columns={
                "id": uid,
                "conversation_id": uid,
                "user_id": uid,
                "role": text,
                "content": text,
                "created_at": Column("timestamptz", nullable=False),
            },  # fmt: skip
            primary_key=("id",),
        ),
        "forgettings": Table(
            columns={"user_id": uid, "forgotten_at": Column("timestamptz", nullable=False)},
            primary_key=("user_id",),
        ),
        "user_versions": Table(
            columns={
                "user_id": uid,
                "version": Column("bigint", nullable=False, default=lambda: 0),
                "erased_version": Column("bigint", nullable=False, default=lambda: 0),
                "pruned_version": Column("bigint", nullable=False, default=lambda: 0),
            },
            primary_key=("user_id",),
        ),
    }


def _coerce(column: str, kind: str, value: Any) -> Any:
    """The value as PostgreSQL would store it, or PgError 22P02 as PostgREST reports a bad representation."""
    if value is None:
        return None
    try:
        if kind == "uuid":
            return str(uuid.UUID(str(value)))
        if kind == "text":
            if not isinstance(value, str):
                value = json.dumps(value)
            if "\x00" in value:
                raise PgError(400, "22P05", "unsupported Unicode escape sequence")
            return value
        if kind == "real":
            return float(np.float32(value))
        if kind == "bytea":  # PostgREST takes and gives bytea as \\x-prefixed hex text
            if not (isinstance(value, str) and value.startswith("\\x")):
                raise ValueError("bytea must be \\x-hex")
            return bytes.fromhex(value[2:])
        if kind in ("integer", "bigint"):
            return int(value)
        if kind == "timestamptz":
            parsed = dt.datetime.fromisoformat(str(value))
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
        if kind == "jsonb":
            return json.loads(json.dumps(value))
    except (ValueError, TypeError) as exc:
        raise PgError(400, "22P02", f'invalid input syntax for type {kind} in column "{column}"') from exc
    raise AssertionError(kind)


def _render(kind: str, value: Any) -> Any:
    """The value as PostgREST writes it in JSON."""
    if value is None:
        return None
    if kind == "timestamptz":
        return value.isoformat()
    if kind == "real":
        return float(str(np.float32(value)))  # float4 prints its shortest form: 0.7, not 0.699999988
    if kind == "bytea":
        return "\\x" + value.hex()
    return value


@dataclass
class RecordedRequest:
    method: str
    path: str
    params: list[tuple[str, str]]
    prefer: set[str]
    body: Any
    role: str = "service_role"  # or "authenticated": the anon key with a signed-in user's JWT
    sub: str | None = None  # that user's id

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.params if k == name), None)


class PostgrestStub:
    """``await stub.start()`` gives ``stub.url`` (the Supabase project URL); ``stub.requests`` records traffic."""

    def __init__(self, *, service_role_key: str, anon_key: str | None = None) -> None:
        self.service_role_key = service_role_key
        # Supabase Auth's edge: signed-in users' JWTs (access tokens) and whose they are. With the anon key, a
        # request carrying one is the "authenticated" role, and row-level security (0002_row_level_security.sql)
        # applies: it reads its user's rows only, and writes nothing (onboarding answers aside, not modelled).
        self.anon_key = anon_key
        self.access_tokens: dict[str, str] = {}
        self.auth_requests: list[dict[str, str | None]] = []
        self.tables = _schema()
        self.requests: list[RecordedRequest] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/auth/v1/user", self._auth_user)
        app.router.add_route("*", "/rest/v1/rpc/{function}", self._rpc)
        app.router.add_route("*", "/rest/v1/{table}", self._table_request)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # HTTP --------------------------------------------------------------------------------------------------

    async def _record(self, request: web.Request) -> RecordedRequest:
        raw = await request.read()
        prefer = {p.strip() for h in request.headers.getall("Prefer", []) for p in h.split(",") if p.strip()}
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            params=list(request.query.items()),
            prefer=prefer,
            body=json.loads(raw) if raw else None,
        )
        self.requests.append(recorded)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if self.anon_key is not None and request.headers.get("apikey") == self.anon_key:
            if token not in self.access_tokens:
                raise PgError(401, "PGRST301", "JWT invalid or expired")
            recorded.role, recorded.sub = "authenticated", self.access_tokens[token]
            return recorded
        if request.headers.get("apikey") != self.service_role_key or token != self.service_role_key:
            raise PgError(401, "PGRST301", "JWT missing or not the service role")
        return recorded

    async def _auth_user(self, request: web.Request) -> web.Response:
        """Supabase Auth's ``GET /auth/v1/user``: who a JWT belongs to, asked with the anon key."""
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.auth_requests.append({"apikey": request.headers.get("apikey"), "token": token})
        if self.anon_key is None or request.headers.get("apikey") != self.anon_key:
            return web.json_response({"message": "Invalid API key"}, status=401)
        if token not in self.access_tokens:
            return web.json_response({"code": 403, "error_code": "bad_jwt", "msg": "invalid JWT"}, status=403)
        return web.json_response({"id": self.access_tokens[token], "aud": "authenticated", "role": "authenticated"})

    async def _table_request(self, request: web.Request) -> web.Response:
        try:
            recorded = await self._record(request)
            table = self._table(request.match_info["table"])
            if recorded.role == "authenticated":  # row-level security: the owner reads, and writes nothing
                if request.method != "GET":
                    raise PgError(403, "42501", "new row violates row-level security policy")
                table = Table(table.columns, table.primary_key, table.unique,
                              [r for r in table.rows if str(r.get("user_id")) == recorded.sub])  # fmt: skip
            handler = {"GET": self._select, "POST": self._insert, "PATCH": self._update, "DELETE": self._delete}
            if request.method not in handler:
                raise PgError(405, "PGRST117", "unsupported HTTP method")
            return handler[request.method](table, recorded)
        except PgError as exc:
            return web.json_response(
                {"code": exc.code, "message": exc.message, "details": None, "hint": None}, status=exc.status
            )

    async def _rpc(self, request: web.Request) -> web.Response:
        try:
            recorded = await self._record(request)
            if request.method != "POST":
                raise PgError(405, "PGRST117", "functions are called with POST")
            if recorded.role == "authenticated":
                raise PgError(403, "42501", "permission denied for function")
            function = {
                "companion_record_memory_access": self._record_memory_access,
                "companion_delete_user_data": self._delete_user_data,
                "companion_prune_tombstones": self._prune_tombstones,
                "companion_changes_since": self._changes_since,
            }.get(request.match_info["function"])
            if function is None:
                raise PgError(404, "PGRST202", "Could not find the function in the schema cache")
            return web.json_response(function(**(recorded.body or {})))
        except PgError as exc:
            return web.json_response({"code": exc.code, "message": exc.message}, status=exc.status)
        except TypeError as exc:
            return web.json_response({"code": "PGRST202", "message": str(exc)}, status=404)

    # Verbs -------------------------------------------------------------------------------------------------

    def _select(self, table: Table, req: RecordedRequest) -> web.Response:
        rows = self._filtered(table, req)
        return self._respond(table, req, rows, status=200, always_body=True)

    def _insert(self, table: Table, req: RecordedRequest) -> web.Response:
        body = req.body if isinstance(req.body, list) else [req.body]
        columns = _column_list(req.param("columns")) or list(body[0].keys() if body else [])
        for name in {k for row in body for k in row} | set(columns):
            self._column(table, name)
        resolution = next((p.split("=", 1)[1] for p in req.prefer if p.startswith("resolution=")), None)
        conflict = tuple(_column_list(req.param("on_conflict"))) or table.primary_key
        if resolution and conflict not in table.unique_keys():
            raise PgError(400, "42P10", "there is no unique or exclusion constraint matching the ON CONFLICT")
        missing_default = "missing=default" in req.prefer
        staged = [dict(row) for row in table.rows]
        returned: list[dict[str, Any]] = []
        for incoming in body:
            row = {}
            for name, column in table.columns.items():
                if name in columns and name in incoming:
                    row[name] = _coerce(name, column.type, incoming[name])
                elif name in columns and not missing_default:
                    row[name] = None
                else:
                    row[name] = column.default() if column.default else None
            existing = next((r for r in staged if all(r[c] == row[c] for c in conflict)), None)
            if existing is not None:
                if resolution == "merge-duplicates":
                    old = dict(existing)
                    for name in columns:
                        existing[name] = row[name]
                    self._after_update(table, old, existing, staged)
                    returned.append(existing)
                elif resolution is None:
                    raise PgError(409, "23505", "duplicate key value violates unique constraint")
                continue
            self._check_not_null(table, row)
            if any(all(r[c] == row[c] for c in key) for key in table.unique_keys() for r in staged):
                raise PgError(409, "23505", "duplicate key value violates unique constraint")
            staged.append(row)
            returned.append(row)
            if self._versioned(table):
                row["version"] = self._bump_version(row["user_id"])  # a failing statement leaves a gap: harmless
        table.rows[:] = staged  # a statement applies whole or not at all
        return self._respond(table, req, returned, status=201)

    def _update(self, table: Table, req: RecordedRequest) -> web.Response:
        changes = {n: _coerce(n, self._column(table, n).type, v) for n, v in (req.body or {}).items()}
        updated = []
        for row in self._filtered(table, req, apply_limits=False):
            old = dict(row)
            row.update(changes)
            self._check_not_null(table, row)
            self._after_update(table, old, row, table.rows)
            updated.append(row)
        return self._respond(table, req, updated, status=200)

    def _delete(self, table: Table, req: RecordedRequest) -> web.Response:
        doomed = self._filtered(table, req, apply_limits=False)
        self._remove(table, doomed)
        return self._respond(table, req, doomed, status=200)

    # Functions of the migrations ---------------------------------------------------------------------------

    def _record_memory_access(self, p_accesses: list[dict[str, Any]]) -> int:
        touched = 0
        memories = self.tables["memories"].rows
        for access in p_accesses:
            at = _coerce("at", "timestamptz", access["at"])
            for row in memories:
                if (row["user_id"], row["category"], row["key"]) == (
                    _coerce("user_id", "uuid", access["user_id"]),
                    access["category"],
                    access["key"],
                ):
                    row["access_count"] += 1
                    row["last_accessed_at"] = max(row["last_accessed_at"] or at, at)
                    touched += 1
        return touched

    def _delete_user_data(self, p_user_id: str) -> dict[str, int]:
        user_id = _coerce("p_user_id", "uuid", p_user_id)
        counts = {}
        for name, table in (("messages", "messages"), ("conversations", "conversations"),
                            ("memory_history", "memory_history"), ("memories", "memories"),
                            ("onboarding", "onboarding_answers"), ("profiles", "profiles")):  # fmt: skip
            doomed = [r for r in self.tables[table].rows if r["user_id"] == user_id]
            self._remove(self.tables[table], doomed)
            counts[name] = len(doomed)
        tombstones = self.tables["memory_tombstones"]  # 0005: none outlives an erasure; its version is noted
        tombstones.rows[:] = [r for r in tombstones.rows if r["user_id"] != user_id]
        erased = self._bump_version(user_id)
        next(r for r in self.tables["user_versions"].rows if r["user_id"] == user_id)["erased_version"] = erased
        return counts | {"version": erased}  # 0006

    def _prune_tombstones(self, p_before: str) -> int:
        before = _coerce("p_before", "timestamptz", p_before)
        tombstones = self.tables["memory_tombstones"]  # 0007: the horizons move with the deletes
        pruned = [t for t in tombstones.rows if t["created_at"] < before]
        for tombstone in pruned:
            row = next(r for r in self.tables["user_versions"].rows if r["user_id"] == tombstone["user_id"])
            row["pruned_version"] = max(row["pruned_version"], tombstone["version"])
        tombstones.rows[:] = [t for t in tombstones.rows if t["created_at"] >= before]
        return len(pruned)

    def _changes_since(self, p_user_id: str, p_version: int) -> dict[str, Any]:
        user_id, since = _coerce("p_user_id", "uuid", p_user_id), _coerce("p_version", "bigint", p_version)
        versions = next((r for r in self.tables["user_versions"].rows if r["user_id"] == user_id), None)
        everything = versions is not None and since < versions["pruned_version"]  # 0007: one snapshot, as here
        memories = sorted((r for r in self.tables["memories"].rows
                           if r["user_id"] == user_id and r["version"] > (-1 if everything else since)),
                          key=lambda r: r["version"])  # fmt: skip
        deleted = [] if everything else [
            {"key_hash": t["key_hash"], "version": t["version"]}
            for t in self.tables["memory_tombstones"].rows
            if t["user_id"] == user_id and t["version"] > since
        ]  # fmt: skip
        profile = next((r for r in self.tables["profiles"].rows if r["user_id"] == user_id), None)
        return {
            "version": versions["version"] if versions else 0,
            "erased_version": versions["erased_version"] if versions else 0,
            "everything": everything,
            "memories": [self._as_json("memories", r) for r in memories],
            "deleted": deleted,
            "profile": None if profile is None else self._as_json("profiles", profile),
        }

    def _as_json(self, name: str, row: dict[str, Any]) -> dict[str, Any]:
        """A row as to_jsonb writes it: PostgREST's shapes for every column."""
        columns = self.tables[name].columns
        return {n: _render(columns[n].type, row[n]) for n in columns}

    # Helpers -----------------------------------------------------------------------------------------------

    def _table(self, name: str) -> Table:
        if name not in self.tables:
            raise PgError(404, "PGRST205", f"Could not find the table 'public.{name}' in the schema cache")
        return self.tables[name]

    def _column(self, table: Table, name: str) -> Column:
        if name not in table.columns:
            raise PgError(400, "PGRST204", f"Could not find the '{name}' column in the schema cache")
        return table.columns[name]

    def _check_not_null(self, table: Table, row: dict[str, Any]) -> None:
        for name, column in table.columns.items():
            if not column.nullable and row.get(name) is None:
                raise PgError(400, "23502", f'null value in column "{name}" violates not-null constraint')

    def _after_update(self, table: Table, old: dict[str, Any], new: dict[str, Any], rows: list[dict]) -> None:
        """The triggers of 0001_schema.sql: profiles and memories keep created_at; memories record a changed value.
        0005_memory_changes.sql stamps the user's next version on a changed profile, or a memory whose value or
        importance changed."""
        memory_changed = table is self.tables["memories"] and (
            new["value"] != old["value"] or new["importance"] != old["importance"]
        )
        if table is self.tables["profiles"] or memory_changed:
            new["version"] = self._bump_version(new["user_id"])
        elif table is self.tables["memories"]:
            new["version"] = old["version"]
        if table in (self.tables["profiles"], self.tables["memories"]):
            new["created_at"] = old["created_at"]
        if table is self.tables["memories"] and new["value"] != old["value"]:
            history = self.tables["memory_history"]
            history.rows.append(
                {
                    "id": history.columns["id"].default(),
                    "memory_id": old["id"],
                    "user_id": old["user_id"],  # type: ignore[misc]
                    "category": old["category"],
                    "key": old["key"],
                    "old_value": old["value"],
                    "new_value": new["value"],
                    "changed_at": new["updated_at"],
                }  # fmt: skip
            )

    def _versioned(self, table: Table) -> bool:
        return table is self.tables["profiles"] or table is self.tables["memories"]

    def _bump_version(self, user_id: Any) -> int:
        versions = self.tables["user_versions"].rows
        row = next((r for r in versions if r["user_id"] == user_id), None)
        if row is None:
            row = {"user_id": user_id, "version": 0, "erased_version": 0, "pruned_version": 0}
            versions.append(row)
        row["version"] += 1
        return row["version"]

    def _remove(self, table: Table, doomed: list[dict[str, Any]]) -> None:
        ids = {id(r) for r in doomed}
        table.rows[:] = [r for r in table.rows if id(r) not in ids]
        if self._versioned(table):
            for row in doomed:
                version = self._bump_version(row["user_id"])
                if table is self.tables["memories"]:  # 0005's tombstone: a hash, never the key
                    self._leave_tombstone(row, version)
        if table is self.tables["memories"]:  # on delete cascade
            gone = {r["id"] for r in doomed}
            history = self.tables["memory_history"]
            history.rows[:] = [r for r in history.rows if r["memory_id"] not in gone]

    def _leave_tombstone(self, memory: dict[str, Any], version: int) -> None:
        key_hash = memory_key_hash(uuid.UUID(memory["user_id"]), memory["category"], memory["key"])
        tombstones = self.tables["memory_tombstones"].rows
        tombstones[:] = [t for t in tombstones if (t["user_id"], t["key_hash"]) != (memory["user_id"], key_hash)]
        tombstones.append(
            {"user_id": memory["user_id"], "key_hash": key_hash, "version": version, "created_at": _now()}
        )

    def _filtered(self, table: Table, req: RecordedRequest, *, apply_limits: bool = True) -> list[dict[str, Any]]:
        rows = list(table.rows)
        for name, expression in req.params:
            if name in ("select", "order", "limit", "offset", "columns", "on_conflict"):
                continue
            column = self._column(table, name)
            operator, _, operand = expression.partition(".")
            rows = [r for r in rows if _matches(name, column, r[name], operator, operand)]
        if not apply_limits:
            return rows
        if order := req.param("order"):
            for term in reversed(order.split(",")):
                name, _, direction = term.partition(".")
                column = self._column(table, name)
                descending = direction.startswith("desc")
                present = sorted((r for r in rows if r[name] is not None), key=lambda r: r[name], reverse=descending)
                absent = [r for r in rows if r[name] is None]
                rows = absent + present if descending else present + absent  # PostgreSQL's NULLS placement
        if (limit := req.param("limit")) is not None:
            rows = rows[: int(limit)]
        return rows

    def _respond(
        self, table: Table, req: RecordedRequest, rows: list[dict[str, Any]], *, status: int, always_body: bool = False
    ) -> web.Response:
        headers = {}
        if any(p.startswith("count=") for p in req.prefer):
            headers["Content-Range"] = f"*/{len(rows)}"
        if not always_body and "return=representation" not in req.prefer:
            return web.Response(status=204 if status == 200 else status, headers=headers)
        selected = req.param("select")
        names = list(table.columns) if selected in (None, "*") else _column_list(selected)
        for name in names:
            self._column(table, name)
        body = [{n: _render(table.columns[n].type, r[n]) for n in names} for r in rows]
        return web.json_response(body, status=status, headers=headers)


def _column_list(value: str | None) -> list[str]:
    return [c.strip().strip('"') for c in value.split(",")] if value else []


def _matches(name: str, column: Column, value: Any, operator: str, operand: str) -> bool:
    if operator == "is":
        if operand != "null":
            raise PgError(400, "PGRST100", "only is.null is supported by this stub")
        return value is None
    if operator == "eq":
        return value is not None and value == _coerce(name, column.type, operand)
    if operator == "gt":
        return value is not None and value > _coerce(name, column.type, operand)
    if operator == "in":
        if not (operand.startswith("(") and operand.endswith(")")):
            raise PgError(400, "PGRST100", "in. needs a parenthesised list")
        items = [_unquote(m) for m in re.findall(r'"(?:[^"\\]|\\.)*"|[^,]+', operand[1:-1])]
        return value is not None and value in {_coerce(name, column.type, i) for i in items}
    raise PgError(400, "PGRST100", f"operator {operator} is not supported by this stub")


def _unquote(item: str) -> str:
    if item.startswith('"') and item.endswith('"'):
        return re.sub(r"\\(.)", r"\1", item[1:-1])
    return item
