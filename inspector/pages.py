"""The pages: server-rendered HTML, no script, one stylesheet; every form carries the session's CSRF token.

GET  /login  POST /login  POST /logout           sign in with the operator token or an app user's Supabase JWT
GET  /                                           operators: the users; an app user: their own page
GET  /users/{user_id}                            memories by category: importance, learned, last used, history
GET  /users/{user_id}/recall?q=...               what it would recall, each score's parts, the gate's decision
GET  /users/{user_id}/profile                    the profile, the instructions and notes the agent receives
GET  /users/{user_id}/conversations              past conversations: summaries and open threads
GET  /users/{user_id}/export.json                the export, as the API gives it
POST /users/{user_id}/memories/{category}/{key}  edit value / importance
POST /users/{user_id}/memories/{category}/{key}/forget
POST /users/{user_id}/erase                      with the user id typed as confirmation
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from aiohttp import web

from core.categories import MemoryCategory
from core.errors import InvalidInputError, UnauthorizedError
from core.validators import is_user_id
from inspector.access import ConversationView, MemoryView, ProfileView, RecallView, UserSummary
from inspector.auth import AppUser, BrowserSession, Operator, Principal
from inspector.context import SESSION_COOKIE, inspector_of, user_access
from inspector.render import STYLE, Html, join, page, render, when

USER = "/users/{user_id}"
MEMORY = USER + "/memories/{category}/{key}"
READ_ONLY = (
    '<p class="muted">To change or erase what is remembered, ask the companion ("forget my ...", "forget '
    'everything"), or an operator.</p>'
)
DONE = {
    "edited": "Saved. The old value is kept in the memory's history.",
    "forgotten": "Forgotten: gone from the memories, the profile text, past summaries and stored messages.",
    "erased": "Everything was erased.",
}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/static/style.css", style)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/", home)
    app.router.add_get("/open", open_user)
    app.router.add_get(USER, memories_page)
    app.router.add_get(USER + "/recall", recall_page)
    app.router.add_get(USER + "/profile", profile_page)
    app.router.add_get(USER + "/conversations", conversations_page)
    app.router.add_get(USER + "/export.json", export_download)
    app.router.add_post(MEMORY, edit)
    app.router.add_post(MEMORY + "/forget", forget)
    app.router.add_post(USER + "/erase", erase)


async def style(request: web.Request) -> web.Response:
    return web.Response(text=STYLE, content_type="text/css")


# Signing in ------------------------------------------------------------------------------------------------


async def login_form(request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
    inspector = inspector_of(request)
    session = inspector.sessions.get(request.cookies.get(SESSION_COOKIE)) or inspector.sessions.create()
    what = "the operator token" + (" or your app's access token (a Supabase JWT)" if inspector.auth.app_users else "")
    body = render(
        """<p class="muted">Sign in with {what}.</p>
{error}
<form method="post" action="/login" class="edit">
<input type="hidden" name="csrf" value="{csrf}">
<label for="token">Token</label>
<input type="password" id="token" name="token" autocomplete="off" required>
<div><button type="submit" class="primary">Sign in</button></div>
</form>""",
        what=what,
        csrf=inspector.csrf.token(session.id),
        error=render('<p class="error">{e}</p>', e=error) if error else Html(""),
    )
    response = _html(page(title="Sign in", body=body), status=status)
    _set_cookie(response, session)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    inspector = inspector_of(request)
    form = await request.post()
    session = inspector.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None or not inspector.csrf.valid(session.id, form.get("csrf")):
        return await login_form(request, error="The form expired; try again.", status=403)
    try:
        principal = await inspector.auth.principal(str(form.get("token", "")))
    except UnauthorizedError as exc:
        return await login_form(request, error=exc.message.capitalize() + ".", status=401)
    inspector.sessions.drop(session.id)
    signed_in = inspector.sessions.create(principal)  # a new id: a session fixed before sign-in stays anonymous
    response = web.HTTPSeeOther("/")
    _set_cookie(response, signed_in)
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    session, _ = await _signed_in(request)
    _check_csrf(request, session, await request.post())
    inspector_of(request).sessions.drop(session.id)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


# Pages -----------------------------------------------------------------------------------------------------


async def home(request: web.Request) -> web.Response:
    session, principal = await _signed_in(request)
    if isinstance(principal, AppUser):
        raise web.HTTPSeeOther(f"/users/{principal.user_id}")
    listed = await inspector_of(request).access.users()
    body = render(
        """<form method="get" action="/open" class="row">
<input type="text" name="user_id" placeholder="a user id" aria-label="user id" required>
<button type="submit">Open</button>
</form>
<h2>Users ({count})</h2>
{table}""",
        count=len(listed),
        table=_users_table(listed) if listed else Html('<p class="muted">No profiles yet.</p>'),
    )
    return _html(page(title="Users", body=body, signed_in=True, csrf=_csrf(request, session)))


async def open_user(request: web.Request) -> web.Response:
    await _signed_in(request)
    wanted = request.query.get("user_id", "").strip().lower()
    if not is_user_id(wanted):
        raise InvalidInputError("the user id must be a UUID such as 123e4567-e89b-12d3-a456-426614174000")
    raise web.HTTPSeeOther(f"/users/{wanted}")


async def memories_page(request: web.Request) -> web.Response:
    session, principal = await _signed_in(request)
    async with user_access(request, principal) as user:
        found = await user.memories()
        profile = (await user.profile()).profile
    csrf = _csrf(request, session)
    changes = isinstance(principal, Operator)  # an app user's JWT may read their rows, not write them
    name = (profile.preferred_name or profile.name) if profile is not None else None
    sections = []
    for category in (c.value for c in MemoryCategory):
        mine = [m for m in found if m.category == category]
        if mine:
            cards = join(_memory_card(user.user_id, m, csrf if changes else None) for m in mine)
            sections.append(render("<h2>{c} ({n})</h2>\n{cards}", c=category.title(), n=len(mine), cards=cards))
    body = render(
        '{done}<p class="muted">{count} memories{about}. Each shows how important it is, when it was learned, when '
        "a turn last used it, and its earlier values.</p>\n{sections}\n{erase}",
        done=_done(request),
        count=len(found),
        about=f" about {name}" if name else "",
        sections=join(sections) if sections else Html('<p class="muted">Nothing is remembered.</p>'),
        erase=_erase_form(user.user_id, csrf) if changes else Html(READ_ONLY),
    )
    return _html(page(title=name or "Memories", body=body, nav=_nav(user.user_id, "memories", principal),
                      signed_in=True, csrf=csrf))  # fmt: skip


async def recall_page(request: web.Request) -> web.Response:
    session, principal = await _signed_in(request)
    query = request.query.get("q", "").strip()
    async with user_access(request, principal) as user:
        found = await user.recall(query) if query else None
    form = render(
        """<form method="get" class="row">
<input type="search" name="q" value="{q}" placeholder="where does my sister live?" aria-label="what the user says">
<button type="submit" class="primary">Recall</button>
</form>""",
        q=query,
    )
    body = Html(form + (_recall(found) if found is not None else ""))
    return _html(page(title="What would it recall?", body=body, nav=_nav(user.user_id, "recall", principal),
                      signed_in=True, csrf=_csrf(request, session)))  # fmt: skip


async def profile_page(request: web.Request) -> web.Response:
    session, principal = await _signed_in(request)
    async with user_access(request, principal) as user:
        view = await user.profile()
    return _html(page(title="Profile and persona", body=_profile(view), nav=_nav(user.user_id, "profile", principal),
                      signed_in=True, csrf=_csrf(request, session)))  # fmt: skip


async def conversations_page(request: web.Request) -> web.Response:
    session, principal = await _signed_in(request)
    async with user_access(request, principal) as user:
        past = await user.conversations()
    body = join(_conversation(c) for c in past) if past else Html('<p class="muted">No conversations.</p>')
    return _html(page(title="Past conversations", body=body, nav=_nav(user.user_id, "conversations", principal),
                      signed_in=True, csrf=_csrf(request, session)))  # fmt: skip


async def export_download(request: web.Request) -> web.Response:
    _, principal = await _signed_in(request)
    async with user_access(request, principal) as user:
        document = await user.export()
    return web.json_response(
        document, headers={"Content-Disposition": f'attachment; filename="companion-{user.user_id}.json"'}
    )


# Actions ---------------------------------------------------------------------------------------------------


async def edit(request: web.Request) -> web.Response:
    session, principal = await _signed_in(request)
    form = await request.post()
    _check_csrf(request, session, form)
    value = str(form.get("value", ""))
    importance = str(form.get("importance", "")).strip() or None
    async with user_access(request, principal) as user:
        await user.edit(request.match_info["category"], request.match_info["key"], value=value, importance=importance)
    raise web.HTTPSeeOther(f"/users/{user.user_id}?done=edited")


async def forget(request: web.Request) -> web.Response:
    session, principal = await _signed_in(request)
    _check_csrf(request, session, await request.post())
    async with user_access(request, principal) as user:
        await user.forget(request.match_info["category"], request.match_info["key"])
    raise web.HTTPSeeOther(f"/users/{user.user_id}?done=forgotten")


async def erase(request: web.Request) -> web.Response:
    session, principal = await _signed_in(request)
    form = await request.post()
    _check_csrf(request, session, form)
    async with user_access(request, principal) as user:
        await user.erase(confirm=str(form.get("confirm", "")))
    raise web.HTTPSeeOther(f"/users/{user.user_id}?done=erased")


def error_page(status: int, sentence: str) -> str:
    body = render('<p class="error">{s}</p><p><a href="/">Back</a></p>', s=sentence[:1].upper() + sentence[1:] + ".")
    return page(title={400: "That did not work", 404: "Not found", 429: "Slow down"}.get(status, "Error"), body=body)


# Pieces ----------------------------------------------------------------------------------------------------


def _memory_card(user_id: uuid.UUID, memory: MemoryView, csrf: str | None) -> Html:
    """One memory; with ``csrf``, its edit and forget forms too."""
    action = f"/users/{user_id}/memories/{quote(memory.category)}/{quote(memory.key)}"
    history = (
        render(
            "<details><summary>Earlier values ({n})</summary><table><tr><th>was</th><th>became</th><th>when</th></tr>"
            "{rows}</table></details>",
            n=len(memory.history),
            rows=join(
                render(
                    "<tr><td>{old}</td><td>{new}</td><td>{at}</td></tr>",
                    old=c.old_value,
                    new=c.new_value,
                    at=when(c.changed_at),
                )  # fmt: skip
                for c in reversed(memory.history)
            ),
        )
        if memory.history
        else Html("")
    )
    uses = "once" if memory.access_count == 1 else f"{memory.access_count} times"
    return render(
        """<article class="card" id="m-{category}-{key}">
<p class="value">{value}</p>
<div class="meta"><span class="key">{key}</span> · importance <meter min="0" max="1" value="{importance}"></meter>
<data class="importance" value="{importance}">{importance}</data> · learned {learned} · changed {updated}
· last used {used}{uses} · from {source}</div>
{history}
{forms}
</article>""",
        category=memory.category,
        key=memory.key,
        value=memory.value,
        importance=f"{memory.importance:.2f}",
        learned=when(memory.created_at),
        updated=when(memory.updated_at),
        used=when(memory.last_accessed_at),
        uses=f" ({uses})" if memory.access_count else "",
        source=memory.source,
        history=history,
        forms=_memory_forms(action, memory, csrf) if csrf is not None else Html(""),
    )


def _memory_forms(action: str, memory: MemoryView, csrf: str) -> Html:
    return render(
        """<details><summary>Edit or forget</summary>
<form method="post" action="{action}" class="edit">
<input type="hidden" name="csrf" value="{csrf}">
<label>Value <textarea name="value" rows="2" maxlength="1000" required>{value}</textarea></label>
<label>Importance (0 to 1) <input type="number" name="importance" min="0" max="1" step="0.05" value="{importance}">
</label>
<div class="row"><button type="submit" class="primary">Save</button></div>
</form>
<form method="post" action="{action}/forget" class="inline">
<input type="hidden" name="csrf" value="{csrf}">
<button type="submit" class="danger">Forget this</button>
</form>
</details>""",
        action=action,
        csrf=csrf,
        value=memory.value,
        importance=f"{memory.importance:.2f}",
    )


def _erase_form(user_id: uuid.UUID, csrf: str) -> Html:
    return render(
        """<section class="danger-zone">
<h2>Erase everything</h2>
<p>Every memory, the profile and every conversation of this user go, for good.
Type the user id <code>{user_id}</code> to confirm.</p>
<form method="post" action="/users/{user_id}/erase" class="edit">
<input type="hidden" name="csrf" value="{csrf}">
<input type="text" name="confirm" autocomplete="off" aria-label="type the user id to confirm" required>
<div><button type="submit" class="danger">Erase everything</button></div>
</form>
</section>""",
        user_id=str(user_id),
        csrf=csrf,
    )


def _recall(found: RecallView) -> Html:
    verdict = render(
        '<p class="verdict{no}"><strong>{yes}</strong> {reason}</p>',
        no="" if found.inject else " no",
        yes="The relevance gate lets these into the LLM request." if found.inject else "Nothing would be injected:",
        reason=found.reason,
    )
    rows = join(
        render(
            '<tr><td class="num">{rank}</td><td>{value}<div class="key">{category} · {key}</div></td>'
            '<td class="num">{total}</td><td class="num">{z} (cos {cos})</td><td class="num">{cov} (bm25 {bm})</td>'
            '<td>{window}</td><td class="num">{recency}</td><td class="num">{importance}</td></tr>',
            rank=i + 1,
            value=r.value,
            category=r.category,
            key=r.key,
            total=f"{r.total:.3f}",
            z=f"{r.semantic_z:+.2f}",
            cos=f"{r.semantic:.2f}",
            cov=f"{r.coverage:.2f}",
            bm=f"{r.lexical:.2f}",
            window="yes" if r.in_window else "",
            recency=f"{r.recency:.2f}",
            importance=f"{r.importance:.2f}",
        )  # fmt: skip
        for i, r in enumerate(found.ranked)
    )
    table = (
        render(
            "<table><tr><th>#</th><th>memory</th><th>score</th><th>meaning (z)</th><th>words (coverage)</th>"
            "<th>time window</th><th>recency</th><th>importance</th></tr>{rows}</table>",
            rows=rows,
        )
        if found.ranked
        else Html('<p class="muted">No memories to rank.</p>')
    )
    notes = (
        render("<h2>What the LLM request would carry</h2><pre>{notes}</pre>", notes=found.notes)
        if found.notes
        else Html("")
    )
    return Html(verdict + table + notes)


def _profile(view: ProfileView) -> Html:
    profile = view.profile
    fields: Mapping[str, Any] = (
        {"name": profile.name, "preferred name": profile.preferred_name, "timezone": profile.timezone,
         "language": profile.language, "changed": when(profile.updated_at)}
        if profile is not None
        else {}
    )  # fmt: skip
    table = (
        render(
            "<table>{rows}</table>",
            rows=join(render("<tr><th>{k}</th><td>{v}</td></tr>", k=k, v=v if v else "—") for k, v in fields.items()),
        )
        if fields
        else Html('<p class="muted">No profile.</p>')
    )
    return render(
        """{table}
<h2>Instructions, as the agent receives them</h2>
<pre>{instructions}</pre>
<h2>Notes with every turn (the written profile)</h2>
{notes}""",
        table=table,
        instructions=view.instructions,
        notes=render("<pre>{n}</pre>", n=view.notes) if view.notes else Html('<p class="muted">None yet.</p>'),
    )


def _conversation(view: ConversationView) -> Html:
    c = view.conversation
    threads = (
        render('<ul class="threads">{items}</ul>', items=join(render("<li>{t}</li>", t=t) for t in c.open_threads))
        if c.open_threads
        else Html("")
    )
    return render(
        """<article class="card">
<div class="meta">started {started} · {ended} · {n} messages</div>
<p class="value">{summary}</p>
{threads_label}{threads}
</article>""",
        started=when(c.started_at),
        ended=render("ended {at}", at=when(c.ended_at)) if c.ended_at else "not finished",
        n=view.messages,
        summary=c.summary or "No summary.",
        threads_label=Html('<div class="meta">Open threads:</div>') if c.open_threads else Html(""),
        threads=threads,
    )


def _users_table(listed: list[UserSummary]) -> Html:
    return render(
        "<table><tr><th>name</th><th>user id</th><th>changed</th></tr>{rows}</table>",
        rows=join(
            render(
                '<tr><td>{name}</td><td><a href="/users/{uid}">{uid}</a></td><td>{at}</td></tr>',
                name=u.name or "—",
                uid=str(u.user_id),
                at=when(u.updated_at),
            )  # fmt: skip
            for u in listed
        ),
    )


def _nav(user_id: uuid.UUID, here: str, principal: Principal) -> Html:
    links = [
        ("memories", f"/users/{user_id}", "Memories"),
        ("recall", f"/users/{user_id}/recall", "Recall"),
        ("profile", f"/users/{user_id}/profile", "Profile"),
        ("conversations", f"/users/{user_id}/conversations", "Conversations"),
        ("export", f"/users/{user_id}/export.json", "Export JSON"),
    ]
    if isinstance(principal, Operator):
        links.insert(0, ("users", "/", "All users"))
    return render(
        "<nav>{links}</nav>",
        links=join(
            (
                render(
                    '<a href="{href}" class="{cls}">{label}</a>',
                    href=href,
                    cls="here" if name == here else "",
                    label=label,
                )
                for name, href, label in links
            ),  # fmt: skip
            " ",
        ),
    )


def _done(request: web.Request) -> Html:
    sentence = DONE.get(request.query.get("done", ""))
    return render('<p class="verdict">{s}</p>', s=sentence) if sentence else Html("")


# Sessions --------------------------------------------------------------------------------------------------


async def _signed_in(request: web.Request) -> tuple[BrowserSession, Principal]:
    inspector = inspector_of(request)
    session = inspector.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None or session.principal is None:
        raise UnauthorizedError("sign in")
    # A JWT expires (in an hour, on Supabase): an app user's is checked again, the check at most a minute old.
    if isinstance(session.principal, AppUser):
        try:
            await inspector.auth.principal(session.principal.access_token)
        except UnauthorizedError as exc:
            if not exc.retryable:
                inspector.sessions.drop(session.id)
            raise
    return session, session.principal


def _csrf(request: web.Request, session: BrowserSession) -> str:
    return inspector_of(request).csrf.token(session.id)


def _check_csrf(request: web.Request, session: BrowserSession, form: Mapping[str, Any]) -> None:
    if not inspector_of(request).csrf.valid(session.id, form.get("csrf")):
        raise web.HTTPForbidden(text="The form expired or came from elsewhere: reload the page and try again.")


def _set_cookie(response: web.StreamResponse, session: BrowserSession) -> None:
    response.set_cookie(SESSION_COOKIE, session.id, httponly=True, samesite="Strict", path="/")


def _html(markup: str, *, status: int = 200) -> web.Response:
    return web.Response(text=markup, status=status, content_type="text/html")
