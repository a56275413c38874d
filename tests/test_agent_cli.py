"""What a user sees when the configuration is not enough for the command they ran (agent.py as a subprocess)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.preflight import EXIT_CONFIG
from tests.agent_process import clean_env, run_agent


def test_console_without_any_llm_configured_says_what_to_set(tmp_path: Path) -> None:
    result = run_agent(["console", "--text"], cwd=tmp_path, env=clean_env(tmp_path))

    assert result.returncode == EXIT_CONFIG
    for needed in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "Ollama", "http://localhost:11434/v1"):
        assert needed in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "LIVEKIT_URL" not in result.stderr  # the console needs no LiveKit server


@pytest.mark.parametrize("command", ["start", "dev"])
def test_worker_commands_without_livekit_exit_non_zero_naming_the_variables(tmp_path: Path, command: str) -> None:
    env = clean_env(tmp_path, OPENAI_API_KEY="sk-test")
    result = run_agent([command], cwd=tmp_path, env=env)

    assert result.returncode == EXIT_CONFIG
    for variable in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        assert variable in result.stderr
    assert "OPENAI_API_KEY" not in result.stderr
    assert "Traceback" not in result.stderr


def test_only_the_missing_livekit_variables_are_named(tmp_path: Path) -> None:
    env = clean_env(tmp_path, OPENAI_API_KEY="sk-test", LIVEKIT_URL="wss://example.livekit.cloud")
    result = run_agent(["start", "--api-key", "APIxyz"], cwd=tmp_path, env=env)

    assert result.returncode == EXIT_CONFIG
    assert "LIVEKIT_API_SECRET" in result.stderr
    assert "LIVEKIT_URL" not in result.stderr
    assert "LIVEKIT_API_KEY" not in result.stderr  # given as --api-key


def test_start_with_nothing_configured_names_livekit_and_the_llm(tmp_path: Path) -> None:
    result = run_agent(["start"], cwd=tmp_path, env=clean_env(tmp_path))

    assert result.returncode == EXIT_CONFIG
    assert "LIVEKIT_URL" in result.stderr
    assert "OPENAI_BASE_URL" in result.stderr


def test_a_broken_setting_is_named_with_its_fix_and_no_secret(tmp_path: Path) -> None:
    env = clean_env(tmp_path, OPENAI_API_KEY="sk-test", DATABASE_URL="mysql://root:hunter2@db/companion")
    result = run_agent(["console", "--text"], cwd=tmp_path, env=env)

    assert result.returncode == EXIT_CONFIG
    assert "DATABASE_URL must be sqlite:///" in result.stderr
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_dotenv_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SUPABASE_URL=https://project.supabase.co\n")
    result = run_agent(["console", "--text"], cwd=tmp_path, env=clean_env(tmp_path, OPENAI_API_KEY="sk-test"))

    assert result.returncode == EXIT_CONFIG
    assert "SUPABASE_URL is set but SUPABASE_SERVICE_ROLE_KEY is missing" in result.stderr


def test_help_needs_no_configuration(tmp_path: Path) -> None:
    result = run_agent(["--help"], cwd=tmp_path, env=clean_env(tmp_path))

    assert result.returncode == 0
    assert "console" in result.stdout


def test_a_language_the_local_embedder_does_not_know_is_warned_about(tmp_path: Path) -> None:
    env = clean_env(tmp_path, AGENT_LANGUAGE="ur")
    result = run_agent(["console", "--text"], cwd=tmp_path, env=env)

    assert result.returncode == EXIT_CONFIG  # no LLM: the console cannot start, but the warning came first
    assert "AGENT_LANGUAGE is ur" in result.stderr
    assert "EMBEDDING_PROVIDER=openai" in result.stderr
    english = run_agent(["console", "--text"], cwd=tmp_path, env=clean_env(tmp_path))
    assert "EMBEDDING_PROVIDER" not in english.stderr


def test_turn_detector_cloud_without_livekit_keys_names_them_before_anything_starts(tmp_path: Path) -> None:
    env = clean_env(tmp_path, OPENAI_API_KEY="sk-test", TURN_DETECTOR="cloud")
    result = run_agent(["console", "--text"], cwd=tmp_path, env=env)

    assert result.returncode == EXIT_CONFIG
    assert "TURN_DETECTOR=cloud" in result.stderr
    for variable in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        assert variable in result.stderr
    assert "Traceback" not in result.stderr
