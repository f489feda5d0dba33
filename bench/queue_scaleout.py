"""Scale-out on CPU-bound tasks of one core each: 2 workers against 1, read against
the machine's own ceiling.

Each task spins one core for ``--iterations`` loop iterations (the default is about
2 s of one core on the 2-core AMD EPYC machine of docs/benchmarks.md), so that the
fixed cost per task (claim, finish, process hand-off) is small beside the work. The
same ``--tasks`` tasks run once with one worker process and once with two (one task
at a time each); the speed-up is the ratio of the two wall-clock times from insert to
the last finish.

The ceiling comes from the same loop without the queue: one plain process runs
``--tasks`` loops one after another, then two plain processes run half of them each,
side by side. Its ratio is what the machine gives two processes at the time of the
run, which other load on the cores lowers. Usage::

    .venv/bin/python bench/queue_scaleout.py [--tasks 8] [--iterations 36000000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.synchronize
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from bench.queue_common import (  # noqa: E402
    ProcessGroup,
    scratch_database,
    start_peptide_opt_workers,
    wait_until,
)
from peptide_opt.queue.migrations import upgrade  # noqa: E402
from tests.handlers import spin_loop  # noqa: E402


def run_tasks(n_workers: int, n_tasks: int, iterations: int, work: Path) -> float:
    """Return the seconds from inserting ``n_tasks`` spin tasks to the last finish."""
    group = ProcessGroup(work)
    with scratch_database(f"scaleout_{n_workers}") as url:
        upgrade(url)
        try:
            start_peptide_opt_workers(group, url, n_workers, WORKER_CORES="1")
            with psycopg.connect(url, autocommit=True) as db:
                user_id = str(uuid.uuid4())
                db.execute(
                    "INSERT INTO users (id, username) VALUES (%s, 'bench')", (user_id,)
                )
                parameters = json.dumps({"iterations": iterations})
                started = time.monotonic()
                with db.transaction():
                    for _ in range(n_tasks):
                        db.execute(
                            "INSERT INTO tasks (id, user_id, task_type, job_dir, "
                            "status) VALUES (%s, %s, 'peptide_opt.spin', %s, "
                            "'pending')",
                            (str(uuid.uuid4()), user_id, parameters),
                        )
                wait_until(
                    lambda: (
                        db.execute(
                            "SELECT count(*) FROM tasks WHERE status = 'finished'"
                        ).fetchone()[0]
                        >= n_tasks
                    ),
                    timeout=1800,
                    interval=0.05,
                )
                elapsed = time.monotonic() - started
                _print_split(db)
                return elapsed
        finally:
            group.stop()


def _print_split(db: psycopg.Connection) -> None:
    """Print each worker's number of tasks and the seconds its tasks ran."""
    rows = db.execute(
        "SELECT worker_id, count(*), "
        "sum(extract(epoch FROM finished_at - started_at)) "
        "FROM task_attempts GROUP BY worker_id ORDER BY worker_id"
    ).fetchall()
    for worker_id, n_tasks, seconds in rows:
        print(f"  worker {worker_id}: {n_tasks} tasks, {seconds:.2f} s running")


def _spin_many(
    start: multiprocessing.synchronize.Barrier, n_loops: int, iterations: int
) -> None:
    start.wait()
    for _ in range(n_loops):
        spin_loop(iterations)


def run_plain(n_processes: int, n_loops: int, iterations: int) -> float:
    """Return the seconds that ``n_processes`` plain processes take to run
    ``n_loops`` spin loops in all, split evenly between them."""
    context = multiprocessing.get_context("spawn")
    # The clock starts once every process has started up and waits at the barrier,
    # so that interpreter starts and imports stay out of the time.
    start = context.Barrier(n_processes + 1)
    share, remainder = divmod(n_loops, n_processes)
    processes = [
        context.Process(
            target=_spin_many, args=(start, share + (index < remainder), iterations)
        )
        for index in range(n_processes)
    ]
    for process in processes:
        process.start()
    start.wait()
    started = time.monotonic()
    for process in processes:
        process.join()
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8, help="tasks per run")
    parser.add_argument(
        "--iterations",
        type=int,
        default=36_000_000,
        help="loop iterations per task",
    )
    args = parser.parse_args()
    # Each figure shows up as soon as it is measured.
    sys.stdout.reconfigure(line_buffering=True)

    with tempfile.TemporaryDirectory(prefix="queue-scaleout-") as folder:
        plain_one = run_plain(1, args.tasks, args.iterations)
        print(f"plain, 1 process  : {args.tasks} loops in {plain_one:.2f} s")
        plain_two = run_plain(2, args.tasks, args.iterations)
        print(f"plain, 2 processes: {args.tasks} loops in {plain_two:.2f} s")
        one = run_tasks(1, args.tasks, args.iterations, Path(folder))
        print(f"queue, 1 worker   : {args.tasks} tasks in {one:.2f} s")
        two = run_tasks(2, args.tasks, args.iterations, Path(folder))
        print(f"queue, 2 workers  : {args.tasks} tasks in {two:.2f} s")

    print(f"seconds per task, 1 worker: {one / args.tasks:.2f} s")
    print(f"machine ceiling, 2 plain processes / 1: {plain_one / plain_two:.2f}x")
    print(f"speed-up, 2 workers / 1 worker: {one / two:.2f}x (target >= 1.8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
