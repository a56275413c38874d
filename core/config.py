"""Settings: the one typed, immutable view of the environment (and ``.env``), validated once.

This is the only module that reads the environment. Everything else receives a :class:`Settings` (or the part of
it that it needs) from the place that builds the object graph.

Conventions:
- An empty variable counts as unset (``OPENAI_BASE_URL=`` in a ``.env`` does not point the client at "").
- ``None`` means "not configured"; features that are switched off by a flag have their own boolean.
- Secrets are ``SecretStr``: they never appear in ``repr`` or logs.
- Variables that are not ours are ignored rather than refused, because ``.env`` is shared with LiveKit's own
  (``LIVEKIT_LOG_LEVEL``, ...) and with the app that sits beside the worker.
"""

from __future__ import annotations

import functools
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///./data/companion.db"
DEFAULT_OUTBOX_DIR = Path("data/outbox")
# Fixed so that the console speaks as the same user every run, and its memories persist between runs.
DEFAULT_CONSOLE_USER_ID = uuid.UUID("00000000-0000-4000-8000-00000000c0de")
# Local OpenAI-compatible servers (Ollama, vLLM) ignore the key, but the openai client refuses to start without one.
PLACEHOLDER_OPENAI_KEY = "not-needed-for-local-servers"
# Where a fallback provider without its own base URL goes (never OPENAI_BASE_URL: that is the primary's server).
OPENAI_API_URL = "https://api.openai.com/v1"


@dataclass(frozen=True, slots=True)
class SqliteTarget:
    path: Path
    kind: Literal["sqlite"] = "sqlite"


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    dsn: SecretStr
    auto_migrate: bool
    pool_max_size: int = 10
    statement_cache_size: int = 100
    kind: Literal["postgres"] = "postgres"


@dataclass(frozen=True, slots=True)
class SupabaseTarget:
    url: str
    service_role_key: SecretStr
    kind: Literal["supabase"] = "supabase"


StorageTarget = SqliteTarget | PostgresTarget | SupabaseTarget


class Settings(BaseSettings):
    """Every variable Companion reads. Field names are the variable names in lower case."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
    )

    # LLM: honoured like the openai client honours them, so any OpenAI-compatible server works.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    # An optional second provider behind LiveKit's llm.FallbackAdapter: any OpenAI-compatible server.
    fallback_llm_base_url: str | None = None
    fallback_llm_model: str | None = None
    fallback_llm_api_key: SecretStr | None = None

    # Storage: DATABASE_URL wins; Supabase is used when it is configured and DATABASE_URL is not.
    database_url: str | None = None
    database_auto_migrate: bool = True
    # PostgreSQL: connections per job process at most (README "Scaling out": 2 in use measured), and asyncpg's
    # prepared statements per connection; 0 behind a pooler in transaction mode (Supavisor on 6543, PgBouncer
    # before 1.21), where a named prepared statement may land on another server connection.
    database_pool_max_size: int = Field(default=10, ge=1, le=100)
    database_statement_cache_size: int = Field(default=100, ge=0, le=10_000)
    supabase_url: str | None = None
    supabase_service_role_key: SecretStr | None = None
    supabase_anon_key: SecretStr | None = None

    # Cache: REDIS_ENABLED unset means "on when REDIS_URL is set".
    redis_url: str | None = None
    redis_enabled: bool | None = None
    redis_key_prefix: str = Field(default="companion", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    cache_ttl_seconds: float = Field(default=600.0, gt=0, le=86_400)
    cache_memory_max_entries: int = Field(default=10_000, ge=100, le=1_000_000)

    # Database write batching.
    batch_max_rows: int = Field(default=50, ge=1, le=1_000)
    batch_max_delay_ms: float = Field(default=100.0, ge=0, le=10_000)
    batch_max_pending: int = Field(default=10_000, ge=100, le=1_000_000)
    # The local durable outbox: every accepted write is fsynced here before it is acknowledged, and replayed on the
    # next start if the database never confirmed it. None: not given, so beside the SQLite database file (or
    # ./data/outbox with PostgreSQL / Supabase); see ``outbox_path``.
    outbox_dir: Path | None = None
    outbox_max_rows: int = Field(default=10_000, ge=100, le=1_000_000)
    outbox_max_mb: float = Field(default=64.0, ge=1.0, le=16_384.0)
    # How long a forgotten memory's tombstone (a hash of its key, which other sessions of the user catch up from)
    # stays before every process start prunes it; a session idle for longer reads all its memories once instead.
    tombstone_retention_hours: float = Field(default=24.0, gt=0, le=8_760)

    # Embeddings: "local" runs all-MiniLM-L6-v2 in process (384 dimensions); "openai" calls the embeddings API.
    embedding_provider: Literal["local", "openai"] = "local"
    embedding_model: str = "text-embedding-3-small"
    embedding_dimensions: int = Field(default=384, ge=64, le=3_072)
    embedding_cache_size: int = Field(default=1_024, ge=1, le=100_000)

    # Agent.
    agent_name: str = Field(default="Companion", min_length=1, max_length=40)
    agent_personality: str = Field(default="warm, attentive and curious", min_length=1, max_length=300)
    agent_language: str = Field(default="en", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
    console_user_id: uuid.UUID = DEFAULT_CONSOLE_USER_ID

    # LiveKit worker (dev / start / connect); the console needs none of them.
    livekit_url: str | None = None
    livekit_api_key: str | None = None
    livekit_api_secret: SecretStr | None = None
    # End of turn. "local": LiveKit's end-of-turn model (v1-mini) in every job process, offline; the worker's
    # forkserver loads its weights once (about 214 MB of every job process's RSS, shared). "cloud": LiveKit
    # Inference's v1 model (needs LIVEKIT_API_KEY and LIVEKIT_API_SECRET), with no local fallback. "vad": the end
    # of speech alone. With "cloud" or "vad" no job process maps the local model's weights.
    turn_detector: Literal["local", "cloud", "vad"] = "local"
    # Retries in a row of the connection to LiveKit before `start` / `dev` give up and exit non-zero. LiveKit waits
    # 0, 2, 4, 6, 8, then 10 s before each, so 6 give up after about 30 s of waiting (LiveKit's own default, 16,
    # after about 136 s). The count starts again after each successful connection: it also bounds a reconnection.
    livekit_max_retry: int = Field(default=6, ge=0, le=100)

    # Speech: Uplift AI when its key is set (OpenAI TTS as its fallback), else OpenAI TTS; OpenAI STT.
    upliftai_api_key: SecretStr | None = None
    upliftai_base_url: str = "wss://api.upliftai.org"
    upliftai_voice_id: str = "v_meklc281"
    upliftai_output_format: str = "MP3_22050_32"
    openai_tts_model: str = "gpt-4o-mini-tts"
    openai_tts_voice: str = "alloy"
    openai_stt_model: str = "gpt-4o-mini-transcribe"
    retrieval_deadline_ms: float = Field(default=150.0, gt=0, le=5_000)
    # The chat history sent to the LLM stays under this many tokens (estimated); older turns are summarised.
    chat_context_max_tokens: int = Field(default=3_000, ge=1_000, le=200_000)

    # Per-turn Prometheus histograms on http://0.0.0.0:METRICS_PORT/metrics. None: not served.
    metrics_port: int | None = Field(default=None, ge=1, le=65_535)
    # prometheus-client's own variable: where job processes keep their histograms. None: a fresh temporary folder.
    prometheus_multiproc_dir: Path | None = None

    # Logs: what the user said, tool arguments and transcripts appear in log records (LiveKit's `lk.pii.*` fields,
    # exception messages) only when this is true. For debugging on your own machine; never in production.
    log_user_text: bool = False
    # LiveKit's own variable, read by its CLI (--log-level). Unset: the console shows warnings and errors only,
    # `dev` DEBUG and `start` INFO.
    livekit_log_level: str | None = Field(default=None, pattern=r"(?i)^(trace|debug|info|warn|error|critical)$")

    # The memory inspector (python -m inspector): operators' bearer token (None: no operator access, and the
    # inspector starts only when SUPABASE_URL and SUPABASE_ANON_KEY let app users sign in), its port on 127.0.0.1,
    # and how many requests a minute one caller may make.
    inspector_token: SecretStr | None = None
    inspector_port: int = Field(default=8089, ge=1, le=65_535)
    inspector_rate_limit_per_minute: int = Field(default=120, ge=1, le=100_000)

    @field_validator("inspector_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError(
                "must be at least 16 characters; make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith("sqlite:///") or value.startswith(("postgresql://", "postgres://")):
            return value
        # Only a scheme is echoed: the rest of a database URL may hold a password.
        seen = (
            f" (it starts with '{value.split(':', 1)[0]}:')" if ":" in value and "@" not in value.split(":")[0] else ""
        )
        raise ValueError(
            "must be sqlite:///path/to/file.db or postgresql://user:password@host:5432/dbname"
            f"{seen}; unset it to use the default {DEFAULT_DATABASE_URL}"
        )

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str | None) -> str | None:
        if value is None or value.startswith(("redis://", "rediss://", "unix://")):
            return value
        # Only a scheme is echoed, as for DATABASE_URL: the rest may hold a password.
        seen = (
            f" (it starts with '{value.split(':', 1)[0]}:')" if ":" in value and "@" not in value.split(":")[0] else ""
        )
        raise ValueError(
            f"must be redis://[:password@]host:6379/0 (rediss:// for TLS, unix:///path/to/redis.sock){seen}; "
            "unset it to use the in-process cache"
        )

    @field_validator("openai_base_url", "fallback_llm_base_url", "supabase_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (for example http://localhost:11434/v1)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems: list[str] = []
        if self.supabase_url and not self.supabase_service_role_key:
            problems.append(
                "SUPABASE_URL is set but SUPABASE_SERVICE_ROLE_KEY is missing: copy the service_role key from "
                "your Supabase project's API settings, or unset SUPABASE_URL to use DATABASE_URL / SQLite"
            )
        if self.supabase_service_role_key and not self.supabase_url:
            problems.append(
                "SUPABASE_SERVICE_ROLE_KEY is set but SUPABASE_URL is missing: set SUPABASE_URL to "
                "https://<project>.supabase.co"
            )
        if self.embedding_provider == "local" and self.embedding_dimensions != 384:
            problems.append(
                "EMBEDDING_DIMENSIONS must be 384 with EMBEDDING_PROVIDER=local (all-MiniLM-L6-v2's size); "
                "unset it, or use EMBEDDING_PROVIDER=openai"
            )
        if self.fallback_llm_base_url and not self.fallback_llm_model:
            problems.append(
                "FALLBACK_LLM_BASE_URL is set but FALLBACK_LLM_MODEL is missing: name the model to use on that "
                "server, or unset FALLBACK_LLM_BASE_URL"
            )
        if self.fallback_llm_model and not (self.fallback_llm_base_url or self.fallback_llm_api_key):
            problems.append(
                "FALLBACK_LLM_MODEL is set but the fallback has no server: set FALLBACK_LLM_BASE_URL (any "
                "OpenAI-compatible server) or FALLBACK_LLM_API_KEY (OpenAI), or unset FALLBACK_LLM_MODEL"
            )
        if self.redis_enabled and not self.redis_url:
            problems.append(
                "REDIS_ENABLED is true but REDIS_URL is missing: set REDIS_URL=redis://localhost:6379/0, "
                "or REDIS_ENABLED=false to use the in-process cache"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    # Derived views -----------------------------------------------------------------------------------------

    @property
    def storage(self) -> StorageTarget:
        """Which backend to use: DATABASE_URL, else Supabase, else the SQLite default."""
        if self.database_url is None and self.supabase_url and self.supabase_service_role_key:
            return SupabaseTarget(url=self.supabase_url, service_role_key=self.supabase_service_role_key)
        url = self.database_url or DEFAULT_DATABASE_URL
        if url.startswith("sqlite:///"):
            return SqliteTarget(path=Path(url.removeprefix("sqlite:///")))
        return PostgresTarget(dsn=SecretStr(url), auto_migrate=self.database_auto_migrate,
                              pool_max_size=self.database_pool_max_size,
                              statement_cache_size=self.database_statement_cache_size)  # fmt: skip

    @property
    def outbox_path(self) -> Path:
        """OUTBOX_DIR, else an ``outbox`` folder beside the SQLite file, else ./data/outbox."""
        if self.outbox_dir is not None:
            return self.outbox_dir
        target = self.storage
        return target.path.parent / "outbox" if isinstance(target, SqliteTarget) else DEFAULT_OUTBOX_DIR

    @property
    def cache_uses_redis(self) -> bool:
        return bool(self.redis_url) if self.redis_enabled is None else self.redis_enabled

    @property
    def llm_configured(self) -> bool:
        return self.openai_api_key is not None or self.openai_base_url is not None

    @property
    def fallback_llm_configured(self) -> bool:
        return self.fallback_llm_model is not None

    @property
    def openai_key_for_client(self) -> str:
        if self.openai_api_key is not None:
            return self.openai_api_key.get_secret_value()
        return PLACEHOLDER_OPENAI_KEY

    @property
    def missing_livekit_variables(self) -> list[str]:
        pairs = (
            ("LIVEKIT_URL", self.livekit_url),
            ("LIVEKIT_API_KEY", self.livekit_api_key),
            ("LIVEKIT_API_SECRET", self.livekit_api_secret),
        )
        return [name for name, value in pairs if value is None]


def load_settings(*, env_file: str | Path | None = ".env") -> Settings:
    """Build :class:`Settings` from the environment and ``env_file``; raise :class:`ConfigError` naming each fix."""
    try:
        return Settings(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def share_with_job_processes(variable: str, value: str) -> None:
    """Put ``variable`` in the environment that LiveKit's CLI and job processes read (they start after this call).
    The one write to the environment: a library reads it itself (prometheus-client's PROMETHEUS_MULTIPROC_DIR,
    LiveKit's LIVEKIT_LOG_LEVEL)."""
    os.environ[variable] = value


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, built on first use (never at import time)."""
    return load_settings()


def _describe(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        if error["loc"]:
            variable = str(error["loc"][0]).upper()
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{variable} {message}" if error["type"] == "value_error" else f"{variable}: {message}")
        else:
            problems.extend(error["msg"].removeprefix("Value error, ").splitlines())
    return problems
