"""Throughput of no-op tasks: the Celery executor against the PostgreSQL worker.

    .venv/bin/python -m bench.celery_vs_postgres [--tasks 500] [--workers 2]
        [--rounds 3]

Both modes get the same handler (``peptide_opt.noop`` of ``tests/handlers.py``) and the
same number of worker processes, each running one task at a time (MAX_WORKERS=1). A
round inserts ``--tasks`` rows in one transaction, as the platform inserts them (plain
INSERTs, woken by the insert trigger's NOTIFY), and times the commit until the last
row is finished:

- postgres: ``peptide-opt worker`` processes claim rows from the table;
- celery: ``peptide-opt dispatch`` sends the ids to Redis and ``peptide-opt worker``
  processes with EXECUTOR=celery claim each row by id.

Each mode has its own new database; the Redis database (default 10, ``--redis-url``)
is flushed before each Celery round. Rounds alternate between the modes. The script
prints tasks per second for each round, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from peptide_opt.queue.migrations import upgrade

REPO_ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TIMEOUT_S = 600.0


def _database_url(name: str) -> str:
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))


def create_database() -> tuple[str, str]:
    """Create a migrated scratch database; return its name and URL."""
    name = f"peptide_opt_bench_celery_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = _database_url(name)
    upgrade(url)
    return name, url


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def environment(database_url: str, executor: str, redis_url: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DB_", "PEPTIDE_OPT_", "MAX_", "TASK_", "LEASE_"))
    }
    env.update(
        DATABASE_URL=database_url,
        PYTHONPATH=str(REPO_ROOT),
        PEPTIDE_OPT_EXTRA_HANDLERS="tests.handlers:HANDLERS",
        EXECUTOR=executor,
        CELERY_BROKER_URL=redis_url,
        MAX_WORKERS="1",
        WORKER_CORES="1",
        LOG_LEVEL="WARNING",
    )
    return env


def start(command: str, env: dict[str, str], log_folder: Path) -> subprocess.Popen:
    log = open(log_folder / f"{command}-{uuid.uuid4().hex[:6]}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "peptide_opt.cli", command],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {TIMEOUT_S:g} s waiting for {what}")
        time.sleep(0.02)


def insert_tasks(connection: psycopg.Connection, n_tasks: int) -> None:
    user_id = str(uuid.uuid4())
    rows = [(str(uuid.uuid4()), user_id) for _ in range(n_tasks)]
    with connection.transaction():
        connection.execute(
            "INSERT INTO users (id, username) VALUES (%s, %s)",
            (user_id, f"bench-{user_id[:8]}"),
        )
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO tasks (id, user_id, task_type, job_dir, status) "
                "VALUES (%s, %s, 'peptide_opt.noop', '{}', 'pending')",
                rows,
            )


def count(connection: psycopg.Connection, sql: str) -> int:
    return connection.execute(sql).fetchone()[0]


def run_round(mode: str, args: argparse.Namespace, log_folder: Path) -> float:
    """Run one round in ``mode``; return finished tasks per second."""
    name, url = create_database()
    processes: list[subprocess.Popen] = []
    try:
        env = environment(url, mode, args.redis_url)
        if mode == "celery":
            redis.Redis.from_url(args.redis_url).flushdb()
            processes.append(start("dispatch", env, log_folder))
        processes += [start("worker", env, log_folder) for _ in range(args.workers)]
        with psycopg.connect(url, autocommit=True) as connection:
            wait_until(
                lambda: (
                    count(connection, "SELECT count(*) FROM workers") >= args.workers
                ),
                f"{args.workers} workers",
            )
            # The dispatcher has no row; give it time to LISTEN after its start-up.
            time.sleep(2.0 if mode == "celery" else 0.5)

            started = time.monotonic()
            insert_tasks(connection, args.tasks)
            wait_until(
                lambda: (
                    count(
                        connection,
                        "SELECT count(*) FROM tasks WHERE status = 'finished'",
                    )
                    == args.tasks
                ),
                f"{args.tasks} tasks to finish",
            )
            elapsed = time.monotonic() - started
            n_attempts = count(connection, "SELECT count(*) FROM task_attempts")
        if n_attempts != args.tasks:
            raise SystemExit(f"{mode}: {n_attempts} attempts for {args.tasks} tasks")
        return args.tasks / elapsed
    finally:
        stop(processes)
        drop_database(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    args = parser.parse_args()

    rates: dict[str, list[float]] = {"postgres": [], "celery": []}
    with tempfile.TemporaryDirectory(prefix="peptide-opt-bench-") as folder:
        for round_index in range(1, args.rounds + 1):
            for mode in ("postgres", "celery"):
                rate = run_round(mode, args, Path(folder))
                rates[mode].append(rate)
                print(f"round {round_index} {mode:<8} {rate:8.1f} tasks/s", flush=True)

    postgres = statistics.median(rates["postgres"])
    celery = statistics.median(rates["celery"])
    print(
        f"median: postgres {postgres:.1f} tasks/s, celery {celery:.1f} tasks/s, "
        f"celery/postgres {celery / postgres:.2f} "
        f"({args.tasks} no-op tasks, {args.workers} worker processes, "
        "one task at a time each)"
    )


if __name__ == "__main__":
    main()
