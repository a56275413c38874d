"""ProfileService: a written profile of the user, kept by the LLM from conversation and memories.

The profile (a few hundred words: who they are, what matters to them, how they like to talk) is generated from
the existing profile, the user's memories and the recent conversation, with the instruction to merge rather than
overwrite. It is refreshed in the background at most every ``refresh_every`` user turns and at session end, never
on a turn's path.
"""

from __future__ import annotations

import logging
import uuid

from core.errors import CompanionError
from core.validators import WriteGuard
from infrastructure.background import BackgroundTasks
from infrastructure.llm import TextModel
from infrastructure.storage import Storage
from services.user_memory import UserMemory
from services.user_service import UserService

logger = logging.getLogger("companion.profile")

PROFILE_PROMPT = (
    "You maintain a companion's private notes about one person: a profile of at most 250 words, in the third "
    "person, plain prose without lists or headings, covering who they are, the people and things that matter to "
    "them, what they are working towards, and how they like to be spoken to. You get the current profile, the "
    "facts remembered about them and their recent conversation. Merge: keep everything in the current profile "
    "that is not contradicted, update what changed, add what is new. Never invent. Answer with the profile only."
)
MAX_PROFILE_CHARS = 3_000
TASK_NAME = "profile-refresh"


class ProfileService:
    def __init__(
        self,
        *,
        user_id: uuid.UUID,
        guard: WriteGuard,
        storage: Storage,
        users: UserService,
        memories: UserMemory,
        llm: TextModel,
        tasks: BackgroundTasks,
        refresh_every: int = 10,
    ) -> None:
        if refresh_every < 1:
            raise ValueError("refresh_every must be at least 1")
        self.user_id = user_id
        self._guard = guard
        self._storage = storage
        self._users = users
        self._memories = memories
        self._llm = llm
        self._tasks = tasks
        self._refresh_every = refresh_every
        self._turns = 0

    async def generate(self) -> str:
        """Write the merged profile now and save it; returns it. If the user asks to forget everything while it
        is being written, it is not saved."""
        self._guard.check(self.user_id)
        ticket = self._memories.ticket()  # revoked by a forget while the profile is written
        profile = await self._users.get_profile()
        memories = await self._memories.list_memories(limit=200)
        messages = await self._storage.recent_messages(self.user_id, limit=40)
        notes = "\n".join(f"- [{m.category}] {m.value}" for m in memories) or "(none yet)"
        talk = "\n".join(f"{m.role}: {m.content}" for m in messages) or "(no conversation yet)"
        current = (profile.summary if profile else None) or "(empty)"
        prompt = f"Current profile:\n{current}\n\nRemembered facts:\n{notes}\n\nRecent conversation:\n{talk}"
        text = " ".join((await self._llm.complete(system=PROFILE_PROMPT, user=prompt, max_tokens=500)).split())
        if len(text) > MAX_PROFILE_CHARS:
            text = text[:MAX_PROFILE_CHARS].rsplit(" ", 1)[0]
        if not ticket.valid:
            return ""
        await self._users.update_profile(summary=text)
        return text

    def on_user_turn(self) -> bool:
        """Count a user turn; every ``refresh_every`` turns start a background refresh (unless one is running).
        True when one was started."""
        self._turns += 1
        name = f"{TASK_NAME}:{self.user_id}"
        if self._turns % self._refresh_every or not self._guard.can_write or self._tasks.running(name):
            return False
        return self._tasks.spawn(self._refresh(), name=name) is not None

    async def _refresh(self) -> None:
        try:
            await self.generate()
        except CompanionError as exc:  # the next refresh will try again; the conversation is unaffected
            logger.warning("profile refresh failed", extra={"error": type(exc).__name__})
