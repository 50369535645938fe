"""Service settings, read once per process from ``BNN_TUNE_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service import limits

__all__ = ["Settings", "get_settings", "normalize_database_url", "redact_url"]


def normalize_database_url(url: str) -> str:
    """Rewrite ``postgres://`` and ``postgresql://`` to the psycopg 3 driver URL."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def redact_url(url: str) -> str:
    """``url`` with its password shown as ``***`` (``postgresql+psycopg://user:***@host/db``):
    the one form in which a database URL is printed or logged. Everything between ``user:``
    and the last ``@`` is hidden, so an unescaped ``@`` in a password does not leak its tail."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    user, colon, _ = credentials.partition(":")
    if not sep or not at or not colon or "/" in user:  # no password, or '@' inside a path
        return url
    return f"{scheme}{sep}{user}:***@{host}"


class Settings(BaseSettings):
    """Typed settings; every field can be set as ``BNN_TUNE_<FIELD>`` (e.g. BNN_TUNE_API_KEY)."""

    model_config = SettingsConfigDict(env_prefix="BNN_TUNE_", extra="ignore")

    database_url: str = Field(
        "sqlite:///./bnn_tune.db",
        description="SQLAlchemy URL of the one database holding our tables and Optuna's.",
    )
    api_key: str | None = Field(
        None, description="When set, every /api/v1 route requires the header X-API-Key."
    )
    # The operator's limits on what a spec may ask for; each is at most the hard ceiling of
    # service.limits that the OpenAPI schema shows.
    max_trials: int = Field(
        1000, ge=1, le=limits.MAX_N_TRIALS, description="Upper bound for a study's n_trials."
    )
    max_epochs: int = Field(
        1000, ge=1, le=limits.MAX_EPOCHS, description="Upper bound for a study's epochs."
    )
    max_batch_size: int = Field(
        65536, ge=1, le=limits.MAX_BATCH_SIZE, description="Upper bound for a study's batch_size."
    )
    max_trials_per_gpu: int | None = Field(
        None,
        ge=1,
        le=limits.MAX_TRIALS_PER_GPU,
        description="Upper bound for a study's trials_per_gpu (None: the ceiling "
        f"{limits.MAX_TRIALS_PER_GPU}).",
    )
    max_request_bytes: int = Field(
        1 << 20,
        ge=1024,
        le=limits.MAX_REQUEST_BYTES,
        description="Largest request body the API reads; larger ones get 413 before parsing.",
    )
    heartbeat_interval_s: int = Field(10, ge=1, description="Worker heartbeat period.")
    grace_period_s: int = Field(30, ge=1, description="A RUNNING trial older than this is stale.")
    max_retries: int = Field(
        2, ge=0, le=limits.MAX_RETRIES, description="Default retries of a stale/failed trial."
    )
    reaper_interval_s: float = Field(
        5.0,
        ge=0,
        description="The API fails stale trials (dead workers) of running studies and finishes "
        "stopping studies this often; 0 turns the reaper off.",
    )

    @field_validator("database_url")
    @classmethod
    def _normalize_url(cls, value: str) -> str:
        return normalize_database_url(value)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own ``Settings(...)``)."""
    return Settings()
