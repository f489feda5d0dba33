"""Process settings read from the environment (the names every process shares)."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from urllib.parse import quote

from peptide_opt.errors import InputError

_SIZE_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(name: str, text: str) -> int:
    """Return a size such as ``8G`` or ``512M`` in bytes."""
    match = _SIZE_PATTERN.match(text)
    if not match:
        raise InputError(f"{name} must be a size such as 512M or 8G, got {text!r}")
    return int(float(match.group(1)) * _SIZE_FACTORS[match.group(2).upper()])


def available_cores() -> int:
    """Return the cores this process may use: the CPU affinity, capped by a cgroup quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:
            quota, period = handle.read().split()
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The environment of one process, with the documented defaults."""

    database_url: str
    storage_backend: str = "local"
    storage_local_root: str = "./storage"
    seaweed_filer_endpoint: str = "http://127.0.0.1:8888"
    seaweed_bucket: str = "astramolecula"
    s3_endpoint: str = "http://127.0.0.1:8333"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    poll_interval_s: float = 30.0
    lease_seconds: float = 60.0
    max_attempts: int = 3
    max_workers: int = 1
    worker_cores: int = 1
    task_memory_limit_bytes: int = 8 * 1024**3
    task_timeout_s: float = 7200.0
    shutdown_grace_s: float = 600.0
    max_tasks_per_user: int | None = None
    executor: str = "postgres"
    celery_broker_url: str = "redis://127.0.0.1:6379/0"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    cors_origins: tuple[str, ...] = ()
    max_upload_mb: int = 50
    max_pending_per_user: int = 100
    submit_rate_per_minute: int = 30
    retention_days: float | None = None
    client_url: str = "http://127.0.0.1:8000"
    client_key: str | None = None
    log_level: str = "INFO"
    log_format: str = "text"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from ``environ`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ

        def text(name: str, default: str) -> str:
            value = env.get(name, "")
            return value if value != "" else default

        def number(name: str, default: float, low: float = 0.0) -> float:
            raw = text(name, "")
            if raw == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                raise InputError(f"{name} must be a number, got {raw!r}") from None
            if value < low:
                raise InputError(f"{name} must be at least {low:g}, got {raw}")
            return value

        def optional(name: str) -> float | None:
            return number(name, 0.0) if text(name, "") else None

        backend = text("STORAGE_BACKEND", "local").lower()
        if backend not in ("local", "filer", "s3"):
            raise InputError(
                f"STORAGE_BACKEND must be local, filer or s3, got {backend!r}"
            )
        executor = text("EXECUTOR", "postgres").lower()
        if executor not in ("postgres", "celery"):
            raise InputError(f"EXECUTOR must be postgres or celery, got {executor!r}")
        log_format = text("LOG_FORMAT", "text").lower()
        if log_format not in ("text", "json"):
            raise InputError(f"LOG_FORMAT must be text or json, got {log_format!r}")
        cap = optional("MAX_TASKS_PER_USER")
        origins = tuple(
            origin.strip() for origin in text("CORS_ORIGINS", "").split(",") if origin.strip()
        )
        return cls(
            database_url=database_url_from_env(env),
            storage_backend=backend,
            storage_local_root=text("STORAGE_LOCAL_ROOT", "./storage"),
            seaweed_filer_endpoint=text("SEAWEED_FILER_ENDPOINT", "http://127.0.0.1:8888"),
            seaweed_bucket=text("SEAWEED_BUCKET", "astramolecula"),
            s3_endpoint=text("S3_ENDPOINT", "http://127.0.0.1:8333"),
            s3_access_key=text("S3_ACCESS_KEY", ""),
            s3_secret_key=text("S3_SECRET_KEY", ""),
            poll_interval_s=number("POLL_INTERVAL", 30.0, 0.01),
            lease_seconds=number("LEASE_SECONDS", 60.0, 1.0),
            max_attempts=int(number("MAX_ATTEMPTS", 3, 1)),
            max_workers=int(number("MAX_WORKERS", 1, 1)),
            worker_cores=int(number("WORKER_CORES", available_cores(), 1)),
            task_memory_limit_bytes=parse_size(
                "TASK_MEMORY_LIMIT", text("TASK_MEMORY_LIMIT", "8G")
            ),
            task_timeout_s=number("TASK_TIMEOUT", 7200.0, 1.0),
            shutdown_grace_s=number("SHUTDOWN_GRACE", 600.0, 0.0),
            max_tasks_per_user=int(cap) if cap else None,
            executor=executor,
            celery_broker_url=text("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
            api_host=text("API_HOST", "127.0.0.1"),
            api_port=int(number("API_PORT", 8000, 0)),
            cors_origins=origins,
            max_upload_mb=int(number("MAX_UPLOAD_MB", 50, 1)),
            max_pending_per_user=int(number("MAX_PENDING_PER_USER", 100, 1)),
            submit_rate_per_minute=int(number("SUBMIT_RATE_PER_MINUTE", 30, 0)),
            retention_days=optional("RETENTION_DAYS"),
            client_url=text("PEPTIDE_OPT_URL", "http://127.0.0.1:8000"),
            client_key=env.get("PEPTIDE_OPT_KEY") or None,
            log_level=text("LOG_LEVEL", "INFO").upper(),
            log_format=log_format,
        )


def database_url_from_env(env: Mapping[str, str]) -> str:
    """Return ``DATABASE_URL``, or a URL built from the ``DB_*`` variables."""
    if env.get("DATABASE_URL"):
        return env["DATABASE_URL"]
    user = quote(env.get("DB_USER") or "postgres", safe="")
    password = env.get("DB_PASSWORD") or ""
    credentials = f"{user}:{quote(password, safe='')}" if password else user
    host = env.get("DB_HOST") or "127.0.0.1"
    port = env.get("DB_PORT") or "5432"
    name = quote(env.get("DB_NAME") or "peptide_opt", safe="")
    return f"postgresql://{credentials}@{host}:{port}/{name}"
