"""The product's task handler: one peptide optimization task from storage to storage.

Registered in pyproject.toml under the entry-point group ``peptide_opt.task_handlers``
as ``peptide_optimization``; it runs inside a task process of the worker's pool.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from peptide_opt.settings import Settings
from peptide_opt.storage import (
    fetch_job_inputs_sync,
    resolve_job_prefix,
    upload_outputs_sync,
)
from peptide_opt.worker.context import TaskContext

logger = logging.getLogger(__name__)

# Top-level result entries longer than this as JSON (every design, every pose) stay
# in result.json only; the task row's result_summary keeps the short ones.
_MAX_SUMMARY_ENTRY_CHARS = 2000


def run_peptide_optimization(context: TaskContext) -> dict[str, Any]:
    """Fetch the task's inputs, run the pipeline, upload the outputs (manifest last).

    Each finished step's checkpoint is copied to ``PREFIX/work/<step>/``; a retried
    attempt restores them first and resumes after the last finished step. The
    checkpoints are removed once the task finishes when the job's ``cleanup`` is true,
    and after a failure of the last attempt.
    """
    # The pipeline's import pulls in torch, RDKit and OpenMM: keep it out of the
    # worker's main process, which only needs this module's name.
    from peptide_opt.pipeline.runner import run_job
    from peptide_opt.storage.checkpoints import CheckpointMirror

    settings = Settings.from_env()
    prefix = resolve_job_prefix(context.job_dir)
    job_dir = context.workdir / "job"
    output_dir = context.workdir / "output"

    fetch_job_inputs_sync(settings, prefix, job_dir)
    logger.info(
        "task_inputs_fetched", extra={"task_id": context.task_id, "prefix": prefix}
    )
    mirror = CheckpointMirror(settings, prefix, output_dir)
    restored = mirror.restore()
    if restored:
        logger.info(
            "task_resumed",
            extra={"task_id": context.task_id, "steps": ",".join(restored)},
        )

    try:
        result = run_job(
            job_dir,
            output_dir,
            cores=context.cores,
            on_step=context.report_step,
            on_checkpoint=mirror.upload,
            storage_prefix=prefix,
        )
    except Exception:
        if context.attempt >= context.max_attempts:
            mirror.delete()
        raise

    manifest = upload_outputs_sync(settings, prefix, output_dir)
    context.report_step("upload", 100.0)
    if result["parameters"].get("cleanup", True):
        mirror.delete()
    return _summary(result, prefix, manifest)


def _summary(
    result: dict[str, Any], prefix: str, manifest: dict[str, Any]
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        key: value
        for key, value in result.items()
        if len(json.dumps(value, default=str)) <= _MAX_SUMMARY_ENTRY_CHARS
    }
    summary["storage_prefix"] = prefix
    summary["outputs"] = sorted(
        entry.get("name") or entry.get("path") or ""
        for entry in manifest.get("files", [])
        if isinstance(entry, dict)
    )
    return summary
