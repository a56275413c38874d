"""Settings: built from the environment and .env, validated once, errors that name the variable and the fix."""

from __future__ import annotations

import uuid
from pathlib import Path

import pydantic
import pytest

from core.config import (
    DEFAULT_CONSOLE_USER_ID,
    PLACEHOLDER_OPENAI_KEY,
    PostgresTarget,
    Settings,
    SqliteTarget,
    SupabaseTarget,
    load_settings,
)
from core.errors import ConfigError

OURS = [name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def no_settings_in_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in OURS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # and no .env of the developer's


def problems_of(**env: str) -> str:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with pytest.raises(ConfigError) as caught:
            load_settings()
    return caught.value.message


def test_with_nothing_set_the_defaults_need_no_server() -> None:
    settings = load_settings()
    assert settings.storage == SqliteTarget(path=Path("./data/companion.db"))
    assert settings.cache_uses_redis is False
    assert settings.console_user_id == DEFAULT_CONSOLE_USER_ID
    assert settings.llm_configured is False
    assert settings.missing_livekit_variables == ["LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"]


def test_database_url_wins_over_supabase_and_its_password_stays_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://worker:s3cret@db:5432/companion")
    monkeypatch.setenv("SUPABASE_URL", "https://project.supabase.co")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "service-key")
    settings = load_settings()
    assert isinstance(settings.storage, PostgresTarget)
    assert settings.storage.dsn.get_secret_value() == "postgresql://worker:s3cret@db:5432/companion"
    assert "s3cret" not in repr(settings.storage)
    assert "service-key" not in repr(settings)


def test_supabase_is_used_when_configured_and_database_url_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "https://project.supabase.co")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "service-key")
    storage = load_settings().storage
    assert isinstance(storage, SupabaseTarget)
    assert storage.url == "https://project.supabase.co"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SUPABASE_URL": "https://p.supabase.co"}, "SUPABASE_URL is set but SUPABASE_SERVICE_ROLE_KEY is missing"),
        ({"SUPABASE_SERVICE_ROLE_KEY": "k"}, "SUPABASE_SERVICE_ROLE_KEY is set but SUPABASE_URL is missing"),
        ({"REDIS_ENABLED": "true"}, "REDIS_ENABLED is true but REDIS_URL is missing"),
        ({"REDIS_ENABLED": "perhaps"}, "REDIS_ENABLED: Input should be a valid boolean"),
        ({"CONSOLE_USER_ID": "me"}, "CONSOLE_USER_ID: Input should be a valid UUID"),
        ({"DATABASE_URL": "mysql://root:pw@h/db"}, "DATABASE_URL must be sqlite:///path/to/file.db or postgresql://"),
        ({"OPENAI_BASE_URL": "localhost:11434"}, "OPENAI_BASE_URL must start with http:// or https://"),
    ],
)
def test_each_problem_names_the_variable_and_the_fix(env: dict[str, str], expected: str) -> None:
    message = problems_of(**env)
    assert expected in message
    assert "pw@" not in message


def test_every_problem_is_reported_at_once() -> None:
    message = problems_of(CONSOLE_USER_ID="me", DATABASE_URL="oracle://x", REDIS_ENABLED="maybe")
    assert all(name in message for name in ("CONSOLE_USER_ID", "DATABASE_URL", "REDIS_ENABLED"))


def test_redis_is_on_when_a_url_is_given_unless_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://localhost:6379/0")
    assert load_settings().cache_uses_redis is True
    monkeypatch.setenv("REDIS_ENABLED", "false")
    assert load_settings().cache_uses_redis is False


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "")
    monkeypatch.setenv("DATABASE_URL", "")
    settings = load_settings()
    assert settings.openai_base_url is None
    assert isinstance(settings.storage, SqliteTarget)


def test_a_local_server_needs_no_key_but_the_client_gets_a_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1")
    settings = load_settings()
    assert settings.llm_configured
    assert settings.openai_key_for_client == PLACEHOLDER_OPENAI_KEY
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real")
    assert load_settings().openai_key_for_client == "sk-real"


def test_dotenv_is_read_and_the_environment_overrides_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = uuid.uuid4()
    (tmp_path / ".env").write_text(f"CONSOLE_USER_ID={user}\nLLM_MODEL=from-dotenv\nLIVEKIT_LOG_LEVEL=debug\n")
    monkeypatch.setenv("LLM_MODEL", "from-environment")
    settings = load_settings()
    assert settings.console_user_id == user
    assert settings.llm_model == "from-environment"


def test_settings_are_immutable() -> None:
    settings = load_settings()
    with pytest.raises(pydantic.ValidationError):
        settings.llm_model = "other"  # type: ignore[misc]


def test_env_example_lists_every_setting_with_a_comment() -> None:
    lines = (Path(__file__).resolve().parents[1] / ".env.example").read_text().splitlines()
    listed = {line.split("=", 1)[0] for line in lines if line and not line.startswith("#")}
    assert listed == set(OURS)
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), f"{line.split('=')[0]} has no comment above it"


def test_the_readme_table_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {line.split("`")[1] for line in readme.splitlines() if line.startswith("| `")}
    assert set(OURS) <= rows, sorted(set(OURS) - rows)


def test_a_fallback_llm_needs_a_model_and_a_server() -> None:
    assert "FALLBACK_LLM_MODEL is missing" in problems_of(FALLBACK_LLM_BASE_URL="https://api.groq.com/openai/v1")
    assert "the fallback has no server" in problems_of(FALLBACK_LLM_MODEL="llama-3.1-8b-instant")
    assert "FALLBACK_LLM_BASE_URL must start with http" in problems_of(
        FALLBACK_LLM_BASE_URL="api.groq.com", FALLBACK_LLM_MODEL="m"
    )


def test_the_persona_language_and_metrics_port_are_checked() -> None:
    assert "AGENT_LANGUAGE" in problems_of(AGENT_LANGUAGE="English please")
    assert "METRICS_PORT" in problems_of(METRICS_PORT="70000")
