"""UserService: the user's basic profile (name, preferred name, timezone, language), created once, cached.

The database is the truth; the cache only remembers it. A cached profile is keyed by the user's version, which the
database bumps with every change (``Storage.user_version``), so an entry from before a change is never found again:
not after a forget, and not from a Redis restored from an old snapshot or a replica that missed the change.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from core.validators import WriteGuard, profile_change
from infrastructure.cache import Cache
from infrastructure.storage import Profile, Storage, wire

PROFILE_CACHE_KEY = "profile"


class UserService:
    def __init__(
        self,
        *,
        user_id: uuid.UUID,
        guard: WriteGuard,
        storage: Storage,
        cache: Cache | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.user_id = user_id
        self._guard = guard
        self._storage = storage
        self._cache = cache
        self._clock = clock

    async def ensure_profile_exists(self) -> Profile:
        """Idempotent, and safe when two sessions of the same user start together."""
        self._guard.check(self.user_id)
        return await self._storage.ensure_profile(self.user_id, at=self._clock())

    async def get_profile(self) -> Profile | None:
        if self._cache is None:
            return await self._storage.get_profile(self.user_id)
        # The version is read first, so what is loaded is never older than the key it is stored under.
        version = await self._storage.user_version(self.user_id)
        cached = await self._cache.get_or_load(
            f"{PROFILE_CACHE_KEY}@{version}", self._load_for_cache, user_id=self.user_id
        )
        return None if cached is None else wire.profile_from_row(cached)

    async def known(self) -> bool:
        """Whether the companion ever stored anything for this user (a profile or a memory; erased ones count:
        the version outlives an erasure)."""
        return await self._storage.user_version(self.user_id) > 0

    async def update_profile(self, **fields: str | None) -> Profile:
        """Set basic fields (and ``summary``, the written profile); values are checked before anything is sent."""
        self._guard.check(self.user_id)
        changes = dict(profile_change(name, value) for name, value in fields.items())
        return await self._storage.update_profile(self.user_id, changes, at=self._clock())  # a new version

    async def _load_for_cache(self) -> dict[str, Any] | None:
        profile = await self._storage.get_profile(self.user_id)
        return None if profile is None else wire.profile_row(profile)


def display_name(profile: Profile | None) -> str | None:
    if profile is None:
        return None
    return profile.preferred_name or profile.name
