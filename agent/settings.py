"""Agent settings: the one place environment variables are read (a CLI flag beats an env var beats the default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the agent can be configured with. Build it with :meth:`from_env`, then override.

    Environment variables: SHOPSIGHT_HOME, SHOPSIGHT_BACKEND (local|openai), OPENAI_BASE_URL,
    OPENAI_API_KEY, SHOPSIGHT_MODEL, SHOPSIGHT_GGUF, SHOPSIGHT_THREADS, SHOPSIGHT_CHROMA_URL,
    SHOPSIGHT_RAISE_ERRORS, SHOPSIGHT_TIMEOUT_S, SHOPSIGHT_RETRIES, SHOPSIGHT_MAX_TOKENS, SHOPSIGHT_N_CTX,
    SHOPSIGHT_PLANNER (auto|router|native: who chooses tools; auto = router on local, native on openai),
    SHOPSIGHT_WRITER (auto|local|openai|none: who phrases answers; auto = the backend; none = the
    deterministic narrative only), SHOPSIGHT_EMBED_PRECISION (auto|bf16|fp32), SHOPSIGHT_MCP_TOKEN (the
    bearer token `shopsight mcp --http` requires),
    SHOPSIGHT_INGEST_MAX_ROWS, SHOPSIGHT_INGEST_MAX_MEMORY_MB, SHOPSIGHT_INGEST_MAX_TEXT_CHARS (ingest bounds),
    SHOPSIGHT_LOCK_TIMEOUT_S (how long a writer waits for another: ingest, train, index build).
    """

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True)

    home: Path | None = Field(default=None, alias="SHOPSIGHT_HOME")
    backend: Literal["local", "openai"] = Field(default="local", alias="SHOPSIGHT_BACKEND")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    openai_api_key: str | None = Field(default=None, alias="OPENAI_API_KEY")
    model: str | None = Field(default=None, alias="SHOPSIGHT_MODEL")
    gguf: Path | None = Field(default=None, alias="SHOPSIGHT_GGUF")
    threads: int = Field(default=2, ge=1, alias="SHOPSIGHT_THREADS")
    chroma_url: str | None = Field(default=None, alias="SHOPSIGHT_CHROMA_URL")
    raise_errors: bool = Field(default=False, alias="SHOPSIGHT_RAISE_ERRORS")
    timeout_s: float = Field(default=60.0, gt=0, alias="SHOPSIGHT_TIMEOUT_S")
    retries: int = Field(default=2, ge=0, alias="SHOPSIGHT_RETRIES")
    max_tokens: int = Field(default=120, ge=16, alias="SHOPSIGHT_MAX_TOKENS")
    n_ctx: int = Field(default=2048, ge=512, alias="SHOPSIGHT_N_CTX")
    planner: Literal["auto", "router", "native"] = Field(default="auto", alias="SHOPSIGHT_PLANNER")
    writer: Literal["auto", "local", "openai", "none"] = Field(default="auto", alias="SHOPSIGHT_WRITER")
    embed_precision: Literal["auto", "bf16", "fp32"] = Field(default="auto", alias="SHOPSIGHT_EMBED_PRECISION")
    mcp_token: str | None = Field(default=None, alias="SHOPSIGHT_MCP_TOKEN", repr=False)  # bearer token of `shopsight mcp --http`
    max_steps: int = Field(default=6, ge=2, description="Model turns allowed per question before the loop stops.")
    ingest_max_rows: int | None = Field(default=None, gt=0, alias="SHOPSIGHT_INGEST_MAX_ROWS")
    ingest_max_memory_mb: int | None = Field(default=None, gt=0, alias="SHOPSIGHT_INGEST_MAX_MEMORY_MB")
    ingest_max_text_chars: int | None = Field(default=None, gt=0, alias="SHOPSIGHT_INGEST_MAX_TEXT_CHARS")
    lock_timeout_s: float = Field(default=30.0, ge=0, alias="SHOPSIGHT_LOCK_TIMEOUT_S")

    def ingest_limits(self) -> Any:
        """The ingest bounds: the settings where given, else behavior.events.IngestLimits' defaults."""
        from shopsight.behavior.events import IngestLimits

        given = {"max_rows": self.ingest_max_rows, "max_memory_mb": self.ingest_max_memory_mb,
                 "max_text_chars": self.ingest_max_text_chars}
        return IngestLimits(**{k: v for k, v in given.items() if v is not None})

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """Read the environment, then apply ``overrides`` that are not None (CLI flags)."""
        given = {(cls.model_fields[k].alias or k): v for k, v in overrides.items() if v is not None}
        return cls(**given)  # validated: a bad flag fails like a bad env var

    @property
    def uses_router(self) -> bool:
        """Whether tools are chosen by the trained router (the local default) or by the LLM natively."""
        return self.planner == "router" or (self.planner == "auto" and self.backend == "local")

    @property
    def writer_name(self) -> str:
        """Who phrases answers: the setting, or the backend's own LLM."""
        return self.backend if self.writer == "auto" else self.writer

    @property
    def model_label(self) -> str:
        """The model name answers record: the hosted model id, or the GGUF file's name."""
        if self.backend == "openai":
            return self.model or "default"
        return (self.gguf.name if self.gguf else "SmolLM2-135M-Instruct.Q4_1.gguf")
