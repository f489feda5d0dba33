"""Object keys: validation, joining, and the platform's job prefixes.

A key is a relative, slash-separated path such as
``jobs/peptide_optimization/<job id>/input/peptide.fasta``. Every backend stores it at
the same place (a file under the bucket folder, a Filer path under
``/buckets/<bucket>/``, an S3 key), so the rules here keep a key from leaving its bucket
on any of them.
"""

from __future__ import annotations

import re

from peptide_opt.errors import InputError, StorageError

#: The folder of every peptide optimization job, as the platform lays it out.
JOB_ROOT = "jobs/peptide_optimization"

#: S3 limits keys to 1024 bytes of UTF-8.
MAX_KEY_BYTES = 1024

_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class InvalidKeyError(StorageError, InputError):
    """A storage key or key part that could leave its bucket or is malformed.

    It is both a :class:`StorageError` and an :class:`InputError`, so that the command
    line exits with 2: the key came from input.
    """


def validate_key(key: str, label: str = "storage key") -> str:
    """Return ``key`` if it is a safe relative key, else raise :class:`InvalidKeyError`.

    ``label`` names the key in messages.

    Rejected: empty keys, absolute paths, backslashes, control characters, empty
    segments (``a//b``, a trailing ``/``), ``.`` and ``..`` segments, and keys over
    1024 bytes.
    """
    if not isinstance(key, str) or key == "":
        raise InvalidKeyError(f"{label} must be a non-empty text, got {key!r}")
    if key.startswith("/"):
        raise InvalidKeyError(
            f"{label} must be relative, got the absolute path {key!r}"
        )
    if "\\" in key:
        raise InvalidKeyError(f"{label} must not contain a backslash, got {key!r}")
    if _CONTROL_CHARACTERS.search(key):
        raise InvalidKeyError(
            f"{label} must not contain control characters, got {key!r}"
        )
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKeyError(
                f"{label} must not contain empty segments, got {key!r}"
            )
        if segment in (".", ".."):
            raise InvalidKeyError(
                f"{label} must not contain '.' or '..' segments, got {key!r}"
            )
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKeyError(
            f"{label} must be at most {MAX_KEY_BYTES} bytes, got "
            f"{len(key.encode('utf-8'))} bytes: {key[:80]!r}..."
        )
    return key


def join_key(*parts: str) -> str:
    """Join key parts with ``/`` and validate the result (each part may hold ``/``)."""
    key = "/".join(parts)
    return validate_key(key)


def validate_bucket(bucket: str) -> str:
    """Return ``bucket`` if it is a valid S3 bucket name; raise InputError if not.

    Valid: 3-63 lowercase letters, digits, ``.`` and ``-``, starting and ending with a
    letter or digit.
    """
    if not _BUCKET_PATTERN.match(bucket or "") or ".." in bucket:
        raise InputError(
            "SEAWEED_BUCKET must be 3-63 lowercase letters, digits, '.' or '-', "
            f"starting and ending with a letter or digit, got {bucket!r}"
        )
    return bucket


def job_prefix(job_id: str) -> str:
    """Return the platform's prefix ``jobs/peptide_optimization/<job id>``."""
    if not _JOB_ID_PATTERN.match(job_id or ""):
        raise InvalidKeyError(
            "job id must be 1-128 letters, digits, '.', '_' or '-' starting with a "
            f"letter or digit, got {job_id!r}"
        )
    if ".." in job_id:
        raise InvalidKeyError(f"job id must not contain '..', got {job_id!r}")
    return f"{JOB_ROOT}/{job_id}"


def resolve_job_prefix(job_dir: str) -> str:
    """Return the storage prefix of a task's ``job_dir``.

    ``job_dir`` is either the prefix itself (``jobs/peptide_optimization/<id>``) or an
    old local path that ends in it
    (``/tmp/astramolecula/jobs/peptide_optimization/<id>``). The prefix is the last
    three path segments, and the first of them must be ``jobs``. A trailing ``/`` is
    ignored.
    """
    if not isinstance(job_dir, str) or job_dir.strip() == "":
        raise InvalidKeyError(f"job_dir must be a non-empty path, got {job_dir!r}")
    if "\\" in job_dir or _CONTROL_CHARACTERS.search(job_dir):
        raise InvalidKeyError(
            f"job_dir must not contain backslashes or control characters, got "
            f"{job_dir!r}"
        )
    segments = job_dir.strip().rstrip("/").split("/")
    if len(segments) < 3 or segments[-3] != "jobs":
        raise InvalidKeyError(
            "job_dir must end in jobs/<task type>/<job id>, such as "
            f"jobs/peptide_optimization/<id>, got {job_dir!r}"
        )
    task_type, job_id = segments[-2], segments[-1]
    if (
        not _JOB_ID_PATTERN.match(task_type)
        or not _JOB_ID_PATTERN.match(job_id)
        or (".." in task_type or ".." in job_id)
    ):
        raise InvalidKeyError(
            "job_dir must end in jobs/<task type>/<job id> where both are letters, "
            f"digits, '.', '_' or '-', got {job_dir!r}"
        )
    return validate_key(f"jobs/{task_type}/{job_id}", "job prefix")
