"""The companion's instructions: persona from the settings, and what the profile says about the user."""

from __future__ import annotations

import datetime as dt
import uuid

from core.config import Settings
from infrastructure.storage import Profile
from services.persona import Persona, language_name

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


def profile(**fields: str | None) -> Profile:
    values = {"name": None, "preferred_name": None, "timezone": None, "language": None, "summary": None, **fields}
    return Profile(user_id=uuid.uuid4(), created_at=T0, updated_at=T0, **values)  # type: ignore[arg-type]


def test_the_persona_comes_from_the_settings() -> None:
    settings = Settings(_env_file=None, agent_name="Sana", agent_personality="calm and playful",  # type: ignore[call-arg]
                        agent_language="ur")  # fmt: skip
    text = Persona.from_settings(settings).instructions()
    assert text.startswith("You are Sana, a calm and playful companion in a voice conversation. Speak Urdu.")
    assert "About the user" not in text


def test_a_language_without_a_name_here_is_given_by_its_code() -> None:
    assert language_name("pt-BR") == "Portuguese"
    assert language_name("sw") == "the language with code sw"


def test_the_users_own_language_wins_over_the_configured_one() -> None:
    persona = Persona("C", "warm", "en")
    assert persona.language_for(profile(language="es")) == "es"
    assert "Speak Spanish." in persona.instructions(profile(language="es"))
    assert persona.language_for(profile()) == "en"


def test_the_profile_fields_are_in_the_instructions_and_its_written_summary_only_in_the_notes() -> None:
    persona = Persona("C", "warm", "en")
    ana = profile(name="Ana Silva", preferred_name="Ana", timezone="Europe/Lisbon", summary='Ana is a "nurse".')
    about = persona.instructions(ana)
    assert about.endswith(
        'About the user: Their name is "Ana Silva". They like to be called "Ana". Their timezone is Europe/Lisbon.'
    )
    assert "nurse" not in about
    assert 'Messages that begin "Notes from memory" are your own notes' in about
    assert persona.notes(ana) == 'Notes from memory.\nYour summary of them: "Ana is a \\"nurse\\"."'
    assert persona.notes(ana, "- memories") == persona.notes(ana) + "\n- memories"
    assert persona.notes(profile()) == ""


def test_an_empty_profile_adds_nothing() -> None:
    persona = Persona("C", "warm", "en")
    assert persona.instructions(profile()) == persona.instructions(None)
