"""The one interface every embedding provider implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np


class Embedder(abc.ABC):
    """Turns texts into unit-length float32 vectors of ``dimension`` (cosine similarity is a dot product)."""

    name: str
    dimension: int

    @abc.abstractmethod
    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """An (len(texts), dimension) float32 matrix, one unit row per text, in order."""

    async def embed_one(self, text: str) -> np.ndarray:
        return (await self.embed([text]))[0]

    async def aclose(self) -> None:  # noqa: B027 (most providers own nothing to close)
        """Release what the provider owns. Idempotent."""
