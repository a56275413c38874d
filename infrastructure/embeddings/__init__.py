"""Embeddings: one :class:`Embedder` interface; ``local`` (MiniLM in ONNX Runtime) and ``openai`` providers."""

from __future__ import annotations

import openai

from core.config import Settings
from infrastructure.embeddings.base import Embedder
from infrastructure.embeddings.cached import CachedEmbedder, EmbeddingCacheStats

__all__ = ["CachedEmbedder", "Embedder", "EmbeddingCacheStats", "open_embedder", "preload_embedder"]


def preload_embedder(settings: Settings) -> Embedder | None:
    """The local model, loaded and run once (the first run pays for ONNX Runtime's set-up), synchronously: a LiveKit
    prewarm has no event loop yet. None when the provider is remote: there is nothing to load."""
    if settings.embedding_provider != "local":
        return None
    from infrastructure.embeddings.minilm import MiniLMEmbedder

    embedder = MiniLMEmbedder.load()
    embedder.encode(["warm up"])
    return embedder


async def open_embedder(
    settings: Settings, *, openai_client: openai.AsyncOpenAI | None = None, preloaded: Embedder | None = None
) -> CachedEmbedder:
    """The configured provider behind an LRU of recent texts. ``openai_client`` comes from the connection pool;
    ``preloaded`` is what :func:`preload_embedder` returned in prewarm."""
    inner: Embedder
    if preloaded is not None:
        inner = preloaded
    elif settings.embedding_provider == "openai":
        from infrastructure.embeddings.openai_embedder import OpenAIEmbedder

        if openai_client is None:  # a wiring mistake of ours, not the user's configuration
            raise TypeError("EMBEDDING_PROVIDER=openai needs the pooled OpenAI client")
        inner = OpenAIEmbedder(
            client=openai_client, model=settings.embedding_model, dimension=settings.embedding_dimensions
        )
    else:
        from infrastructure.embeddings.minilm import MiniLMEmbedder

        inner = await MiniLMEmbedder.aload()
    return CachedEmbedder(embedder=inner, max_entries=settings.embedding_cache_size)
