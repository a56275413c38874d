"""Text clean-up before speech. LiveKit's own transforms already drop markdown and emoji
(``tts_text_transforms`` "filter_markdown", "filter_emoji"); this one keeps URLs from being read out."""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator

_URL = re.compile(r"(?:https?://|www\.)\S*[^\s.,!?;:)\]]", re.IGNORECASE)
SAID_INSTEAD = "a link"


def without_urls(text: str) -> str:
    return _URL.sub(SAID_INSTEAD, text)


async def speak_urls_as_links(chunks: AsyncIterable[str]) -> AsyncIterator[str]:
    """Streamed text with every URL replaced by "a link". A URL may arrive in pieces, so the text after the
    last whitespace is held back until the next whitespace (or the end) shows where it stops."""
    pending = ""
    async for chunk in chunks:
        pending += chunk
        cut = max(pending.rfind(" "), pending.rfind("\n"))
        if cut < 0:
            continue
        ready, pending = pending[: cut + 1], pending[cut + 1 :]
        yield without_urls(ready)
    if pending:
        yield without_urls(pending)
