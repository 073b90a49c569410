"""One settings object for every genq process, read from ``GENQ_*`` variables and ``.env``.

Build it once at start with :func:`load_settings` and pass it explicitly; nothing reads the
environment after that.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.errors import ConfigError

ENV_PREFIX = "GENQ_"
SEVEN_DAYS_S = 7 * 24 * 3600
ONE_GIB = 1024**3
MIN_ADMIN_TOKEN_CHARS = 32
# GENQ_ADMIN_TOKEN's name in the audit log, and what an admin's name may be made of.
DEFAULT_ADMIN_NAME = "admin"
ADMIN_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
RANDOM_STRING_COMMAND = 'python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
# Output types genq can measure and make variants of (Pillow reads the images, PyAV the
# videos): the only ones GENQ_OUTPUT_ALLOWED_TYPES may list. HEIC/HEIF are recognised and
# always refused.
ALLOWABLE_OUTPUT_TYPES = frozenset({
    "image/jpeg", "image/png", "image/webp", "image/gif", "image/avif",
    "video/mp4", "video/webm", "video/quicktime", "video/x-matroska",
})
DEFAULT_OUTPUT_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/avif",
                        "video/mp4", "video/webm")


class Settings(BaseSettings):
    """Every tunable of genq. Field ``foo_bar`` is read from ``GENQ_FOO_BAR``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # Services. Unset means: start the embedded server under data_dir.
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".genq")
    storage_dir: Path | None = None
    # Where asset bytes live: file:///path (the local folder) or s3://bucket/prefix.
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    db_pool_min_size: int = Field(default=2, ge=1, le=100)
    db_pool_max_size: int = Field(default=10, ge=1, le=500)

    # HTTP intake.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    admin_token: SecretStr | None = None
    # More admins, each named (the audit log says who acted): "name:token,name2:token2".
    admin_tokens: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    # A revoked key or disabled user is dropped from every API process's cache at once (Redis
    # pub/sub); the TTL bounds how long an entry lives when a message is lost.
    api_key_cache_ttl_s: float = Field(default=30.0, ge=0, le=300)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_prompt_chars: int = Field(default=4000, ge=1)
    max_params_bytes: int = Field(default=8 * 1024, ge=2)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)
    # Submissions one user may make per minute (0: no limit); a plan may set its own.
    # Jobs one user may have dispatched to the workers at once (0: no cap); the rest wait.
    user_max_running: int = Field(default=0, ge=0, le=1_000_000)
    user_submits_per_minute: int = Field(default=0, ge=0, le=1_000_000)
    # The HTTP server, before any request reaches the app: the request line and headers together,
    # how many header lines, how long the head and then the body may take to arrive, how long an
    # idle keep-alive connection stays open, and how many connections are served at once.
    http_max_header_bytes: int = Field(default=32 * 1024, ge=1024, le=1024 * 1024)
    http_max_headers: int = Field(default=100, ge=8, le=1000)
    http_header_timeout_s: float = Field(default=10.0, gt=0, le=600)
    http_body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    http_keepalive_timeout_s: float = Field(default=5.0, gt=0, le=600)
    http_max_connections: int = Field(default=1000, ge=1, le=100_000)

    # Catalog.
    models_file: Path | None = None
    # Plans, merged over the built-in ones (shared/plans.toml).
    plans_file: Path | None = None

    # Queue and worker.
    queue_name: str = Field(default="genq:queue", min_length=1)
    max_jobs: int = Field(default=100, ge=1, le=10_000)
    poll_delay_s: float = Field(default=0.05, gt=0, le=10)
    lease_s: float = Field(default=60.0, gt=0)
    heartbeat_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=100)
    provider_max_attempts: int = Field(default=5, ge=1, le=100)
    provider_backoff_base_s: float = Field(default=0.5, ge=0)
    provider_backoff_max_s: float = Field(default=30.0, ge=0)
    provider_poll_interval_s: float = Field(default=0.5, gt=0)
    provider_poll_max_interval_s: float = Field(default=5.0, gt=0)
    # Polls of running predictions one worker has in flight at once, per provider.
    provider_poll_concurrency: int = Field(default=8, ge=1, le=1000)
    # Connections one worker keeps open to one provider's API.
    provider_max_connections: int = Field(default=16, ge=1, le=10_000)
    reservation_ttl_s: int = Field(default=6 * 3600, ge=60)
    # How long a stopping worker lets running jobs finish before handing them back.
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # Added to the largest model timeout (plus download_timeout_s) for arq's per-job timeout.
    job_timeout_margin_s: float = Field(default=30.0, ge=0)
    # How often a worker looks for running jobs whose lease expired (a dead worker's jobs).
    lease_recovery_interval_s: float = Field(default=30.0, gt=0)
    # One HTTP call to a provider (create, get, cancel); retried as a transient error.
    provider_request_timeout_s: float = Field(default=30.0, gt=0)

    # Providers.
    replicate_api_token: SecretStr | None = None
    replicate_base_url: str = "https://api.replicate.com/v1"
    fal_key: SecretStr | None = None
    fal_queue_url: str = "https://queue.fal.run"
    local_latency_s: float = Field(default=0.0, ge=0)
    local_failure_rate: float = Field(default=0.0, ge=0, le=1)

    # Workspace assets.
    workspace_ttl_s: int = Field(default=SEVEN_DAYS_S, ge=1)
    output_max_bytes: int = Field(default=ONE_GIB, ge=1)
    output_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    download_timeout_s: float = Field(default=300.0, gt=0)
    # Output downloads one worker has in flight at once, and the connections it keeps open
    # for them.
    download_max_connections: int = Field(default=32, ge=1, le=10_000)
    output_allowed_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_OUTPUT_TYPES))
    # Decompression-bomb limits, checked from headers before anything is decoded.
    media_max_pixels: int = Field(default=50_000_000, ge=1)
    media_max_duration_s: float = Field(default=600.0, gt=0)
    # Thumbnails, web-size copies and video posters, made by the worker after staging.
    variants_enabled: bool = True
    media_threads: int = Field(default=2, ge=1, le=64)
    # content_url: how long a signed URL works, the key of the local folder's URLs (generated
    # under data_dir when unset), and a CDN base for public items.
    url_ttl_s: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    url_signing_key: SecretStr | None = None
    public_base_url: str | None = None
    # Origins a browser may call the API from (CORS); empty: no CORS headers.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # End-user sign-in: `Authorization: Bearer <JWT>` from the product's identity provider,
    # verified with the provider's JWKS (RS256/ES256) and/or a shared HS256 secret; off when
    # neither is set. Issuer and audience are required when it is on.
    jwt_jwks_url: str | None = None
    jwt_secret: SecretStr | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_s: int = Field(default=30, ge=0, le=300)
    jwt_jwks_cache_s: int = Field(default=600, ge=1, le=7 * 24 * 3600)
    jwt_jwks_refetch_s: float = Field(default=30.0, ge=0, le=3600)
    # Credits granted once to each user created on first sight of a new identity.
    new_user_credits: int = Field(default=0, ge=0, le=2**62)
    # The library: bytes a user's saved items may take (per-user override in library_usage),
    # and how long a deleted item stays restorable before the scheduler purges it.
    library_quota_bytes: int = Field(default=10 * ONE_GIB, ge=0)
    trash_ttl_s: int = Field(default=30 * 24 * 3600, ge=1)

    # Live events (GET /v1/events, GET /v1/jobs/{id}/events).
    events_heartbeat_s: float = Field(default=15.0, gt=0, le=3600)
    events_retention_s: int = Field(default=24 * 3600, ge=60)
    events_max_stream_s: float = Field(default=3600.0, gt=0)

    # Webhooks: hosts a webhook URL may name even when they resolve to a private or loopback
    # address; one POST's time limit; how many POSTs one delivery loop (one per scheduler) has
    # in flight, in all and per receiver (host and port); how often the loop looks for due
    # deliveries (sooner once half of a limit that held a claim back is free); how long a rotated
    # secret keeps signing beside the new one.
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300)
    webhook_concurrency: int = Field(default=64, ge=1, le=10_000)
    webhook_per_receiver: int = Field(default=16, ge=1, le=1000)
    webhook_poll_s: float = Field(default=0.2, gt=0, le=60)
    webhook_secret_overlap_s: int = Field(default=24 * 3600, ge=0, le=30 * 24 * 3600)

    # Maintenance.
    cleanup_batch_size: int = Field(default=500, ge=1, le=100_000)
    requeue_after_s: float = Field(default=60.0, ge=0)
    sweep_interval_s: int = Field(default=60, ge=1, le=3600)
    # How often the scheduler enqueues jobs the intake could not enqueue (Redis was down).
    enqueue_sweep_interval_s: int = Field(default=2, ge=1, le=60)
    job_retention_s: int = Field(default=30 * 24 * 3600, ge=3600)
    job_retention_action: Literal["archive", "delete"] = "archive"
    # Seconds added to the clock by which the scheduler's plan grants tell the current period
    # (to rehearse a day's or a month's change on a staging system; 0 in production).
    plan_clock_offset_s: int = Field(default=0, ge=-10 * 366 * 24 * 3600,
                                     le=10 * 366 * 24 * 3600)

    # Prometheus metrics of `genq worker` and `genq scheduler` (unset: not served); the API
    # serves GET /metrics on its own port, to the admin token.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # Logging.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("output_allowed_hosts", "webhook_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [h.strip().lower() for h in value.split(",") if h.strip()]
        return value

    @field_validator("output_allowed_types", mode="before")
    @classmethod
    def _split_types(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip().lower() for t in value.split(",") if t.strip()]
        return value

    @field_validator("output_allowed_types")
    @classmethod
    def _check_types(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in ALLOWABLE_OUTPUT_TYPES]
        if unknown:
            raise ValueError(
                f"unsupported type(s) {', '.join(unknown)}; choose from "
                + ", ".join(sorted(ALLOWABLE_OUTPUT_TYPES))
            )
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("storage_url", "s3_endpoint_url", "s3_region", "public_base_url",
                     "url_signing_key", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith("file:///") or (value.startswith("s3://") and len(value) > 5
                                             and not value[5:].startswith("/")):
            return value
        raise ValueError("must be file:///path or s3://bucket/prefix")

    @field_validator("s3_endpoint_url", "public_base_url")
    @classmethod
    def _check_http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value is not None else None

    @field_validator("url_signing_key")
    @classmethod
    def _check_signing_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (openssl rand -hex 32)")
        return value

    @field_validator("sweep_interval_s")
    @classmethod
    def _check_sweep_interval(cls, value: int) -> int:
        # The scheduler runs on arq cron ticks aligned to the minute or the hour.
        if (value <= 60 and 60 % value == 0) or (value % 60 == 0 and 60 % (value // 60) == 0):
            return value
        raise ValueError(
            "must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60) or be whole minutes "
            "dividing an hour (120, 180, 240, 300, 360, 600, 900, 1200, 1800, 3600)"
        )

    @field_validator("enqueue_sweep_interval_s")
    @classmethod
    def _check_enqueue_sweep_interval(cls, value: int) -> int:
        if 60 % value == 0:
            return value
        raise ValueError("must divide 60 (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)")

    @field_validator("admin_token", mode="before")
    @classmethod
    def _blank_token_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"must be at least {MIN_ADMIN_TOKEN_CHARS} characters; make one with "
                f"{RANDOM_STRING_COMMAND}"
            )
        return value

    @field_validator("admin_tokens", mode="before")
    @classmethod
    def _split_admin_tokens(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        tokens: dict[str, str] = {}
        for entry in (e.strip() for e in value.split(",")):
            if not entry:
                continue
            name, sep, token = entry.partition(":")
            name = name.strip()
            if not sep or not ADMIN_NAME.fullmatch(name):
                raise ValueError("each entry is name:token, the name 1-64 of A-Z a-z 0-9 . _ -")
            if name in tokens:
                raise ValueError(f"the name {name!r} is given twice")
            tokens[name] = token.strip()
        return tokens

    @field_validator("admin_tokens")
    @classmethod
    def _check_admin_tokens(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, token in value.items():
            if len(token.get_secret_value()) < MIN_ADMIN_TOKEN_CHARS:
                raise ValueError(
                    f"the token of {name!r} must be at least {MIN_ADMIN_TOKEN_CHARS} "
                    f"characters; make one with {RANDOM_STRING_COMMAND}")
        return value

    @model_validator(mode="after")
    def _check_admins(self) -> Settings:
        secrets_seen = [token.get_secret_value() for _, token in self.admins]
        if len(set(secrets_seen)) != len(secrets_seen):
            raise ValueError("two admins have the same token (GENQ_ADMIN_TOKEN, "
                             "GENQ_ADMIN_TOKENS): give each its own")
        names = [name for name, _ in self.admins]
        if len(set(names)) != len(names):
            raise ValueError(f"GENQ_ADMIN_TOKENS names {DEFAULT_ADMIN_NAME!r}, the name of "
                             "GENQ_ADMIN_TOKEN: choose another")
        return self

    @property
    def admins(self) -> list[tuple[str, SecretStr]]:
        """Every admin token with its name: GENQ_ADMIN_TOKEN is ``admin``, then each of
        GENQ_ADMIN_TOKENS."""
        named = [(DEFAULT_ADMIN_NAME, self.admin_token)] if self.admin_token is not None else []
        return named + list(self.admin_tokens.items())

    @field_validator("jwt_jwks_url", "jwt_secret", "jwt_issuer", "jwt_audience", mode="before")
    @classmethod
    def _blank_jwt_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("jwt_jwks_url")
    @classmethod
    def _check_jwks_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _check_jwt_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (HS256 needs a 256-bit secret)")
        return value

    @model_validator(mode="after")
    def _check_jwt(self) -> Settings:
        if (self.jwt_jwks_url or self.jwt_secret) and not (self.jwt_issuer and self.jwt_audience):
            raise ValueError("GENQ_JWT_ISSUER and GENQ_JWT_AUDIENCE are required when "
                             "GENQ_JWT_JWKS_URL or GENQ_JWT_SECRET is set")
        return self

    @property
    def jwt_enabled(self) -> bool:
        """Whether user JWTs are accepted beside API keys."""
        return self.jwt_jwks_url is not None or self.jwt_secret is not None

    @field_validator("database_url", "redis_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgres://", "postgresql://")):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value

    @property
    def storage_root(self) -> Path:
        """Where workspace asset files live."""
        return self.storage_dir if self.storage_dir is not None else self.data_dir / "storage"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment and ``.env``; fail with the variable's name."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "?"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}" if err["loc"]
                            else err["msg"].removeprefix("Value error, "))
        raise ConfigError("invalid settings: " + "; ".join(problems)) from exc
