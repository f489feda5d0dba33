"""Time ``peptide-opt up``: start to ready, stop, and the cost of the workers' probe.

    .venv/bin/python -m bench.up_startup [--runs 3] [--workers 2]

Each run starts ``peptide-opt up --workers N`` on a new empty database (so the run
includes the migrations) with local storage, and prints:

- ready_s: start until ``/health/ready`` answers 200;
- workers_s: start until N workers have a row with a fresh heartbeat;
- stop_s: SIGTERM until ``up`` has exited, with no task running.

It also times one run of ``peptide-opt workers`` (what a liveness probe starts) and its
peak memory, which the probe timeouts and the pod's memory headroom must allow for.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import psycopg

from bench.queue_common import scratch_database

TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _live_workers(url: str) -> int:
    with psycopg.connect(url) as connection:
        try:
            return connection.execute(
                "SELECT count(*) FROM workers WHERE heartbeat_at > "
                "(now() AT TIME ZONE 'utc') - interval '60 seconds'"
            ).fetchone()[0]
        except psycopg.errors.UndefinedTable:
            return 0  # the migrations have not run yet


def _ready(port: int) -> bool:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def time_one_run(n_workers: int) -> dict[str, float]:
    """Start, wait for readiness and the workers, stop; return the three durations."""
    with scratch_database("up") as url, tempfile.TemporaryDirectory() as storage:
        port = _free_port()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "STORAGE_BACKEND": "local",
            "STORAGE_LOCAL_ROOT": storage,
            "API_HOST": "127.0.0.1",
            "API_PORT": str(port),
            "SHUTDOWN_GRACE": "10",
        }
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-m", "peptide_opt.cli", "up", "--workers", str(n_workers)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            figures = {}
            deadline = started + TIMEOUT_S
            while "ready_s" not in figures or "workers_s" not in figures:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("up did not become ready; run it by hand to see")
                if "ready_s" not in figures and _ready(port):
                    figures["ready_s"] = time.monotonic() - started
                if "workers_s" not in figures and _live_workers(url) >= n_workers:
                    figures["workers_s"] = time.monotonic() - started
                time.sleep(0.05)
            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=TIMEOUT_S)
            figures["stop_s"] = time.monotonic() - stopping
            return figures
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def time_probe() -> tuple[float, float]:
    """Run ``peptide-opt workers --help`` once; return (seconds, peak RSS in MiB)."""
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "peptide_opt.cli", "workers", "--help"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, peak_kib / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    probe_s, probe_mib = time_probe()
    runs = [time_one_run(args.workers) for _ in range(args.runs)]
    print(f"peptide-opt up --workers {args.workers}, {args.runs} runs (median, max):")
    for key in ("ready_s", "workers_s", "stop_s"):
        values = [run[key] for run in runs]
        print(f"  {key:<10} {statistics.median(values):6.2f} {max(values):6.2f}")
    print(f"probe process (peptide-opt workers --help): {probe_s:.2f} s, "
          f"peak RSS {probe_mib:.0f} MiB")


if __name__ == "__main__":
    main()
