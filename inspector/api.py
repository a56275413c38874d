"""The JSON API: a bearer token in ``Authorization`` on every request, no cookies (so no CSRF to guard against).

GET    /api/users                                     operators only: users, most recently changed first
GET    /api/users/{user_id}/memories                  every memory with its history
GET    /api/users/{user_id}/export                    profile, memories with history, conversations, messages
GET    /api/users/{user_id}/recall?q=...              the ranking with each score's parts, and the gate
PATCH  /api/users/{user_id}/memories/{category}/{key} body {"value": "...", "importance": 0.8} (either or both)
DELETE /api/users/{user_id}/memories/{category}/{key} forget it everywhere
POST   /api/users/{user_id}/erase                     body {"confirm": "<user_id>"}: everything of the user goes
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from core.errors import InvalidInputError
from inspector.access import counts_json, memory_json, recall_json
from inspector.auth import Operator
from inspector.context import api_principal, inspector_of, user_access

USER = "/api/users/{user_id}"
MEMORY = USER + "/memories/{category}/{key}"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/users", users)
    app.router.add_get(USER + "/memories", memories)
    app.router.add_get(USER + "/export", export)
    app.router.add_get(USER + "/recall", recall)
    app.router.add_patch(MEMORY, edit)
    app.router.add_delete(MEMORY, forget)
    app.router.add_post(USER + "/erase", erase)


async def users(request: web.Request) -> web.Response:
    principal = await api_principal(request)
    if not isinstance(principal, Operator):
        return web.json_response({"error": "only operators may list users"}, status=403)
    listed = await inspector_of(request).access.users()
    return web.json_response(
        {"users": [{"user_id": str(u.user_id), "name": u.name, "updated_at": u.updated_at.isoformat()} for u in listed]}
    )


async def memories(request: web.Request) -> web.Response:
    async with user_access(request, await api_principal(request)) as user:
        found = await user.memories()
    return web.json_response({"user_id": str(user.user_id), "memories": [memory_json(m) for m in found]})


async def export(request: web.Request) -> web.Response:
    async with user_access(request, await api_principal(request)) as user:
        document = await user.export()
    return web.json_response(
        document, headers={"Content-Disposition": f'attachment; filename="companion-{user.user_id}.json"'}
    )


async def recall(request: web.Request) -> web.Response:
    async with user_access(request, await api_principal(request)) as user:
        found = await user.recall(request.query.get("q", ""))
    return web.json_response(recall_json(found))


async def edit(request: web.Request) -> web.Response:
    principal = await api_principal(request)
    body = await _object(request)
    unknown = set(body) - {"value", "importance"}
    if unknown:
        raise InvalidInputError("the body may hold only value and importance")
    async with user_access(request, principal) as user:
        changed = await user.edit(
            request.match_info["category"],
            request.match_info["key"],
            value=body.get("value"),
            importance=body.get("importance"),
        )
    return web.json_response({"memory": memory_json(changed)})


async def forget(request: web.Request) -> web.Response:
    async with user_access(request, await api_principal(request)) as user:
        await user.forget(request.match_info["category"], request.match_info["key"])
    return web.Response(status=204)


async def erase(request: web.Request) -> web.Response:
    principal = await api_principal(request)
    body = await _object(request)
    async with user_access(request, principal) as user:
        counts = await user.erase(confirm=body.get("confirm"))
    return web.json_response({"erased": counts_json(counts)})


async def _object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.text() or "null")
    except (ValueError, UnicodeDecodeError):
        raise InvalidInputError("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidInputError("the body must be a JSON object")
    return body
