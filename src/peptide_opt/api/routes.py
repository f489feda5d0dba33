"""The ``/v1`` routes: submit, list, read, cancel and delete tasks, and their results.

Every route is scoped to the caller: another user's task is reported as not found, so
its existence does not leak, unless the caller's key is an admin key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as FastApiPath
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from peptide_opt.api import queries, submit
from peptide_opt.api.auth import CallerDependency
from peptide_opt.api.errors import ApiError
from peptide_opt.api.keys import Caller, utc_now
from peptide_opt.api.limits import BodyTooLarge
from peptide_opt.api.models import (
    ErrorBody,
    Me,
    Status,
    StoredSubmission,
    SubmittedTask,
    Task,
    TaskPage,
    Upload,
)
from peptide_opt.errors import InputError
from peptide_opt.pipeline import STEPS
from peptide_opt.storage.base import ObjectNotFoundError, Storage
from peptide_opt.storage.keys import resolve_job_prefix

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")

TASK_ID_MAX_LENGTH = 36
FILE_NAME_MAX_LENGTH = 255
MAX_FORM_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024
#: result.json and manifest.json are read into memory; larger ones are refused.
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024
TERMINAL_STATUSES = ("finished", "failed", "cancelled")

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing, invalid, revoked or expired key"},
    404: {"model": ErrorBody, "description": "no such task for this caller"},
}
TaskId = Annotated[str, FastApiPath(description="the task's id (a UUID)")]

#: OpenAPI links from a new task to the routes that take its id.
_TASK_LINKS = {
    name: {"operationId": operation, "parameters": {"task_id": "$response.body#/id"}}
    for name, operation in (
        ("ReadTask", "readTask"),
        ("ReadResult", "readResult"),
        ("CancelTask", "cancelTask"),
        ("DeleteTask", "deleteTask"),
    )
}

_SUBMIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["receptor", "peptide"],
                    "properties": {
                        "receptor": {
                            "type": "string",
                            "format": "binary",
                            "description": "receptor structure, PDB or mmCIF",
                        },
                        "peptide": {
                            "type": "string",
                            "description": "peptide sequence or FASTA text",
                        },
                        "priority": {"type": "integer"},
                        **{
                            key: {"type": "string", "description": f"config key {key}"}
                            for key in submit.USER_KEYS
                        },
                    },
                }
            },
            "application/json": {"schema": StoredSubmission.model_json_schema()},
        },
    }
}


# -- the caller ----------------------------------------------------------------------


@router.get(
    "/me", response_model=Me, responses=ERRORS, tags=["users"], operation_id="readMe"
)
async def read_me(caller: CallerDependency) -> Me:
    """Return the user behind the request's key."""
    return Me(user_id=caller.user_id, username=caller.username, is_admin=caller.is_admin)


# -- submit --------------------------------------------------------------------------


@router.post(
    "/tasks",
    status_code=201,
    response_model=SubmittedTask,
    responses={
        **ERRORS,
        201: {"links": _TASK_LINKS},
        403: {"model": ErrorBody, "description": "a storage key outside your uploads"},
        413: {"model": ErrorBody, "description": "upload over MAX_UPLOAD_MB"},
        415: {"model": ErrorBody, "description": "body neither multipart nor JSON"},
        422: {"model": ErrorBody, "description": "invalid peptide, receptor or config"},
        429: {"model": ErrorBody, "description": "pending-task or rate limit reached"},
    },
    openapi_extra=_SUBMIT_BODY,
    tags=["tasks"],
    operation_id="submitTask",
)
async def submit_task(
    request: Request, response: Response, caller: CallerDependency
) -> SubmittedTask:
    """Queue a task: upload the receptor (multipart) or name files under your uploads.

    The multipart form takes a ``receptor`` file, a ``peptide`` field and optional
    fields named as the config keys, plus ``priority``. The JSON form names a receptor
    (and optionally a FASTA file) already stored under ``uploads/<user id>/``.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    with submit.temporary_folder() as folder:
        # A urlencoded form cannot carry the receptor file, but parsing it lets the
        # error name what is missing.
        if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
            submission = await _read_multipart(request, Path(folder))
        elif content_type == "application/json":
            submission = await _read_json(request, caller, Path(folder))
        else:
            raise ApiError(
                415,
                "send the submission as multipart/form-data or application/json, got "
                f"{content_type or 'no content type'!r}",
            )
        await submit.check_receptor(submission.receptor_path, submission.config)
        row = await submit.queue_submission(
            _pool(request), _storage(request), caller, submission, request.app.state.limits
        )
    settings = request.app.state.settings
    if settings.executor == "celery":
        await submit.send_to_celery(
            _pool(request), settings.celery_broker_url, row["id"]
        )

    task = task_from_row(row)
    response.headers["Location"] = f"/v1/tasks/{task.id}"
    return SubmittedTask(**task.model_dump(), warnings=submission.warnings)


async def _read_multipart(request: Request, folder: Path) -> submit.Submission:
    try:
        form = await request.form(
            max_files=2, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES
        )
    except BodyTooLarge:
        raise
    except Exception as error:  # noqa: BLE001 - the parser's errors have no common base
        raise InputError(f"the multipart form cannot be parsed: {error}") from None
    try:
        fields: dict[str, Any] = {}
        receptor: UploadFile | None = None
        peptide_text: str | None = None
        for name, value in form.multi_items():
            repeated = (name == "receptor" and receptor is not None) or (
                name == "peptide" and peptide_text is not None
            )
            if name in fields or repeated:
                raise InputError(f"field {name!r} is given more than once")
            if name == "receptor":
                if not isinstance(value, UploadFile):
                    raise InputError("receptor must be a file upload")
                receptor = value
            elif name == "peptide":
                peptide_text = await _field_text(name, value)
            else:
                fields[name] = await _field_text(name, value)
        if receptor is None:
            raise InputError("receptor is missing: upload the receptor file")
        if peptide_text is None:
            raise InputError("peptide is missing: give a sequence or FASTA text")

        peptide = submit.normalize_peptide_text(peptide_text)
        priority = submit.parse_priority(fields.pop("priority", None))
        config, warnings = submit.validate_config_fields(fields)
        name = submit.receptor_file_name(receptor.filename)
        path = folder / name
        receptor_bytes = await _save_upload(receptor, path)
    finally:
        await form.close()
    return submit.Submission(
        peptide=peptide,
        receptor_name=name,
        receptor_path=path,
        receptor_bytes=receptor_bytes,
        config=config,
        config_keys=tuple(key for key in submit.USER_KEYS if key in fields),
        priority=priority,
        warnings=warnings,
    )


async def _save_upload(upload: UploadFile, path: Path) -> bytes | None:
    """Write an upload to ``path``; return its bytes too when they are small."""
    if upload.size is not None and upload.size <= submit.IN_MEMORY_RECEPTOR_BYTES:
        data = await upload.read()
        await asyncio.to_thread(path.write_bytes, data)
        return data
    with path.open("wb") as handle:
        while chunk := await upload.read(1 << 20):
            await asyncio.to_thread(handle.write, chunk)
    return None


async def _field_text(name: str, value: str | UploadFile) -> str:
    if isinstance(value, str):
        return value
    data = await value.read(submit.MAX_PEPTIDE_TEXT + 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"field {name!r} is not UTF-8 text") from None


async def _read_json(request: Request, caller: Caller, folder: Path) -> submit.Submission:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"the JSON body cannot be parsed: {error}") from None
    try:
        stored = StoredSubmission.model_validate(body)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'body'}: {item['msg']}"
            for item in error.errors()
        )
        raise InputError(f"invalid JSON submission: {problems}") from None
    if (stored.peptide is None) == (stored.peptide_key is None):
        raise InputError("give exactly one of peptide and peptide_key")

    storage = _storage(request)
    receptor_key = submit.check_upload_key(caller, stored.receptor_key, "receptor_key")
    if stored.peptide_key is not None:
        peptide_key = submit.check_upload_key(caller, stored.peptide_key, "peptide_key")
        fasta = await submit.fetch_upload(
            storage,
            peptide_key,
            folder / "peptide-upload.fasta",
            "peptide_key",
            submit.MAX_PEPTIDE_TEXT,
        )
        peptide_text = fasta.read_text(encoding="utf-8", errors="replace")
    else:
        peptide_text = stored.peptide or ""
    peptide = submit.normalize_peptide_text(peptide_text)
    config, warnings = submit.validate_config_fields(stored.config)
    name = submit.receptor_file_name(receptor_key.rsplit("/", 1)[-1])
    max_bytes = request.app.state.settings.max_upload_mb * 1024 * 1024
    path = await submit.fetch_upload(
        storage, receptor_key, folder / name, "receptor_key", max_bytes
    )
    return submit.Submission(
        peptide=peptide,
        receptor_name=name,
        receptor_path=path,
        receptor_bytes=None,
        config=config,
        config_keys=tuple(key for key in submit.USER_KEYS if key in stored.config),
        priority=stored.priority,
        warnings=warnings,
    )


@router.put(
    "/uploads/{name:path}",
    status_code=201,
    response_model=Upload,
    responses={
        **ERRORS,
        413: {"model": ErrorBody, "description": "upload over MAX_UPLOAD_MB"},
        422: {"model": ErrorBody, "description": "invalid name"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"}
                }
            },
        }
    },
    tags=["uploads"],
    operation_id="putUpload",
)
async def put_upload(name: str, request: Request, caller: CallerDependency) -> Upload:
    """Store the request body at ``uploads/<user id>/<name>`` for JSON submissions."""
    key = submit.check_upload_key(caller, f"{submit.uploads_prefix(caller)}{name}", "name")
    with submit.temporary_folder() as folder:
        path = Path(folder) / "upload"
        with path.open("wb") as handle:
            async for chunk in request.stream():
                await asyncio.to_thread(handle.write, chunk)
        info = await _storage(request).upload_file(path, key)
    logger.info(
        "upload_stored: %s (%d bytes) by user %s",
        key,
        info.size,
        caller.user_id,
        extra={"event": "upload_stored", "key": key, "user_id": caller.user_id},
    )
    return Upload(key=key, size=info.size, sha256=info.sha256)


# -- read ----------------------------------------------------------------------------


@router.get(
    "/tasks",
    response_model=TaskPage,
    responses=ERRORS,
    tags=["tasks"],
    operation_id="listTasks",
)
async def list_tasks(
    request: Request,
    caller: CallerDependency,
    status: Annotated[Status | None, Query(description="only tasks in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> TaskPage:
    """List the caller's tasks, newest first (an admin key lists every user's)."""
    pool = _pool(request)
    scope = (queries.TASK_TYPE, caller.is_admin, caller.user_id, status)
    rows = await pool.fetch(queries.LIST_TASKS, *scope, limit, offset)
    total = await pool.fetchval(queries.COUNT_TASKS, *scope)
    return TaskPage(
        tasks=[task_from_row(row) for row in rows], total=total, limit=limit, offset=offset
    )


@router.get(
    "/tasks/{task_id}",
    response_model=Task,
    responses=ERRORS,
    tags=["tasks"],
    operation_id="readTask",
)
async def read_task(task_id: TaskId, request: Request, caller: CallerDependency) -> Task:
    """Return one task: status, progress, current step, step timings, attempts, error.

    A finished task also lists its result files.
    """
    task = await _get_task(request, caller, task_id)
    if task.status == "finished" and task.files_deleted_at is None:
        manifest = await _read_manifest(request, task, required=False)
        if manifest is not None:
            task.files = manifest_names(manifest)
    return task


@router.get(
    "/tasks/{task_id}/result",
    responses={
        **ERRORS,
        200: {"content": {"application/json": {"schema": {"type": "object"}}}},
        409: {"model": ErrorBody, "description": "the task has not finished"},
        410: {"model": ErrorBody, "description": "files deleted by retention"},
    },
    tags=["tasks"],
    operation_id="readResult",
)
async def read_result(
    task_id: TaskId, request: Request, caller: CallerDependency
) -> JSONResponse:
    """Return the task's result.json (the platform's ``results`` list and more)."""
    task = await _finished_task(request, caller, task_id)
    key = f"{_prefix(task)}/output/result.json"
    data = await _read_object(request, key, "result.json")
    try:
        document = json.loads(data)
    except ValueError as error:
        raise ApiError(502, f"result.json of task {task_id} is not valid JSON: {error}")
    if not isinstance(document, dict):
        raise ApiError(502, f"result.json of task {task_id} is not a JSON object")
    return JSONResponse(document)


@router.get(
    "/tasks/{task_id}/files/{name:path}",
    responses={
        **ERRORS,
        200: {
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
            "description": "the file's bytes",
        },
        409: {"model": ErrorBody, "description": "the task has not finished"},
        410: {"model": ErrorBody, "description": "files deleted by retention"},
    },
    tags=["tasks"],
    operation_id="readFile",
)
async def read_file(
    task_id: TaskId, name: str, request: Request, caller: CallerDependency
) -> Response:
    """Return one result file; only names listed in the task's manifest.json exist."""
    task = await _finished_task(request, caller, task_id)
    manifest = await _read_manifest(request, task, required=True)
    if len(name) > FILE_NAME_MAX_LENGTH or name not in manifest_names(manifest):
        raise ApiError(404, f"task {task_id} has no result file {name[:80]!r}")
    data = await _read_object(request, f"{_prefix(task)}/output/{name}", name)
    return Response(
        data,
        media_type=_media_type(name),
        headers={"Content-Disposition": f'attachment; filename="{Path(name).name}"'},
    )


# -- cancel and delete ---------------------------------------------------------------


@router.post(
    "/tasks/{task_id}/cancel",
    response_model=Task,
    responses={**ERRORS, 409: {"model": ErrorBody, "description": "task already ended"}},
    tags=["tasks"],
    operation_id="cancelTask",
)
async def cancel_task(task_id: TaskId, request: Request, caller: CallerDependency) -> Task:
    """Cancel a task: a pending one at once, a processing one at its worker's next check."""
    task = await _get_task(request, caller, task_id)
    pool = _pool(request)
    now = utc_now()
    cancelled = await pool.fetchval(
        queries.CANCEL_PENDING_TASK, task.id, now, queries.TASK_TYPE
    )
    if cancelled is None:
        requested = await pool.fetchval(
            queries.REQUEST_CANCEL, task.id, now, queries.TASK_TYPE
        )
        if requested is None:
            current = await _get_task(request, caller, task_id)
            raise ApiError(
                409, f"task {task_id} is {current.status} and can no longer be cancelled"
            )
        await pool.execute(queries.NOTIFY_CANCEL, task.id)
    logger.info(
        "task_cancel_requested: task %s by user %s",
        task.id,
        caller.user_id,
        extra={"event": "task_cancel_requested", "task_id": task.id},
    )
    return await _get_task(request, caller, task_id)


@router.delete(
    "/tasks/{task_id}",
    status_code=204,
    responses={**ERRORS, 409: {"model": ErrorBody, "description": "task still active"}},
    tags=["tasks"],
    operation_id="deleteTask",
)
async def delete_task(task_id: TaskId, request: Request, caller: CallerDependency) -> Response:
    """Delete a finished, failed or cancelled task and all of its files."""
    task = await _get_task(request, caller, task_id)
    async with _pool(request).acquire() as connection, connection.transaction():
        row = await connection.fetchrow(
            queries.LOCK_TASK_FOR_DELETE, task.id, queries.TASK_TYPE
        )
        if row is None:
            raise ApiError(404, f"task {task_id} not found")
        if row["status"] not in TERMINAL_STATUSES:
            raise ApiError(
                409,
                f"task {task_id} is {row['status']}; cancel it and wait until it is "
                "cancelled before deleting it",
            )
        # Files first: if storage fails, the row stays and the delete can be retried.
        n_files = await _storage(request).delete_prefix(_prefix(task))
        await connection.execute(queries.DELETE_TASK_ATTEMPTS, task.id)
        await connection.execute(queries.DELETE_EXPIRED_MARK, task.id)
        await connection.execute(queries.DELETE_TASK, task.id, queries.TASK_TYPE)
    logger.info(
        "task_deleted: task %s and %d files by user %s",
        task.id,
        n_files,
        caller.user_id,
        extra={"event": "task_deleted", "task_id": task.id, "n_files": n_files},
    )
    return Response(status_code=204)


# -- helpers -------------------------------------------------------------------------


def _pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool


def _storage(request: Request) -> Storage:
    return request.app.state.storage


def task_from_row(row: asyncpg.Record) -> Task:
    """Build the API's view of a ``tasks`` row."""
    timings = _json_column(row["step_timings"])
    summary = _json_column(row["result_summary"])
    return Task(
        id=row["id"].strip(),
        user_id=row["user_id"].strip(),
        task_type=row["task_type"],
        status=row["status"],
        job_dir=row["job_dir"],
        priority=row["priority"],
        progress=row["progress"],
        current_step=row["current_step"],
        attempts=row["attempts"],
        error=row["error"],
        cancel_requested=row["cancel_requested_at"] is not None,
        step_timings=_ordered_timings(timings),
        result_summary=summary if isinstance(summary, dict) else None,
        created_at=as_utc(row["created_at"]),
        started_at=as_utc(row["started_at"]),
        finished_at=as_utc(row["finished_at"]),
        updated_at=as_utc(row["updated_at"]),
        files_deleted_at=as_utc(row["files_deleted_at"]),
    )


def _ordered_timings(timings: Any) -> dict[str, float]:
    """Return the step timings in pipeline order (JSONB keeps keys in its own order)."""
    if not isinstance(timings, dict):
        return {}
    known = [step for step in STEPS if step in timings]
    others = sorted(step for step in timings if step not in STEPS)
    return {
        str(step): float(timings[step])
        for step in known + others
        if isinstance(timings[step], (int, float))
    }


def _json_column(value: Any) -> Any:
    # asyncpg returns JSONB as text unless a codec is set on the connection.
    return json.loads(value) if isinstance(value, str) else value


def as_utc(moment: dt.datetime | None) -> dt.datetime | None:
    """Mark a time from the tables (UTC without a time zone) as UTC, for RFC 3339."""
    return moment.replace(tzinfo=dt.UTC) if moment is not None else None


async def _get_task(request: Request, caller: Caller, task_id: str) -> Task:
    if len(task_id) > TASK_ID_MAX_LENGTH:
        raise ApiError(404, f"task {task_id[:40]!r}... not found")
    row = await _pool(request).fetchrow(
        queries.GET_TASK, task_id, queries.TASK_TYPE, caller.is_admin, caller.user_id
    )
    if row is None:
        raise ApiError(404, f"task {task_id!r} not found")
    return task_from_row(row)


async def _finished_task(request: Request, caller: Caller, task_id: str) -> Task:
    task = await _get_task(request, caller, task_id)
    if task.status != "finished":
        raise ApiError(409, f"task {task_id} is {task.status}; results exist once finished")
    if task.files_deleted_at is not None:
        raise ApiError(
            410,
            f"the files of task {task_id} were deleted on "
            f"{task.files_deleted_at:%Y-%m-%d} (RETENTION_DAYS)",
        )
    return task


def _prefix(task: Task) -> str:
    return resolve_job_prefix(task.job_dir)


async def _read_object(request: Request, key: str, what: str) -> bytes:
    try:
        return await _storage(request).read_bytes(key, MAX_DOCUMENT_BYTES)
    except ObjectNotFoundError:
        raise ApiError(404, f"{what} not found in the task's storage folder") from None


async def _read_manifest(
    request: Request, task: Task, required: bool
) -> dict[str, Any] | None:
    key = f"{_prefix(task)}/output/manifest.json"
    try:
        data = await _storage(request).read_bytes(key, MAX_DOCUMENT_BYTES)
    except ObjectNotFoundError:
        if required:
            raise ApiError(404, f"task {task.id} has no manifest.json") from None
        return None
    try:
        manifest = json.loads(data)
    except ValueError as error:
        raise ApiError(502, f"manifest.json of task {task.id} is invalid: {error}")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise ApiError(502, f"manifest.json of task {task.id} has no files list")
    return manifest


def manifest_names(manifest: dict[str, Any]) -> list[str]:
    """Return the file names a manifest lists, skipping malformed entries."""
    names = []
    for entry in manifest["files"]:
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and name and not name.startswith("/") and (
            ".." not in name.split("/")
        ):
            names.append(name)
    return names


def _media_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return {
        ".json": "application/json",
        ".csv": "text/csv; charset=utf-8",
        ".pdb": "chemical/x-pdb",
        ".cif": "chemical/x-cif",
        ".fasta": "text/plain; charset=utf-8",
        ".log": "text/plain; charset=utf-8",
        ".txt": "text/plain; charset=utf-8",
    }.get(suffix, "application/octet-stream")
