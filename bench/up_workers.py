"""Run real 1CZY jobs through ``peptide-opt up`` with 1, 2 and 4 workers on 2 cores.

    .venv/bin/python -m bench.up_workers [--workers 1,2,4] [--jobs 8] [--cores 2]

For each worker count N in turn, the benchmark starts ``peptide-opt up --workers N
--cores C`` on a new empty database and a new local storage folder, so every worker gets
``WORKER_CORES`` = C / N, at least 1. Once the API is ready and N workers have a fresh
heartbeat, it creates one user and submits the jobs through ``POST /v1/tasks``: the
1CZY receptor and peptide with ``site_chain=B``, ``n_poses=2``,
``num_seq_per_target=2`` and ``selection=mpnn``. Each job runs the real pipeline
(docking, Vina scoring, ProteinMPNN design) and takes about 35 s alone on 2 idle cores
(``bench.pipeline 1czy`` with the same settings). When every task has finished, ``up``
gets SIGTERM and must exit with 0 and leave none of its processes behind.

Per N it prints, from the tasks' timestamps as ``GET /v1/tasks`` returns them:

- wall_s: first ``created_at`` to last ``finished_at``;
- jobs_per_min: jobs / wall_s, per minute;
- job_median_s, job_max_s: ``finished_at - started_at`` of each task;
- wait_median_s: ``started_at - created_at`` of each task (time in the queue);
- rss_peak_mb: the maximum, over samples once a second, of the summed resident set size
  of ``up`` and all its descendant processes (pages that processes share are counted
  once per process, so this overstates the memory in use);
- stop_s: SIGTERM until ``up`` has exited.

A failed or cancelled task, an exit of any child of ``up`` while the jobs run, or an
``up`` that does not stop stops the benchmark with the task's error or the log's tail.

``up`` and its workers import ``peptide_opt`` from the ``src/`` folder beside this
file. To measure one commit while the working tree changes, run the benchmark from an
export of it (``git archive HEAD | tar -x -C DIR``, then ``cd DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench.api_submit import create_users, wait_until_ready
from bench.queue_common import REPO_ROOT, scratch_database
from bench.up_startup import _free_port, _live_workers

RECEPTOR = REPO_ROOT / "examples" / "1czy" / "1czy_complex.pdb"
PEPTIDE_FASTA = REPO_ROOT / "examples" / "1czy" / "peptide.fasta"
JOB_FIELDS = {
    "site_chain": "B",
    "n_poses": "2",
    "num_seq_per_target": "2",
    "selection": "mpnn",
}

START_TIMEOUT_S = 180.0
# Generous for a job of about 35 s alone: N workers on 2 cores may each run slower.
JOB_TIMEOUT_S = 300.0
POLL_INTERVAL_S = 1.0
# SHUTDOWN_GRACE given to the workers, and the wait for `up` after SIGTERM, which
# covers its default stop timeout of SHUTDOWN_GRACE + 30 s with a margin.
SHUTDOWN_GRACE_S = 30
STOP_WAIT_S = SHUTDOWN_GRACE_S + 60.0


class BenchError(RuntimeError):
    """A failed task or a misbehaving ``up``, with the task's error or the exit code."""


@dataclasses.dataclass
class RunFigures:
    """Figures of one ``up --workers N`` run, in seconds unless named otherwise."""

    n_workers: int
    worker_cores: int
    n_jobs: int
    wall_s: float
    job_times_s: list[float]
    wait_times_s: list[float]
    rss_peak_mb: float | None
    stop_s: float
    load_before: float

    @property
    def jobs_per_min(self) -> float:
        return self.n_jobs / self.wall_s * 60.0


def up_environment(database_url: str, storage_root: str, port: int) -> dict[str, str]:
    """Return the environment of ``up``: its database, storage folder and API port."""
    return {
        **os.environ,
        # The package of the tree this file is in, ahead of the virtualenv's editable
        # install, so that a run from an exported commit measures that commit.
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")])
        ),
        "DATABASE_URL": database_url,
        "STORAGE_BACKEND": "local",
        "STORAGE_LOCAL_ROOT": storage_root,
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "SHUTDOWN_GRACE": str(SHUTDOWN_GRACE_S),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }


def wait_for_workers(database_url: str, n_workers: int, up: subprocess.Popen) -> None:
    """Wait until ``n_workers`` workers have a fresh heartbeat row."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while _live_workers(database_url) < n_workers:
        if up.poll() is not None:
            raise BenchError(
                f"up exited with {up.returncode} before its workers started"
            )
        if time.monotonic() > deadline:
            raise BenchError(
                f"{n_workers} workers did not start within {START_TIMEOUT_S:g} s"
            )
        time.sleep(0.2)


def submit_jobs(client: httpx.Client, n_jobs: int) -> list[str]:
    """Submit ``n_jobs`` 1CZY jobs through the API and return their task IDs."""
    receptor = RECEPTOR.read_bytes()
    fields = {"peptide": PEPTIDE_FASTA.read_text(), **JOB_FIELDS}
    task_ids = []
    for _ in range(n_jobs):
        response = client.post(
            "/v1/tasks", data=fields, files={"receptor": (RECEPTOR.name, receptor)}
        )
        if response.status_code != 201:
            raise BenchError(
                f"POST /v1/tasks returned {response.status_code}: {response.text}"
            )
        task_ids.append(response.json()["id"])
    return task_ids


def tree_rss_bytes(root: psutil.Process) -> int:
    """Return the summed resident set size of ``root`` and all its descendants."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass  # it exited between the listing and the read
    return total


def wait_for_tasks(
    client: httpx.Client,
    task_ids: list[str],
    up: subprocess.Popen,
    log_path: Path,
) -> tuple[list[dict], int]:
    """Poll the API until every task has ended, sampling the RSS of ``up``'s tree.

    Returns the tasks and the peak summed RSS in bytes.

    Raises BenchError when a task failed or was cancelled, when ``up`` or one of its
    children exited, or when the tasks did not end in time.
    """
    root = psutil.Process(up.pid)
    rss_peak = 0
    deadline = time.monotonic() + JOB_TIMEOUT_S * len(task_ids)
    while True:
        if up.poll() is not None:
            raise BenchError(f"up exited with {up.returncode} while the jobs ran")
        rss_peak = max(rss_peak, tree_rss_bytes(root))
        exits = log_events(log_path, "process_exited")
        if exits:
            raise BenchError(f"a child of up exited while the jobs ran: {exits[0]}")

        response = client.get("/v1/tasks", params={"limit": 200})
        response.raise_for_status()
        tasks = [task for task in response.json()["tasks"] if task["id"] in task_ids]
        if len(tasks) != len(task_ids):
            raise BenchError(
                f"GET /v1/tasks listed {len(tasks)} of {len(task_ids)} tasks"
            )
        unsuccessful = [
            task for task in tasks if task["status"] in ("failed", "cancelled")
        ]
        if unsuccessful:
            task = unsuccessful[0]
            raise BenchError(
                f"task {task['id']} is {task['status']} after {task['attempts']} "
                f"attempt(s) in step {task['current_step']}: {task['error']}"
            )
        if all(task["status"] == "finished" for task in tasks):
            return tasks, rss_peak
        if time.monotonic() > deadline:
            statuses = sorted(task["status"] for task in tasks)
            raise BenchError(f"the tasks timed out with statuses {statuses}")
        time.sleep(POLL_INTERVAL_S)


def log_events(log_path: Path, event: str) -> list[dict]:
    """Return the JSON log records of ``up`` and its children with this ``event``."""
    records = []
    with open(log_path, encoding="utf-8", errors="replace") as log:
        for line in log:
            if event not in line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and event in record.values():
                records.append(record)
    return records


def stop_up(up: subprocess.Popen) -> float:
    """Send SIGTERM to ``up`` and return the seconds until it exited.

    Raises BenchError when it does not exit within STOP_WAIT_S, exits with a code
    other than 0, or leaves a descendant process running.
    """
    descendants = psutil.Process(up.pid).children(recursive=True)
    started = time.monotonic()
    up.send_signal(signal.SIGTERM)
    try:
        up.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        message = f"up did not exit within {STOP_WAIT_S:g} s of SIGTERM"
        raise BenchError(message) from None
    stop_s = time.monotonic() - started
    if up.returncode != 0:
        raise BenchError(f"up exited with {up.returncode} after SIGTERM, expected 0")
    _, alive = psutil.wait_procs(descendants, timeout=5)
    if alive:
        pids = ", ".join(str(process.pid) for process in alive)
        raise BenchError(f"processes of up still run after it exited: {pids}")
    return stop_s


def log_tail(log_path: Path, n_lines: int = 20, max_chars: int = 400) -> str:
    """Return the last lines of the log, each cut to ``max_chars`` characters."""
    lines = log_path.read_text(errors="replace").splitlines()[-n_lines:]
    return "\n".join(line[:max_chars] for line in lines)


def seconds_between(start: str, end: str) -> float:
    elapsed = dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)
    return elapsed.total_seconds()


def summarize(n_workers: int, cores: int, tasks: list[dict]) -> dict[str, object]:
    """Return the timing figures of one run, computed from the tasks' timestamps."""
    first_created = min(task["created_at"] for task in tasks)
    last_finished = max(task["finished_at"] for task in tasks)
    return {
        "worker_cores": max(1, cores // n_workers),
        "wall_s": seconds_between(first_created, last_finished),
        "job_times_s": [
            seconds_between(task["started_at"], task["finished_at"]) for task in tasks
        ],
        "wait_times_s": [
            seconds_between(task["created_at"], task["started_at"]) for task in tasks
        ],
    }


def run_workers(n_workers: int, n_jobs: int, cores: int) -> RunFigures:
    """Start ``up --workers n_workers``, run ``n_jobs`` jobs through it, stop it."""
    load_before = os.getloadavg()[0]
    with (
        scratch_database(f"upw{n_workers}") as database_url,
        tempfile.TemporaryDirectory(prefix="bench-up-workers-") as folder,
    ):
        port = _free_port()
        env = up_environment(database_url, str(Path(folder) / "storage"), port)
        log_path = Path(folder) / "up.log"
        command = [
            sys.executable, "-m", "peptide_opt.cli", "up",
            "--workers", str(n_workers), "--cores", str(cores),
        ]
        with open(log_path, "wb") as log:
            up = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_ready(url, START_TIMEOUT_S)
            wait_for_workers(database_url, n_workers, up)
            [(_, key)] = asyncio.run(create_users(database_url, 1))
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
                task_ids = submit_jobs(client, n_jobs)
                tasks, rss_peak = wait_for_tasks(client, task_ids, up, log_path)
            stop_s = stop_up(up)
        except BenchError as error:
            raise BenchError(
                f"up --workers {n_workers}: {error}\nlast lines of its log:\n"
                + log_tail(log_path)
            ) from None
        finally:
            if up.poll() is None:
                up.send_signal(signal.SIGTERM)
                try:
                    up.wait(timeout=STOP_WAIT_S)
                except subprocess.TimeoutExpired:
                    up.kill()
                    up.wait()

    retried = [task["id"] for task in tasks if task["attempts"] != 1]
    if retried:
        print(f"note: tasks with more than one attempt: {retried}")
    return RunFigures(
        n_workers=n_workers,
        n_jobs=n_jobs,
        rss_peak_mb=rss_peak / 1e6 if rss_peak else None,
        stop_s=stop_s,
        load_before=load_before,
        **summarize(n_workers, cores, tasks),
    )


def print_table(runs: list[RunFigures]) -> None:
    rows = [
        ("workers", lambda run: f"{run.n_workers}"),
        ("WORKER_CORES", lambda run: f"{run.worker_cores}"),
        ("jobs", lambda run: f"{run.n_jobs}"),
        ("wall time (s)", lambda run: f"{run.wall_s:.1f}"),
        ("throughput (jobs/min)", lambda run: f"{run.jobs_per_min:.2f}"),
        (
            "job time median (s)",
            lambda run: f"{statistics.median(run.job_times_s):.1f}",
        ),
        ("job time max (s)", lambda run: f"{max(run.job_times_s):.1f}"),
        (
            "queue wait median (s)",
            lambda run: f"{statistics.median(run.wait_times_s):.1f}",
        ),
        (
            "peak RSS sum (MB)",
            lambda run: "n/a" if run.rss_peak_mb is None else f"{run.rss_peak_mb:.0f}",
        ),
        ("stop after SIGTERM (s)", lambda run: f"{run.stop_s:.1f}"),
        ("load average before", lambda run: f"{run.load_before:.2f}"),
    ]
    print("| figure | " + " | ".join(f"{run.n_workers} workers" for run in runs) + " |")
    print("|---|" + "---:|" * len(runs))
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(run) for run in runs) + " |")


def parse_worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--workers must be comma-separated whole numbers, got {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(
            f"--workers must list counts >= 1, got {text!r}"
        )
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=parse_worker_counts, default=[1, 2, 4],
        help="worker counts to run one after the other (default 1,2,4)",
    )
    parser.add_argument("--jobs", type=int, default=8, help="jobs per worker count")
    parser.add_argument(
        "--cores", type=int, default=2,
        help="cores that up divides between its workers (default 2)",
    )
    args = parser.parse_args()

    runs = []
    for n_workers in args.workers:
        try:
            run = run_workers(n_workers, args.jobs, args.cores)
        except BenchError as error:
            print(f"bench: {error}", file=sys.stderr)
            return 1
        print(
            f"up --workers {n_workers}: {run.wall_s:.1f} s for {run.n_jobs} jobs, "
            f"job times {[round(value, 1) for value in sorted(run.job_times_s)]}",
            flush=True,
        )
        runs.append(run)
    print_table(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
