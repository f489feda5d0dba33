"""Request and response bodies of the HTTP API (they define its OpenAPI schema)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["pending", "processing", "finished", "failed", "cancelled"]


class ErrorBody(BaseModel):
    """An error response: ``detail`` states what failed and on which value."""

    detail: str


class Task(BaseModel):
    """One task as the API shows it."""

    id: str
    user_id: str
    task_type: str
    status: Status
    job_dir: str
    priority: int
    progress: int = Field(description="percentage of the pipeline done, 0 to 100")
    current_step: str | None
    attempts: int
    error: str | None
    cancel_requested: bool
    step_timings: dict[str, float] = Field(
        description="wall-clock seconds of each finished step"
    )
    result_summary: dict[str, Any] | None = Field(
        default=None, description="short result figures the worker stored on the row"
    )
    created_at: dt.datetime | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    updated_at: dt.datetime | None
    files_deleted_at: dt.datetime | None = Field(
        default=None, description="when retention deleted the task's files"
    )
    files: list[str] | None = Field(
        default=None,
        description="names of the result files (those in manifest.json) once finished",
    )


class SubmittedTask(Task):
    """A task just queued, with the warnings that its configuration raised."""

    warnings: list[str]


class TaskPage(BaseModel):
    """One page of the caller's tasks, newest first."""

    tasks: list[Task]
    total: int
    limit: int
    offset: int


class Me(BaseModel):
    """The user behind the request's key."""

    user_id: str
    username: str
    is_admin: bool


class Upload(BaseModel):
    """A file stored under the caller's uploads folder, for JSON submissions."""

    key: str = Field(description="the storage key to name in a JSON submission")
    size: int = Field(description="bytes stored")
    sha256: str | None


class StoredSubmission(BaseModel):
    """A submission whose inputs the caller already put under ``uploads/<user id>/``."""

    model_config = ConfigDict(extra="forbid")

    receptor_key: str = Field(
        description="storage key of the receptor file (PDB or mmCIF), under "
        "uploads/<user id>/",
        max_length=1024,
    )
    peptide: str | None = Field(
        default=None, description="sequence or FASTA text", max_length=10000
    )
    peptide_key: str | None = Field(
        default=None,
        description="storage key of a FASTA file under uploads/<user id>/, instead of "
        "peptide",
        max_length=1024,
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="config keys (n_poses, num_seq_per_target, ...) and their values",
    )
    priority: int = Field(default=0, ge=-1000, le=1000)
