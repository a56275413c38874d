"""Speech output: one factory for the configured providers, and the text clean-up LiveKit applies before speech.

Uplift AI (the official ``livekit-plugins-upliftai`` plugin) speaks when ``UPLIFTAI_API_KEY`` is set, with OpenAI
TTS behind it in LiveKit's ``tts.FallbackAdapter`` when an OpenAI-compatible server is configured too; otherwise
OpenAI TTS alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from livekit.agents import tts
from livekit.plugins import openai, upliftai
from openai import AsyncOpenAI

from core.config import Settings
from tts.text import speak_urls_as_links, without_urls

__all__ = ["TEXT_TRANSFORMS", "SpeechOutput", "build_tts", "speak_urls_as_links", "without_urls"]

# For AgentSession(tts_text_transforms=...): LiveKit's two built-ins, then ours.
TEXT_TRANSFORMS = ("filter_markdown", "filter_emoji", speak_urls_as_links)


@dataclass
class SpeechOutput:
    """The TTS to give the AgentSession, and the providers it is made of (which it does not close itself)."""

    tts: tts.TTS
    providers: list[tts.TTS]

    async def aclose(self) -> None:
        if self.tts not in self.providers:
            await self.tts.aclose()
        for provider in self.providers:
            await provider.aclose()


def build_tts(settings: Settings, *, openai_client: AsyncOpenAI | None = None) -> SpeechOutput:
    """The configured speech output. ``openai_client`` (the process's pooled client) carries OpenAI TTS; without it
    the plugin opens a client of its own from the settings."""
    providers: list[tts.TTS] = []
    if settings.upliftai_api_key is not None:
        providers.append(
            upliftai.TTS(
                base_url=settings.upliftai_base_url,
                api_key=settings.upliftai_api_key.get_secret_value(),
                voice_id=settings.upliftai_voice_id,
                output_format=settings.upliftai_output_format,  # type: ignore[arg-type]
            )
        )
    if settings.llm_configured or not providers:
        providers.append(
            openai.TTS(
                model=settings.openai_tts_model,
                voice=settings.openai_tts_voice,
                base_url=settings.openai_base_url,
                api_key=settings.openai_key_for_client,
                client=openai_client,
            )
        )
    engine = providers[0] if len(providers) == 1 else tts.FallbackAdapter(providers)
    return SpeechOutput(tts=engine, providers=providers)
