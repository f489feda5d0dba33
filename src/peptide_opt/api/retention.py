"""Retention: delete the files of tasks that ended more than RETENTION_DAYS ago.

The rows stay, because the platform reads their status. The task is recorded in
``api_expired_tasks``, so its result routes return 410 and the sweep skips it.
Several API processes may sweep at once: deleting a prefix twice is harmless. The same
hourly loop deletes the submission rate counters of past minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

import asyncpg
from fastapi import FastAPI

from peptide_opt.api import queries
from peptide_opt.api.keys import utc_now
from peptide_opt.errors import PeptideOptError
from peptide_opt.storage.base import Storage
from peptide_opt.storage.keys import resolve_job_prefix

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 3600.0
BATCH_SIZE = 100
#: Rate counter windows older than this are deleted by the sweep.
SUBMIT_COUNT_KEEP = dt.timedelta(hours=1)


async def sweep(pool: asyncpg.Pool, storage: Storage, retention_days: float) -> int:
    """Delete the files of every task that ended before the cutoff; return how many."""
    now = utc_now()
    cutoff = now - dt.timedelta(days=retention_days)
    n_swept = 0
    while True:
        rows = await pool.fetch(queries.EXPIRED_TASKS, queries.TASK_TYPE, cutoff, BATCH_SIZE)
        for row in rows:
            task_id = row["id"].strip()
            try:
                n_files = await storage.delete_prefix(resolve_job_prefix(row["job_dir"]))
            except PeptideOptError as error:
                # The task stays unmarked, so the next sweep tries it again.
                logger.warning(
                    "retention_delete_failed: task %s: %s",
                    task_id,
                    error,
                    extra={"event": "retention_delete_failed", "task_id": task_id},
                )
                continue
            await pool.execute(queries.MARK_EXPIRED, task_id, utc_now())
            n_swept += 1
            logger.info(
                "task_files_expired: task %s, %d files deleted",
                task_id,
                n_files,
                extra={"event": "task_files_expired", "task_id": task_id},
            )
        if len(rows) < BATCH_SIZE:
            break
    return n_swept


async def prune_submit_counts(pool: asyncpg.Pool) -> None:
    """Delete the rate limit's counter rows of past windows."""
    await pool.execute(queries.DELETE_OLD_SUBMIT_COUNTS, utc_now() - SUBMIT_COUNT_KEEP)


def start(app: FastAPI) -> asyncio.Task:
    """Start the hourly sweep in the background (files only with RETENTION_DAYS)."""
    return asyncio.create_task(_sweep_forever(app), name="retention-sweep")


async def stop(task: asyncio.Task) -> None:
    """Stop the background sweep."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _sweep_forever(app: FastAPI) -> None:
    days = app.state.settings.retention_days
    while True:
        try:
            if days:
                await sweep(app.state.pool, app.state.storage, days)
            await prune_submit_counts(app.state.pool)
        except (OSError, asyncpg.PostgresError, PeptideOptError) as error:
            logger.warning(
                "retention_sweep_failed: %s",
                error,
                extra={"event": "retention_sweep_failed"},
            )
        await asyncio.sleep(SWEEP_INTERVAL_S)
