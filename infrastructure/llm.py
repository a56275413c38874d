"""The language model for the services' own calls (profile, summary, extraction): one small seam over the
pooled OpenAI client, so any OpenAI-compatible server works and tests point it at a local fake.

The voice pipeline's LLM is LiveKit's (agent.py); this one is for background work, never on a turn's path. Like
LiveKit's ``FallbackAdapter`` for the voice pipeline, :class:`FallbackChat` moves to the next configured provider
when one fails.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence

import openai

from core.errors import LLMError

logger = logging.getLogger("companion.llm")


class TextModel(abc.ABC):
    @abc.abstractmethod
    async def complete(self, *, system: str, user: str, json_object: bool = False, max_tokens: int = 800) -> str:
        """The model's answer to one system + user message. ``json_object`` asks for a JSON object."""


class OpenAIChat(TextModel):
    def __init__(self, *, client: openai.AsyncOpenAI, model: str, timeout: float = 30.0, temperature: float = 0.2):
        self._client = client  # owned by the connection pool
        self._model = model
        self._timeout = timeout
        self._temperature = temperature

    async def complete(self, *, system: str, user: str, json_object: bool = False, max_tokens: int = 800) -> str:
        messages: Sequence[dict[str, str]] = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        try:
            response = await self._client.chat.completions.create(
                model=self._model,
                messages=messages,  # type: ignore[arg-type]
                temperature=self._temperature,
                max_tokens=max_tokens,
                timeout=self._timeout,
                **({"response_format": {"type": "json_object"}} if json_object else {}),
            )
        # Causes are dropped: a provider's error may echo the request, and the prompt holds the user's words.
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError):
            raise LLMError("language model unavailable", retryable=True) from None
        except openai.OpenAIError:
            raise LLMError("language model refused the request") from None
        except (ValueError, TypeError):  # a body that is not the API's JSON: a broken or impostor server
            raise LLMError("language model answered something that is not a completion", retryable=True) from None
        try:
            content = response.choices[0].message.content if response.choices else None
        except (AttributeError, IndexError, TypeError):
            content = None
        if not isinstance(content, str) or not content.strip():
            raise LLMError("language model returned nothing", retryable=True)
        return content.strip()


class FallbackChat(TextModel):
    """The first model that answers, in order; the last one's error when none does."""

    def __init__(self, models: Sequence[TextModel]) -> None:
        if not models:
            raise ValueError("FallbackChat needs at least one model")
        self._models = list(models)

    async def complete(self, *, system: str, user: str, json_object: bool = False, max_tokens: int = 800) -> str:
        error: LLMError | None = None
        for position, model in enumerate(self._models):
            try:
                return await model.complete(system=system, user=user, json_object=json_object, max_tokens=max_tokens)
            except LLMError as exc:
                error = exc
                if position + 1 < len(self._models):
                    logger.warning("language model failed; trying the fallback", extra={"error": exc.message})
        assert error is not None
        raise error
