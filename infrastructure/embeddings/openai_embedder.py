"""The ``openai`` provider: text-embedding-3-small (or any OpenAI-compatible embeddings endpoint) at our dimension."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import openai

from core.errors import EmbeddingError
from infrastructure.embeddings.base import Embedder


class OpenAIEmbedder(Embedder):
    name = "openai"

    def __init__(self, *, client: openai.AsyncOpenAI, model: str = "text-embedding-3-small", dimension: int = 384):
        self._client = client  # owned by the connection pool, not by this provider
        self._model = model
        self.dimension = dimension

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        try:
            response = await self._client.embeddings.create(
                model=self._model, input=list(texts), dimensions=self.dimension, encoding_format="float"
            )
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
            raise EmbeddingError("embedding provider unavailable", retryable=True) from exc
        except openai.OpenAIError as exc:
            raise EmbeddingError("embedding request refused") from exc
        except (ValueError, TypeError):  # a body that is not the API's JSON
            raise EmbeddingError(
                "embedding provider answered something that is not embeddings", retryable=True
            ) from None
        try:
            rows = sorted(response.data, key=lambda item: item.index)
            matrix = np.array([row.embedding for row in rows], dtype=np.float32)
        except (AttributeError, TypeError, ValueError):
            raise EmbeddingError(
                "embedding provider answered something that is not embeddings", retryable=True
            ) from None
        if matrix.shape != (len(texts), self.dimension):
            raise EmbeddingError(f"embedding provider returned shape {matrix.shape}, expected {self.dimension} wide")
        # OpenAI's vectors are unit length already; other compatible servers' may not be.
        return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
