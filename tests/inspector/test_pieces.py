"""The inspector's small pieces: escaping, the rate limit's arithmetic, CSRF tokens, bearer headers."""

from __future__ import annotations

from inspector.auth import bearer
from inspector.csrf import CsrfTokens
from inspector.ratelimit import RateLimiter
from inspector.render import Html, join, render


def test_every_value_is_escaped_in_text_and_in_attributes() -> None:
    markup = render('<p title="{t}">{v}</p>', t='"><script>x</script>', v="<b>&'")
    assert markup == '<p title="&quot;&gt;&lt;script&gt;x&lt;/script&gt;">&lt;b&gt;&amp;&#x27;</p>'
    assert render("<div>{inner}</div>", inner=render("<i>{x}</i>", x="<")) == "<div><i>&lt;</i></div>"
    assert join([Html("<br>"), "<br>"]) == "<br>\n&lt;br&gt;"  # type: ignore[list-item]


def test_a_caller_gets_per_minute_requests_then_waits_for_the_next_token() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=2, clock=lambda: now[0])
    assert [limiter.allow("a"), limiter.allow("a")] == [0.0, 0.0]
    assert limiter.allow("a") == 30.0  # one token comes back every 60 / 2 = 30 s
    assert limiter.allow("b") == 0.0  # another caller has a bucket of its own
    now[0] = 30.0
    assert limiter.allow("a") == 0.0


def test_a_csrf_token_is_valid_for_its_own_session_only() -> None:
    tokens = CsrfTokens(key=b"k" * 32)
    assert tokens.valid("session-1", tokens.token("session-1"))
    assert not tokens.valid("session-2", tokens.token("session-1"))
    assert not tokens.valid("session-1", None)
    assert not CsrfTokens().valid("session-1", tokens.token("session-1"))  # a restarted process: a new key


def test_only_a_bearer_header_carries_a_token() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer ") is None
    assert bearer(None) is None
