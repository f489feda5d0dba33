"""Shared parts of the queue benchmarks: scratch databases, worker processes of
peptide-opt, procrastinate and pgqueuer, and the figures printed.

Every benchmark creates its own databases on the server of ``BENCH_ADMIN_URL``
(default: the local server, user postgres) and drops them when it ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

REPO_ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get(
    "BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PEPTIDE_OPT_HANDLERS = "tests.handlers:HANDLERS"


# -- databases ------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_database(label: str) -> Iterator[str]:
    """Create an empty database for one benchmark; yield its URL; drop it."""
    name = f"peptide_opt_bench_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(
            psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name))
        )
    parts = urlsplit(ADMIN_URL)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
            connection.execute(
                psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    psycopg.sql.Identifier(name)
                )
            )


def database_transactions(url: str) -> int:
    """Committed plus rolled-back transactions of the database (pg_stat_database)."""
    with psycopg.connect(url, autocommit=True) as connection:
        # Statistics of other backends reach the view only when those backends
        # flush them, so this session can only ask for a fresh snapshot.
        connection.execute("SELECT pg_stat_clear_snapshot()")
        row = connection.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        ).fetchone()
    return int(row[0])


# -- processes ------------------------------------------------------------------------


class ProcessGroup:
    """Subprocesses started by one benchmark, stopped together."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen] = []

    def start(self, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"process-{len(self.processes)}.log", "wb")
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.log_dir
        )
        log.close()
        self.processes.append(process)
        return process

    def stop(self, timeout: float = 20.0) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def base_environment(url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        DATABASE_URL=url,
        BENCH_DATABASE_URL=url,
        PEPTIDE_OPT_EXTRA_HANDLERS=PEPTIDE_OPT_HANDLERS,
        LOG_LEVEL="WARNING",
    )
    return env


def start_peptide_opt_workers(
    group: ProcessGroup, url: str, n_workers: int, **env: str
) -> None:
    """Start ``n_workers`` worker processes (one task at a time each) and wait until
    every one has its row in ``workers``, which it writes once it listens."""
    environment = base_environment(url) | {"MAX_WORKERS": "1"} | env
    for _ in range(n_workers):
        group.start([sys.executable, "-m", "peptide_opt.cli", "worker"], environment)
    wait_until(
        lambda: _count(url, "SELECT count(*) FROM workers") >= n_workers,
        timeout=60,
    )


def start_procrastinate_workers(group: ProcessGroup, url: str, n_workers: int) -> None:
    environment = base_environment(url)
    for _ in range(n_workers):
        group.start(
            [
                sys.executable,
                "-m",
                "procrastinate",
                "--app",
                "bench.queue_peers.procrastinate_app",
                "worker",
                "--concurrency",
                "1",
                "--listen-notify",
            ],
            environment,
        )
    _wait_for_listeners(url, n_workers)


def start_pgqueuer_workers(group: ProcessGroup, url: str, n_workers: int) -> None:
    environment = base_environment(url)
    for _ in range(n_workers):
        group.start([sys.executable, "-m", "bench.queue_peers"], environment)
    _wait_for_listeners(url, n_workers)


def _wait_for_listeners(url: str, n_workers: int) -> None:
    # Peer workers show no ready signal in the database: wait for their connections,
    # then give them two seconds to run LISTEN. The first jobs of each run are warm-up
    # and not measured.
    wait_until(
        lambda: (
            _count(
                url,
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            >= n_workers
        ),
        timeout=60,
    )
    time.sleep(2.0)


def _count(url: str, statement: str) -> int:
    with psycopg.connect(url, autocommit=True) as connection:
        return int(connection.execute(statement).fetchone()[0])


def wait_until(predicate, timeout: float, interval: float = 0.05) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"condition not met within {timeout:g} s")
        time.sleep(interval)
    return time.monotonic() - start


# -- figures --------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Return the ``fraction`` quantile (0-1), interpolating between ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def describe_ms(values_s: list[float]) -> str:
    values = [value * 1000 for value in values_s]
    return (
        f"n={len(values)} p50={percentile(values, 0.5):.2f} ms "
        f"p99={percentile(values, 0.99):.2f} ms mean={statistics.mean(values):.2f} ms "
        f"max={max(values):.2f} ms"
    )


def read_start_times(path: Path) -> dict[str, float]:
    """Map each key to the first start time its handler appended (``key ... time``)."""
    starts: dict[str, float] = {}
    if not path.exists():
        return starts
    for line in path.read_text().splitlines():
        parts = line.split()
        starts.setdefault(parts[0], float(parts[-1]))
    return starts
