"""Throughput of no-op jobs with 8 worker processes: peptide-opt, procrastinate and
pgqueuer, each on its own database on the same server, one after another in one run.

Each system gets ``--jobs`` jobs in one transaction while its workers wait; the time
runs from that insert to the moment every job is done (a 20 ms poll). Every system
claims one job at a time: peptide-opt by design, procrastinate with concurrency 1,
pgqueuer with batch_size 1. Usage::

    .venv/bin/python bench/queue_throughput.py [--jobs 3000] [--workers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg  # noqa: E402
import psycopg  # noqa: E402
from pgqueuer import Queries  # noqa: E402

from bench.queue_common import (  # noqa: E402
    ProcessGroup,
    scratch_database,
    start_peptide_opt_workers,
    start_pgqueuer_workers,
    start_procrastinate_workers,
    wait_until,
)
from bench.queue_peers import NOOP_ENTRYPOINT, procrastinate_app, procrastinate_noop  # noqa: E402
from peptide_opt.queue.migrations import upgrade  # noqa: E402

_POLL_S = 0.02


def _scalar(connection: psycopg.Connection, statement: str) -> int:
    return int(connection.execute(statement).fetchone()[0])


def measure_peptide_opt(n_jobs: int, n_workers: int, work: Path) -> float:
    group = ProcessGroup(work)
    with scratch_database("throughput_ours") as url:
        upgrade(url)
        try:
            start_peptide_opt_workers(group, url, n_workers)
            with psycopg.connect(url, autocommit=True) as db:
                user_id = str(uuid.uuid4())
                db.execute(
                    "INSERT INTO users (id, username) VALUES (%s, 'bench')", (user_id,)
                )
                started = time.monotonic()
                db.execute(
                    "INSERT INTO tasks (id, user_id, task_type, job_dir, status) "
                    "SELECT gen_random_uuid()::text, %s, 'peptide_opt.noop', '{}', "
                    "'pending' FROM generate_series(1, %s)",
                    (user_id, n_jobs),
                )
                wait_until(
                    lambda: (
                        _scalar(
                            db, "SELECT count(*) FROM tasks WHERE status = 'finished'"
                        )
                        >= n_jobs
                    ),
                    timeout=600,
                    interval=_POLL_S,
                )
                return n_jobs / (time.monotonic() - started)
        finally:
            group.stop()


def measure_procrastinate(n_jobs: int, n_workers: int, work: Path) -> float:
    group = ProcessGroup(work)
    with scratch_database("throughput_procrastinate") as url:
        procrastinate_app.connector.__init__(conninfo=url)

        async def run() -> float:
            async with procrastinate_app.open_async():
                await procrastinate_app.schema_manager.apply_schema_async()
                await asyncio.to_thread(
                    start_procrastinate_workers, group, url, n_workers
                )
                started = time.monotonic()
                await procrastinate_noop.batch_defer_async(*([{}] * n_jobs))
            with psycopg.connect(url, autocommit=True) as db:
                await asyncio.to_thread(
                    wait_until,
                    lambda: (
                        _scalar(
                            db,
                            "SELECT count(*) FROM procrastinate_jobs "
                            "WHERE status = 'succeeded'",
                        )
                        >= n_jobs
                    ),
                    600,
                    _POLL_S,
                )
            return n_jobs / (time.monotonic() - started)

        try:
            return asyncio.run(run())
        finally:
            group.stop()


def measure_pgqueuer(n_jobs: int, n_workers: int, work: Path) -> float:
    group = ProcessGroup(work)
    with scratch_database("throughput_pgqueuer") as url:

        async def run() -> float:
            connection = await asyncpg.connect(url)
            queries = Queries.from_asyncpg_connection(connection)
            await queries.install()
            await asyncio.to_thread(start_pgqueuer_workers, group, url, n_workers)
            started = time.monotonic()
            await queries.enqueue(
                [NOOP_ENTRYPOINT] * n_jobs, [None] * n_jobs, [0] * n_jobs
            )
            await connection.close()
            with psycopg.connect(url, autocommit=True) as db:
                # Done jobs leave the pgqueuer table.
                await asyncio.to_thread(
                    wait_until,
                    lambda: _scalar(db, "SELECT count(*) FROM pgqueuer") == 0,
                    600,
                    _POLL_S,
                )
            return n_jobs / (time.monotonic() - started)

        try:
            return asyncio.run(run())
        finally:
            group.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per system")
    parser.add_argument("--workers", type=int, default=8, help="worker processes")
    parser.add_argument(
        "--only", choices=("peptide-opt", "procrastinate", "pgqueuer"), action="append"
    )
    args = parser.parse_args()
    systems = {
        "peptide-opt": measure_peptide_opt,
        "procrastinate": measure_procrastinate,
        "pgqueuer": measure_pgqueuer,
    }
    with tempfile.TemporaryDirectory(prefix="queue-throughput-") as folder:
        for name, measure in systems.items():
            if args.only and name not in args.only:
                continue
            rate = measure(args.jobs, args.workers, Path(folder))
            print(
                f"{name:<14} {args.workers} workers, {args.jobs} no-op jobs: "
                f"{rate:.0f} jobs/s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
