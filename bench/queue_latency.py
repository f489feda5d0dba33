"""Pickup latency, insert to handler start, of peptide-opt, procrastinate and pgqueuer.

One idle worker per system; jobs are inserted one at a time with a gap, so the worker
is idle at each insert. The handler appends its start time to a file; latency is that
time minus the time just before the insert call. Usage::

    .venv/bin/python bench/queue_latency.py [--jobs 200] [--gap-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    describe_ms,
    read_start_times,
    scratch_database,
    start_peptide_opt_workers,
    start_pgqueuer_workers,
    start_procrastinate_workers,
    wait_until,
)
from bench.queue_peers import NOOP_ENTRYPOINT, procrastinate_app, procrastinate_noop  # noqa: E402
from peptide_opt.queue.migrations import upgrade  # noqa: E402

N_WARMUP = 10


def _latencies(inserted: dict[str, float], log: Path) -> list[float]:
    wait_until(lambda: len(read_start_times(log)) >= len(inserted), timeout=60)
    starts = read_start_times(log)
    keys = list(inserted)[N_WARMUP:]
    return [starts[key] - inserted[key] for key in keys]


def measure_peptide_opt(n_jobs: int, gap_s: float, work: Path) -> list[float]:
    log = work / "peptide_opt.log"
    group = ProcessGroup(work)
    with scratch_database("latency_ours") as url:
        upgrade(url)
        try:
            start_peptide_opt_workers(group, url, 1)
            inserted = {}
            with psycopg.connect(url, autocommit=True, prepare_threshold=0) as db:
                user_id = str(uuid.uuid4())
                db.execute(
                    "INSERT INTO users (id, username) VALUES (%s, 'bench')", (user_id,)
                )
                job_dir = json.dumps({"log": str(log)})
                for _ in range(n_jobs + N_WARMUP):
                    task_id = str(uuid.uuid4())
                    inserted[task_id] = time.time()
                    db.execute(
                        "INSERT INTO tasks (id, user_id, task_type, job_dir, status) "
                        "VALUES (%s, %s, 'peptide_opt.noop', %s, 'pending')",
                        (task_id, user_id, job_dir),
                    )
                    time.sleep(gap_s)
            return _latencies(inserted, log)
        finally:
            group.stop()


def measure_procrastinate(n_jobs: int, gap_s: float, work: Path) -> list[float]:
    log = work / "procrastinate.log"
    group = ProcessGroup(work)
    with scratch_database("latency_procrastinate") as url:
        procrastinate_app.connector.__init__(conninfo=url)

        async def defer_all() -> dict[str, float]:
            inserted = {}
            async with procrastinate_app.open_async():
                await procrastinate_app.schema_manager.apply_schema_async()
                await asyncio.to_thread(start_procrastinate_workers, group, url, 1)
                for _ in range(n_jobs + N_WARMUP):
                    key = uuid.uuid4().hex
                    inserted[key] = time.time()
                    await procrastinate_noop.defer_async(key=key, log=str(log))
                    await asyncio.sleep(gap_s)
            return inserted

        try:
            return _latencies(asyncio.run(defer_all()), log)
        finally:
            group.stop()


def measure_pgqueuer(n_jobs: int, gap_s: float, work: Path) -> list[float]:
    log = work / "pgqueuer.log"
    group = ProcessGroup(work)
    with scratch_database("latency_pgqueuer") as url:

        async def enqueue_all() -> dict[str, float]:
            connection = await asyncpg.connect(url)
            queries = Queries.from_asyncpg_connection(connection)
            await queries.install()
            await asyncio.to_thread(start_pgqueuer_workers, group, url, 1)
            inserted = {}
            for _ in range(n_jobs + N_WARMUP):
                key = uuid.uuid4().hex
                payload = json.dumps({"key": key, "log": str(log)}).encode()
                inserted[key] = time.time()
                await queries.enqueue(NOOP_ENTRYPOINT, payload)
                await asyncio.sleep(gap_s)
            await connection.close()
            return inserted

        try:
            return _latencies(asyncio.run(enqueue_all()), log)
        finally:
            group.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs", type=int, default=200, help="measured jobs per system"
    )
    parser.add_argument(
        "--gap-ms", type=float, default=50.0, help="pause between inserts in ms"
    )
    parser.add_argument(
        "--only", choices=("peptide-opt", "procrastinate", "pgqueuer"), action="append"
    )
    args = parser.parse_args()
    systems = {
        "peptide-opt": measure_peptide_opt,
        "procrastinate": measure_procrastinate,
        "pgqueuer": measure_pgqueuer,
    }
    with tempfile.TemporaryDirectory(prefix="queue-latency-") as folder:
        for name, measure in systems.items():
            if args.only and name not in args.only:
                continue
            latencies = measure(args.jobs, args.gap_ms / 1000, Path(folder))
            print(f"{name:<14} pickup latency {describe_ms(latencies)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
