"""An LRU of recent embeddings in front of any provider: a repeated query costs no model run or request."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from infrastructure.embeddings.base import Embedder


@dataclass(slots=True)
class EmbeddingCacheStats:
    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class CachedEmbedder(Embedder):
    """Same interface as the provider it wraps; keeps the last ``max_entries`` texts' vectors."""

    def __init__(self, *, embedder: Embedder, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._inner = embedder
        self._max = max_entries
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self.name = embedder.name
        self.dimension = embedder.dimension
        self.stats = EmbeddingCacheStats()

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # Take what is cached now: another call may evict it while this one waits for the provider.
        known = {t: self._vectors[t] for t in texts if t in self._vectors}
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        self.stats.hits += sum(1 for t in texts if t in known)
        self.stats.misses += sum(1 for t in texts if t not in known)
        if missing:
            fresh = await self._inner.embed(missing)
            known.update(zip(missing, fresh, strict=True))
        for text in dict.fromkeys(texts):
            self._vectors[text] = known[text]
            self._vectors.move_to_end(text)
        while len(self._vectors) > self._max:
            self._vectors.popitem(last=False)
        # np.stack copies: a caller that changes its matrix does not change the cache.
        return np.stack([known[t] for t in texts])

    def cached(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        """The vectors already computed for ``texts`` (None where there is none), without computing any."""
        return [self._vectors.get(text) for text in texts]

    async def aclose(self) -> None:
        await self._inner.aclose()
