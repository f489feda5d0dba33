"""Scale-out on CPU-bound tasks of one core each: 2 workers against 1.

Each task spins one core for ``--iterations`` loop iterations (about a second on a
2-core machine). The same ``--tasks`` tasks run once with one worker process and
once with two (one task at a time each); the speed-up is the ratio of the two
wall-clock times from insert to the last finish. Usage::

    .venv/bin/python bench/queue_scaleout.py [--tasks 8] [--iterations 6000000]
"""

from __future__ import annotations

import argparse
import json
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
                return time.monotonic() - started
        finally:
            group.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8, help="tasks per run")
    parser.add_argument(
        "--iterations", type=int, default=6_000_000, help="loop iterations per task"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="queue-scaleout-") as folder:
        one = run_tasks(1, args.tasks, args.iterations, Path(folder))
        print(f"1 worker : {args.tasks} tasks in {one:.2f} s", flush=True)
        two = run_tasks(2, args.tasks, args.iterations, Path(folder))
        print(f"2 workers: {args.tasks} tasks in {two:.2f} s", flush=True)
    print(f"speed-up 2 workers / 1 worker: {one / two:.2f}x (target >= 1.8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
