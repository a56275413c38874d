"""The language model for the services' own calls (profile, summary, extraction): one small seam over the
pooled OpenAI client, so any OpenAI-compatible server works and tests point it at a local fake.

The voice pipeline's LLM is LiveKit's (agent.py); this one is for background work, never on a turn's path.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import openai

from core.errors import LLMError


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
        content = response.choices[0].message.content if response.choices else None
        if not content or not content.strip():
            raise LLMError("language model returned nothing")
        return content.strip()
