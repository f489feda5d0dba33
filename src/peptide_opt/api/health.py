"""Liveness, readiness and Prometheus metrics.

The metrics are read from the database at each scrape, so every API process reports
the same queue, whichever one Prometheus scrapes. NOTE: the duration histogram counts
the finished tasks still in the table, so deleting tasks lowers it, unlike a histogram
that a process accumulates.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

from peptide_opt.api import queries
from peptide_opt.api.keys import utc_now
from peptide_opt.worker.cli import LIVE_WINDOW_S

logger = logging.getLogger(__name__)

router = APIRouter()

READY_TIMEOUT_S = 5.0
#: Upper bounds (s) of the task duration histogram: 1 min to 4 h.
DURATION_BUCKETS_S = (60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
STATUSES = ("pending", "processing", "finished", "failed", "cancelled")


@router.get("/health/live", tags=["health"])
async def live() -> dict[str, str]:
    """Report that the process serves requests."""
    return {"status": "ok"}


@router.get(
    "/health/ready",
    tags=["health"],
    responses={503: {"description": "the database or storage is unreachable"}},
)
async def ready(request: Request) -> JSONResponse:
    """Check that the database and the storage respond; a 503 names what failed."""
    checks = {
        "database": await _check(_check_database(request)),
        "storage": await _check(_check_storage(request)),
    }
    ok = all(result == "ok" for result in checks.values())
    if not ok:
        logger.warning(
            "readiness_failed: %s", checks, extra={"event": "readiness_failed", **checks}
        )
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
    )


async def _check(probe) -> str:
    try:
        await asyncio.wait_for(probe, READY_TIMEOUT_S)
    except TimeoutError:
        return f"timed out after {READY_TIMEOUT_S:g} s"
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        return f"failed: {type(error).__name__}: {error}"
    return "ok"


async def _check_database(request: Request) -> None:
    await request.app.state.pool.fetchval("SELECT 1")


async def _check_storage(request: Request) -> None:
    # A key that never exists: the store must return False rather than fail.
    await request.app.state.storage.exists(f"health/{uuid.uuid4().hex}")


@router.get(
    "/metrics",
    tags=["health"],
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Return queue and worker figures in the Prometheus text format."""
    pool = request.app.state.pool
    now = utc_now()
    by_status = await pool.fetch(queries.TASKS_BY_STATUS, queries.TASK_TYPE)
    buckets = await pool.fetch(
        queries.DURATION_BUCKETS, queries.TASK_TYPE, list(DURATION_BUCKETS_S)
    )
    totals = await pool.fetchrow(queries.DURATION_TOTALS, queries.TASK_TYPE)
    oldest = await pool.fetchval(queries.OLDEST_PENDING, queries.TASK_TYPE)
    steps = await pool.fetch(queries.STEP_DURATIONS, queries.TASK_TYPE)
    live_since = now - dt.timedelta(seconds=LIVE_WINDOW_S)
    workers = await pool.fetch(queries.LIVE_WORKERS, live_since)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        _Snapshot(
            _task_families(by_status, buckets, totals, oldest, now)
            + _step_families(steps)
            + _worker_families(workers)
        )
    )
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


def _task_families(by_status, buckets, totals, oldest, now):
    counts = {status: 0 for status in STATUSES}
    counts.update({row["status"]: row["n_tasks"] for row in by_status})
    tasks = GaugeMetricFamily(
        "peptide_opt_tasks",
        "Tasks of type peptide_optimization by status",
        labels=["status"],
    )
    for status, count in counts.items():
        tasks.add_metric([status], count)
    depth = GaugeMetricFamily(
        "peptide_opt_queue_depth", "Pending peptide_optimization tasks"
    )
    depth.add_metric([], counts["pending"])
    age = GaugeMetricFamily(
        "peptide_opt_oldest_pending_age_seconds",
        "Age of the oldest pending task in seconds (0 when none is pending)",
    )
    age.add_metric([], (now - oldest).total_seconds() if oldest else 0.0)
    durations = HistogramMetricFamily(
        "peptide_opt_task_duration_seconds",
        "Wall-clock seconds from the last claim to the finish of finished tasks",
    )
    cumulative = [(f"{row['bound']:g}", row["n_tasks"]) for row in buckets]
    cumulative.append(("+Inf", totals["n_tasks"]))
    durations.add_metric([], cumulative, sum_value=totals["seconds"])
    return [tasks, depth, age, durations]


def _step_families(rows):
    seconds = GaugeMetricFamily(
        "peptide_opt_finished_step_seconds",
        "Total wall-clock seconds of each step over the finished tasks in the table",
        labels=["step"],
    )
    count = GaugeMetricFamily(
        "peptide_opt_finished_step_tasks",
        "Finished tasks in the table that recorded a timing for each step",
        labels=["step"],
    )
    for row in rows:
        seconds.add_metric([row["step"]], row["seconds"])
        count.add_metric([row["step"]], row["n_tasks"])
    return [seconds, count]


def _worker_families(rows):
    workers = GaugeMetricFamily(
        "peptide_opt_live_workers",
        "Worker processes with a recent heartbeat, by worker status",
        labels=["status"],
    )
    running = GaugeMetricFamily(
        "peptide_opt_running_tasks", "Tasks that live workers report running"
    )
    total_running = 0
    for row in rows:
        workers.add_metric([row["status"]], row["n_workers"])
        total_running += row["n_running"]
    running.add_metric([], total_running)
    return [workers, running]


class _Snapshot:
    """A collector that returns metric families computed before the scrape."""

    def __init__(self, families) -> None:
        self._families = families

    def collect(self):
        return iter(self._families)
