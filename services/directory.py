"""UserDirectory: who the companion knows, for operators (the inspector's list of users). Never built for a session,
which serves one user and must not see the others."""

from __future__ import annotations

from infrastructure.storage import Profile, Storage


class UserDirectory:
    def __init__(self, *, storage: Storage) -> None:
        self._storage = storage

    async def recent(self, *, limit: int = 100) -> list[Profile]:
        """Users with a profile, most recently changed first."""
        return await self._storage.recent_profiles(limit=limit)
