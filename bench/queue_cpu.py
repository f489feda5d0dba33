"""CPU time per no-op job of peptide-opt's queue, split by process: the worker
processes, their task processes and the PostgreSQL backends of the benchmark's
database.

Runs ``--jobs`` no-op jobs on ``--workers`` worker processes (one slot each), as
bench/queue_throughput.py does, and reads the CPU time (user + system) of each
process from before the insert to the moment every job is done. Task processes
that a slot replaced during the run count through their parent's reaped-children
time. CPU time, unlike the throughput, changes little when other programs load the
machine. Usage::

    .venv/bin/python bench/queue_cpu.py [--jobs 3000] [--workers 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402
import psycopg  # noqa: E402

from bench.queue_common import (  # noqa: E402
    ProcessGroup,
    scratch_database,
    start_peptide_opt_workers,
    wait_until,
)
from peptide_opt.queue.migrations import upgrade  # noqa: E402


def _cpu_seconds(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def cpu_by_role(group: ProcessGroup, database: str) -> dict[str, float]:
    """Return the CPU seconds used so far by each role's processes."""
    used = {"worker": 0.0, "task process": 0.0, "PostgreSQL backend": 0.0}
    for worker in group.processes:
        parent = psutil.Process(worker.pid)
        times = parent.cpu_times()
        used["worker"] += times.user + times.system
        used["task process"] += times.children_user + times.children_system
        for child in parent.children(recursive=True):
            used["task process"] += _cpu_seconds(child)
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if command.startswith("postgres: ") and f" {database} " in command:
            used["PostgreSQL backend"] += _cpu_seconds(process)
    return used


def measure(n_jobs: int, n_workers: int, work: Path) -> tuple[float, dict[str, float]]:
    """Run the jobs and return the jobs per second and the CPU seconds by role."""
    group = ProcessGroup(work)
    with scratch_database("cpu") as url:
        upgrade(url)
        database = url.rsplit("/", 1)[1]
        try:
            start_peptide_opt_workers(group, url, n_workers)
            with psycopg.connect(url, autocommit=True) as db:
                user_id = str(uuid.uuid4())
                db.execute(
                    "INSERT INTO users (id, username) VALUES (%s, 'bench')", (user_id,)
                )
                before = cpu_by_role(group, database)
                started = time.monotonic()
                db.execute(
                    "INSERT INTO tasks (id, user_id, task_type, job_dir, status) "
                    "SELECT gen_random_uuid()::text, %s, 'peptide_opt.noop', '{}', "
                    "'pending' FROM generate_series(1, %s)",
                    (user_id, n_jobs),
                )
                wait_until(
                    lambda: (
                        db.execute(
                            "SELECT count(*) FROM tasks WHERE status = 'finished'"
                        ).fetchone()[0]
                        >= n_jobs
                    ),
                    timeout=600,
                    interval=0.02,
                )
                elapsed = time.monotonic() - started
                after = cpu_by_role(group, database)
        finally:
            group.stop()
    return n_jobs / elapsed, {role: after[role] - before[role] for role in before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000, help="number of no-op jobs")
    parser.add_argument(
        "--workers", type=int, default=8, help="number of worker processes"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="queue-cpu-") as folder:
        rate, used = measure(args.jobs, args.workers, Path(folder))
    print(f"{args.workers} workers, {args.jobs} no-op jobs: {rate:.0f} jobs/s")
    for role, seconds in [*used.items(), ("total", sum(used.values()))]:
        print(
            f"{role:<20} {seconds:6.2f} s CPU, {1000 * seconds / args.jobs:.3f} ms "
            "per job"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
