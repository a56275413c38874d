"""OnboardingService: turns the app's onboarding answers into a profile and seed memories, exactly once.

The app writes a row of answers (name, occupation, interests, goals, what the user wants from the companion, ...).
When a user has answers and no profile yet, the first session to claim the answers (a compare-and-set in the
database, so two sessions starting together cannot both win) fills the profile and saves the seed memories.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.categories import MemoryCategory, ProfileField
from core.errors import InvalidInputError
from core.validators import WriteGuard, clean_value, normalize_key
from infrastructure.storage import Profile, Storage
from services.memory_service import NewMemory
from services.user_memory import UserMemory
from services.user_service import UserService

logger = logging.getLogger("companion.onboarding")

# answer name -> (category, key, how to say it). Lists are joined; unknown answers become OTHER memories.
_SEEDS: dict[str, tuple[MemoryCategory, str, str]] = {
    "occupation": (MemoryCategory.FACT, "occupation", "Works as {}"),
    "job": (MemoryCategory.FACT, "occupation", "Works as {}"),
    "location": (MemoryCategory.FACT, "home_city", "Lives in {}"),
    "city": (MemoryCategory.FACT, "home_city", "Lives in {}"),
    "interests": (MemoryCategory.PREFERENCE, "interests", "Is interested in {}"),
    "hobbies": (MemoryCategory.PREFERENCE, "hobbies", "Enjoys {}"),
    "goals": (MemoryCategory.GOAL, "goals", "Wants to {}"),
    "wants_from_companion": (MemoryCategory.PREFERENCE, "companion_wish", "Wants the companion to {}"),
    "communication_style": (MemoryCategory.PREFERENCE, "communication_style", "Likes conversations that are {}"),
    "family": (MemoryCategory.RELATIONSHIP, "family", "Family: {}"),
    "health": (MemoryCategory.HEALTH, "health_notes", "Health: {}"),
    "routine": (MemoryCategory.ROUTINE, "routine", "Routine: {}"),
}
_PROFILE_FIELDS = frozenset(ProfileField)  # answers named like a profile field fill it


@dataclass(frozen=True, slots=True)
class OnboardingResult:
    ran: bool
    memories: int = 0
    reason: str = ""


class OnboardingService:
    def __init__(
        self,
        *,
        user_id: uuid.UUID,
        guard: WriteGuard,
        storage: Storage,
        users: UserService,
        memories: UserMemory,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.user_id = user_id
        self._guard = guard
        self._storage = storage
        self._users = users
        self._memories = memories
        self._clock = clock

    async def run(self) -> OnboardingResult:
        if not self._guard.can_write:
            return OnboardingResult(ran=False, reason="guest")
        answers = await self._storage.get_onboarding(self.user_id)
        if answers is None:
            return OnboardingResult(ran=False, reason="no answers")
        if answers.processed_at is not None:
            return OnboardingResult(ran=False, reason="already done")
        if _has_content(await self._storage.get_profile(self.user_id)):
            return OnboardingResult(ran=False, reason="profile exists")
        if not await self._storage.claim_onboarding(self.user_id, at=self._clock()):
            return OnboardingResult(ran=False, reason="claimed by another session")
        profile_fields, seeds = _interpret(answers.answers)
        await self._users.ensure_profile_exists()
        for name, value in profile_fields.items():  # one at a time: a bad timezone must not lose the name
            try:
                await self._users.update_profile(**{name: value})
            except InvalidInputError:
                logger.warning("onboarding answer skipped", extra={"answer": name})
        saved = await self._memories.save_many(seeds) if seeds else []
        logger.info("onboarding done", extra={"memories": len(saved), "profile_fields": len(profile_fields)})
        return OnboardingResult(ran=True, memories=len(saved))


def _has_content(profile: Profile | None) -> bool:
    return profile is not None and any((profile.name, profile.preferred_name, profile.summary))


def _interpret(answers: Mapping[str, Any]) -> tuple[dict[str, str], list[NewMemory]]:
    profile: dict[str, str] = {}
    seeds: list[NewMemory] = []
    for name, raw in answers.items():
        text = _as_text(raw)
        if not text:
            continue
        if name in _PROFILE_FIELDS:  # checked by update_profile, one field at a time
            profile[name] = text
            continue
        category, key, template = _SEEDS.get(name, (MemoryCategory.OTHER, name, "{}"))
        try:  # the rules save_many applies, here so that one bad answer is skipped rather than failing them all
            key, value = normalize_key(key), clean_value(template.format(text))
        except InvalidInputError:
            logger.warning("onboarding answer skipped", extra={"answer_length": len(text)})
            continue
        seeds.append(NewMemory(category.value, key, value, None, "onboarding"))
    return profile, seeds


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list | tuple):
        parts = [str(v).strip() for v in value if str(v).strip()]
        return ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1] if parts else ""
    if value is None:
        return ""
    return str(value)
