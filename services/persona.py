"""The companion's instructions: its persona (name, personality, language) and what the profile says about the user.

Pure text: the agent builds a :class:`Persona` from the settings, and gives ``persona.instructions(profile)`` to
LiveKit's ``Agent`` at the start of a session and again whenever the profile changes. The user's own language (in
their profile) wins over ``AGENT_LANGUAGE``; the session's speech-to-text uses the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Settings
from infrastructure.storage import Profile

# The languages people most often set; any other code is named as a code, which models understand too.
LANGUAGE_NAMES = {
    "ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "fr": "French", "hi": "Hindi",
    "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "pt": "Portuguese", "ru": "Russian",
    "tr": "Turkish", "ur": "Urdu", "zh": "Chinese",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Persona:
    name: str
    personality: str
    language: str  # a code such as en or pt-BR

    @classmethod
    def from_settings(cls, settings: Settings) -> Persona:
        return cls(name=settings.agent_name, personality=settings.agent_personality, language=settings.agent_language)

    def language_for(self, profile: Profile | None) -> str:
        """The user's own language when their profile has one, else the configured one."""
        return (profile.language if profile is not None and profile.language else None) or self.language

    def instructions(self, profile: Profile | None = None) -> str:
        text = (
            f"You are {self.name}, a {self.personality} companion in a voice conversation. Speak "
            f"{language_name(self.language_for(profile))}. Answer in one to three short spoken sentences, without markdown, lists or emoji. "
            "Ask at most one question at a time. Use what you remember about the user naturally; never recite it. "
            "Use the tools to remember, recall or forget when the user asks, and the health tools when asked how "
            "you are running."
        )
        about = _about(profile) if profile is not None else ""
        return f"{text}\n\n{about}" if about else text


def _about(profile: Profile) -> str:
    facts = []
    if profile.name:
        facts.append(f"Their name is {profile.name}.")
    if profile.preferred_name and profile.preferred_name != profile.name:
        facts.append(f"They like to be called {profile.preferred_name}.")
    if profile.timezone:
        facts.append(f"Their timezone is {profile.timezone}.")
    if profile.summary:
        facts.append(f"Your notes on them: {profile.summary}")
    return "About the user: " + " ".join(facts) if facts else ""


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code.split("-")[0].lower(), f"the language with code {code}")
