"""Task submission: validate the inputs, store them in the platform's layout, queue.

A submission is checked by the pipeline's own validators (``build_config``,
``normalize_peptide`` and ``check_receptor_input``) before anything is stored, so
invalid input gets a 422 with their message and no task is created. Its inputs go
to ``jobs/peptide_optimization/<task id>/`` exactly as the platform lays them out, and
the row is a plain ``INSERT`` with status ``pending``: workers cannot tell the two
kinds of task apart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg

from peptide_opt.api import queries
from peptide_opt.api.errors import ApiError
from peptide_opt.api.keys import Caller, utc_now
from peptide_opt.api.fields import SERVER_KEYS, USER_KEYS
from peptide_opt.config import JobConfig, build_config, parse_file_name
from peptide_opt.errors import InputError
from peptide_opt.pipeline.prepare import check_receptor_input, normalize_peptide
from peptide_opt.storage.base import ObjectNotFoundError, Storage
from peptide_opt.storage.keys import InvalidKeyError, job_prefix, validate_key

logger = logging.getLogger(__name__)

#: Platform keys that build_config accepts and ignores with a warning.
PLATFORM_IGNORED_KEYS = ("cores", "n_rosetta_runs")
PRIORITY_RANGE = (-1000, 1000)
#: Receptors up to this size (bytes) are stored from memory rather than re-read.
IN_MEMORY_RECEPTOR_BYTES = 8 * 1024 * 1024
MAX_PEPTIDE_TEXT = 10_000


@dataclasses.dataclass
class Submission:
    """A validated submission, ready to be stored and queued."""

    peptide: str
    receptor_name: str
    receptor_path: Path
    #: The receptor's bytes when the upload was small enough to keep in memory.
    receptor_bytes: bytes | None
    config: JobConfig
    config_keys: tuple[str, ...]
    priority: int
    warnings: list[str]


@dataclasses.dataclass(frozen=True)
class Limits:
    """The per-user submission limits of one API process."""

    max_pending_per_user: int
    submit_rate_per_minute: int


# -- validation ----------------------------------------------------------------------


def validate_config_fields(values: Mapping[str, Any]) -> tuple[JobConfig, list[str]]:
    """Validate config fields with :func:`build_config`; unknown fields are rejected.

    Returns the config and build_config's warnings (ignored platform keys).
    """
    for key in values:
        if key in SERVER_KEYS:
            raise InputError(
                f"field {key!r} is set by the server from the submitted files and may "
                "not be given"
            )
        if key not in USER_KEYS and key not in PLATFORM_IGNORED_KEYS:
            raise InputError(
                f"unknown field {key!r}; config fields are: {', '.join(USER_KEYS)}"
            )
    warnings: list[str] = []
    config = build_config(values, warnings)
    return config, warnings


def parse_priority(raw: Any) -> int:
    """Return the task's priority (higher runs first) after checking its range."""
    low, high = PRIORITY_RANGE
    if raw is None or (isinstance(raw, str) and raw.strip() == ""):
        return 0
    try:
        value = int(str(raw).strip()) if not isinstance(raw, int) else raw
    except ValueError:
        raise InputError(f"priority must be a whole number, got {raw!r}") from None
    if isinstance(raw, bool) or not low <= value <= high:
        raise InputError(f"priority must be between {low} and {high}, got {raw!r}")
    return value


def receptor_file_name(name: str | None) -> str:
    """Return the upload's plain file name, checked as ``receptor_pdb_filename``."""
    if not name:
        raise InputError("receptor: the upload has no file name")
    # Browsers on some systems send a full client path; only its last part is a name.
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return parse_file_name("receptor file name", base)


def normalize_peptide_text(text: str) -> str:
    """Return the one-letter peptide of a sequence or FASTA text."""
    if len(text) > MAX_PEPTIDE_TEXT:
        raise InputError(
            f"peptide text is {len(text)} characters, over the limit of "
            f"{MAX_PEPTIDE_TEXT}"
        )
    return normalize_peptide(text, "peptide")


async def check_receptor(path: Path, config: JobConfig) -> None:
    """Run the pipeline's receptor checks in a thread (they parse the structure)."""
    await asyncio.to_thread(check_receptor_input, path, config)


def uploads_prefix(caller: Caller) -> str:
    """Return the caller's folder for files named by JSON submissions."""
    return f"uploads/{caller.user_id}/"


def check_upload_key(caller: Caller, key: str, field: str) -> str:
    """Return a storage key after checking that it lies under the caller's uploads.

    A malformed key is an :class:`InputError`; another user's key is a 403.
    """
    try:
        key = validate_key(key, field)
    except InvalidKeyError as error:
        raise InputError(str(error)) from None
    if not key.startswith(uploads_prefix(caller)):
        raise ApiError(
            403,
            f"{field} {key!r} is outside your uploads folder {uploads_prefix(caller)}",
        )
    return key


# -- storing and queueing ------------------------------------------------------------


def config_text(submission: Submission, prefix: str) -> str:
    """Return optimization_config.txt: the caller's keys and the platform's file keys."""
    lines = ["# Written by the peptide-opt API"]
    values = submission.config.to_dict()
    for key in submission.config_keys:
        lines.append(f"{key}={_config_value_text(values[key])}")
    lines.append(f"peptide_sequence={submission.peptide}")
    lines.append(f"receptor_pdb_filename={submission.receptor_name}")
    lines.append(f"storage_prefix={prefix}")
    lines.append(f"receptor_storage_key={prefix}/input/{submission.receptor_name}")
    return "\n".join(lines) + "\n"


def _config_value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, list):
        # aa_bias is a list of (letter, weight) pairs; the others are flat lists.
        return ",".join(
            f"{item[0]}:{item[1]:g}" if isinstance(item, (list, tuple)) else f"{item}"
            for item in value
        )
    if isinstance(value, float):
        return repr(value)
    return str(value)


async def store_inputs(storage: Storage, submission: Submission, prefix: str) -> None:
    """Write the job's three inputs under ``prefix`` in the platform's layout.

    The writes run concurrently: no worker reads the prefix before the task row exists,
    and the row is inserted only after all three are stored.
    """
    receptor_key = f"{prefix}/input/{submission.receptor_name}"
    if submission.receptor_bytes is not None:
        receptor = storage.write_bytes(receptor_key, submission.receptor_bytes)
    else:
        receptor = storage.upload_file(submission.receptor_path, receptor_key)
    await asyncio.gather(
        receptor,
        storage.write_text(
            f"{prefix}/input/peptide.fasta", f">peptide\n{submission.peptide}\n"
        ),
        storage.write_text(
            f"{prefix}/optimization_config.txt", config_text(submission, prefix)
        ),
    )


async def check_rate(pool: asyncpg.Pool, caller: Caller, limits: Limits) -> None:
    """Count the submission in this minute's window; raise 429 over the limit.

    The counter row lives in the database, so every API process shares it.
    """
    if limits.submit_rate_per_minute <= 0:
        return
    now = utc_now()
    window = now.replace(second=0, microsecond=0)
    count = await pool.fetchval(
        queries.COUNT_SUBMISSION, caller.user_id, window, limits.submit_rate_per_minute
    )
    if count is None:
        retry_after = 60 - now.second
        raise ApiError(
            429,
            f"submission rate limit reached: {limits.submit_rate_per_minute} per minute "
            f"(SUBMIT_RATE_PER_MINUTE); retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


async def check_pending(
    connection: asyncpg.Connection | asyncpg.Pool, caller: Caller, limits: Limits
) -> None:
    """Raise 429 when the caller already has the maximum of pending tasks."""
    pending = await connection.fetchval(
        queries.COUNT_PENDING, caller.user_id, queries.TASK_TYPE
    )
    if pending >= limits.max_pending_per_user:
        raise ApiError(
            429,
            f"you have {pending} pending tasks, the limit is "
            f"{limits.max_pending_per_user} (MAX_PENDING_PER_USER); wait for some to "
            "start or cancel them",
        )


async def queue_submission(
    pool: asyncpg.Pool,
    storage: Storage,
    caller: Caller,
    submission: Submission,
    limits: Limits,
) -> asyncpg.Record:
    """Store the inputs and insert the task row; return the row."""
    started = time.perf_counter()
    await check_rate(pool, caller, limits)
    # A first check without the lock refuses early, before anything is stored.
    await check_pending(pool, caller, limits)

    task_id = str(uuid.uuid4())
    prefix = job_prefix(task_id)
    try:
        await store_inputs(storage, submission, prefix)
        async with pool.acquire() as connection, connection.transaction():
            # The per-user lock makes the count and the insert one step for every
            # API process, so the pending limit holds under concurrent submissions.
            await connection.execute(queries.LOCK_USER_SUBMISSIONS, caller.user_id)
            await check_pending(connection, caller, limits)
            now = utc_now()
            row = await connection.fetchrow(
                queries.INSERT_TASK,
                task_id,
                caller.user_id,
                queries.TASK_TYPE,
                prefix,
                now,
                submission.priority,
            )
    except BaseException:
        await _discard_inputs(storage, prefix)
        raise

    logger.info(
        "task_submitted: task %s by user %s queued in %.3f s",
        task_id,
        caller.user_id,
        time.perf_counter() - started,
        extra={
            "event": "task_submitted",
            "task_id": task_id,
            "user_id": caller.user_id,
            "duration_s": time.perf_counter() - started,
        },
    )
    return row


async def send_to_celery(pool: asyncpg.Pool, broker_url: str, task_id: str) -> None:
    """Send a new task's id to Celery (EXECUTOR=celery) unless the dispatcher did.

    A broker error is logged, not raised: the task is stored and pending, and the
    dispatcher's next sweep sends it.
    """
    # Imported here: only Celery mode pays for importing Celery.
    from kombu.exceptions import KombuError

    from peptide_opt.worker.celery_app import app_for, send_task_ids

    if await pool.fetchval(queries.MARK_CELERY_SEND, task_id) is None:
        return
    try:
        await asyncio.to_thread(send_task_ids, app_for(broker_url), [task_id])
    except KombuError as error:
        await pool.execute(queries.UNMARK_CELERY_SEND, task_id)
        logger.warning(
            "celery_send_failed: task %s left to the dispatcher: %s",
            task_id,
            error,
            extra={"event": "celery_send_failed", "task_id": task_id},
        )


async def _discard_inputs(storage: Storage, prefix: str) -> None:
    try:
        await asyncio.shield(storage.delete_prefix(prefix))
    except Exception as error:  # noqa: BLE001 - the original error is what matters
        logger.warning(
            "submission_cleanup_failed: could not delete %s: %s",
            prefix,
            error,
            extra={"event": "submission_cleanup_failed", "prefix": prefix},
        )


async def fetch_upload(
    storage: Storage, key: str, destination: Path, field: str, max_bytes: int
) -> Path:
    """Download an uploaded file for validation.

    A missing key, or an object over ``max_bytes``, is an :class:`InputError`.
    """
    try:
        size = await storage.size(key)
        if size > max_bytes:
            raise InputError(
                f"{field} {key!r} is {size} bytes, over the limit of {max_bytes} bytes"
            )
        return await storage.download_file(key, destination)
    except ObjectNotFoundError:
        raise InputError(f"{field} {key!r} not found in storage") from None


def temporary_folder() -> tempfile.TemporaryDirectory:
    """Return a folder for one submission's files, removed when the request ends."""
    return tempfile.TemporaryDirectory(prefix="peptide-opt-submit-")
