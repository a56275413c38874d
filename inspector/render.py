"""HTML without a template engine: every value is escaped unless it is already :class:`Html`.

Memories are the user's own text: a stored ``<script>`` must reach the page as text. So nothing is interpolated
raw: :func:`render` escapes every value it is given (quotes included, for attributes), and only markup built by
this module (an :class:`Html`) passes through as it is.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable


class Html(str):
    """Markup that is safe to send: built here, from escaped values."""

    __slots__ = ()


def escape(value: object) -> Html:
    if isinstance(value, Html):
        return value
    return Html(html.escape("" if value is None else str(value), quote=True))


def render(template: str, **values: object) -> Html:
    """``template`` (trusted markup with ``{name}`` fields) with every value escaped."""
    return Html(template.format(**{name: escape(value) for name, value in values.items()}))


def join(parts: Iterable[Html], separator: str = "\n") -> Html:
    return Html(separator.join(escape(part) for part in parts))


def when(at: dt.datetime | None, *, now: dt.datetime | None = None) -> Html:
    """A time as people read it ("3 days ago"), with the exact UTC time in a tooltip."""
    if at is None:
        return Html("never")
    now = now or dt.datetime.now(dt.UTC)
    seconds = (now - at).total_seconds()
    if seconds < 90:
        words = "just now"
    elif seconds < 5400:
        words = f"{round(seconds / 60)} minutes ago"
    elif seconds < 129_600:
        words = f"{round(seconds / 3600)} hours ago"
    else:
        words = f"{round(seconds / 86_400)} days ago"
    return render('<time datetime="{iso}" title="{exact}">{words}</time>', iso=at.isoformat(),
                  exact=at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), words=words)  # fmt: skip


NOTHING = Html("")


def page(*, title: str, body: Html, nav: Html = NOTHING, signed_in: bool = False, csrf: str = "") -> Html:
    signout = (
        render(
            '<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="{csrf}">'
            '<button type="submit" class="link">Sign out</button></form>',
            csrf=csrf,
        )
        if signed_in
        else Html("")
    )
    return render(
        """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Memory inspector</title>
<link rel="stylesheet" href="/static/style.css">
</head>
<body>
<header><a class="brand" href="/">Memory inspector</a> {signout}</header>
{nav}
<main>
<h1>{title}</h1>
{body}
</main>
</body>
</html>
""",
        title=title,
        body=body,
        nav=nav,
        signout=signout,
    )


STYLE = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --accent: #0b5cad; --warn: #a40e26; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); }
header { display: flex; justify-content: space-between; align-items: center; padding: .6rem 1rem;
         background: var(--ink); color: #fff; }
header a.brand { color: #fff; font-weight: 600; text-decoration: none; }
header button.link { color: #fff; }
nav { display: flex; flex-wrap: wrap; gap: .25rem 1rem; padding: .5rem 1rem; background: var(--bg);
      border-bottom: 1px solid var(--line); }
nav a { color: var(--accent); text-decoration: none; }
nav a.here { font-weight: 600; color: var(--ink); }
main { max-width: 56rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.35rem; margin: .25rem 0 1rem; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; border-bottom: 1px solid var(--line); padding-bottom: .25rem; }
.muted, .meta { color: var(--muted); font-size: .875rem; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: .75rem; margin: .5rem 0; }
.card .value { margin: 0 0 .35rem; overflow-wrap: anywhere; white-space: pre-wrap; }
.card .key { font-family: ui-monospace, monospace; font-size: .8rem; color: var(--muted); }
meter { width: 4rem; vertical-align: middle; }
details { margin-top: .35rem; }
summary { cursor: pointer; color: var(--accent); font-size: .875rem; }
form.edit { display: grid; gap: .4rem; margin-top: .5rem; }
form.inline { display: inline; }
textarea, input[type=text], input[type=number], input[type=password], input[type=search] {
  width: 100%; font: inherit; padding: .4rem; border: 1px solid var(--line); border-radius: 6px; }
input[type=number] { max-width: 7rem; }
button { font: inherit; padding: .35rem .8rem; border-radius: 6px; border: 1px solid var(--line);
         background: #fff; cursor: pointer; }
button.primary { background: var(--accent); color: #fff; border-color: var(--accent); }
button.danger { color: var(--warn); border-color: var(--warn); }
button.link { background: none; border: none; padding: 0; color: var(--accent); text-decoration: underline; }
.row { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; }
table { border-collapse: collapse; width: 100%; font-size: .875rem; }
th, td { text-align: left; padding: .3rem .4rem; border-bottom: 1px solid var(--line); vertical-align: top; }
td.num { font-variant-numeric: tabular-nums; text-align: right; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: var(--bg); padding: .75rem; border-radius: 6px;
      font-size: .85rem; }
.verdict { padding: .5rem .75rem; border-radius: 6px; background: var(--bg); border-left: 4px solid var(--accent); }
.verdict.no { border-left-color: var(--muted); }
.danger-zone { border: 1px solid var(--warn); border-radius: 8px; padding: .75rem; margin-top: 2rem; }
.error { color: var(--warn); }
ul.threads { margin: .25rem 0 0 1.2rem; padding: 0; }
"""
