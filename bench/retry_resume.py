"""Benchmark a retried 1CZY task that resumes after ``dock`` against one full attempt.

Usage::

    .venv/bin/python -m bench.retry_resume            # 10 poses x 10 designs, mpnn
    .venv/bin/python -m bench.retry_resume --poses 2 --designs 2 --kill task

Both tasks run the README's 1CZY job (``1czy_complex.pdb``, PQQATDD, ``site_chain=B``)
through real ``peptide-opt worker`` processes on a scratch PostgreSQL database and local
storage, one task at a time. The first task runs without interruption. During the second
task's ``design`` step the benchmark sends SIGKILL to its worker (``--kill worker``, the
task process dies with it) or only to the task process (``--kill task``). With
``--kill worker`` a new worker recovers the expired lease and runs the second attempt.
With ``--kill task`` the same worker retries. The second attempt restores the
checkpoints from storage. The benchmark checks that it ran neither ``dock`` nor any
earlier step.

An attempt's duration is the task row's ``started_at`` (its claim) to ``finished_at``,
both from the PostgreSQL clock. Step times are the pipeline's own (``timings`` in
result.json). ``upload`` is the worker's interval from the ``analyze`` report to the
``upload`` report, which covers writing the outputs and the manifest and uploading
them. CPU is the user and system time of the worker and all its descendants during
the attempt. It depends less than wall time on other work sharing the cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import psycopg
from psycopg.rows import dict_row

from bench.queue_common import REPO_ROOT, scratch_database, wait_until
from peptide_opt.queue.migrations import upgrade

EXAMPLE_DIR = REPO_ROOT / "examples" / "1czy"
BUCKET = "astramolecula"
TASK_TYPE = "peptide_optimization"
PIPELINE_STEPS = (
    "prepare", "model", "site", "dock", "score", "assemble", "design", "rescore",
    "analyze",
)
# A task killed during design must load the checkpoints of all these steps.
STEPS_BEFORE_DESIGN = PIPELINE_STEPS[: PIPELINE_STEPS.index("design")]
TASK_TIMEOUT_S = 1800.0


class BenchmarkFailure(Exception):
    """The product did not behave as the benchmark requires (a defect, not a figure)."""


# -- the job and its task ------------------------------------------------------------


def job_config(poses: int, designs: int, selection: str) -> str:
    return (
        f"n_poses={poses}\nnum_seq_per_target={designs}\nsite_chain=B\n"
        f"selection={selection}\nreceptor_pdb_filename=1czy_complex.pdb\n"
    )


def store_job(storage_root: Path, config: str) -> str:
    """Write one 1CZY job into local storage; return its prefix."""
    prefix = f"jobs/{TASK_TYPE}/{uuid.uuid4()}"
    folder = storage_root / BUCKET / prefix
    (folder / "input").mkdir(parents=True)
    shutil.copy(EXAMPLE_DIR / "1czy_complex.pdb", folder / "input")
    shutil.copy(EXAMPLE_DIR / "peptide.fasta", folder / "input")
    (folder / "optimization_config.txt").write_text(config)
    return prefix


class Queue:
    """The scratch database's tasks, as the platform inserts and reads them."""

    def __init__(self, url: str) -> None:
        self.connection = psycopg.connect(url, autocommit=True, row_factory=dict_row)
        self.user_id = str(uuid.uuid4())
        self.connection.execute(
            "INSERT INTO users (id, username) VALUES (%s, %s)",
            (self.user_id, "bench-retry-resume"),
        )

    def close(self) -> None:
        self.connection.close()

    def add_task(self, prefix: str) -> str:
        task_id = str(uuid.uuid4())
        self.connection.execute(
            "INSERT INTO tasks (id, user_id, task_type, job_dir, status) "
            "VALUES (%s, %s, %s, %s, 'pending')",
            (task_id, self.user_id, TASK_TYPE, prefix),
        )
        return task_id

    def task(self, task_id: str) -> dict:
        return self.connection.execute(
            "SELECT * FROM tasks WHERE id = %s", (task_id,)
        ).fetchone()

    def attempts(self, task_id: str) -> list[dict]:
        return self.connection.execute(
            "SELECT * FROM task_attempts WHERE task_id = %s ORDER BY attempt",
            (task_id,),
        ).fetchall()

    def has_worker(self, pid: int) -> bool:
        row = self.connection.execute(
            "SELECT count(*) AS n FROM workers WHERE pid = %s", (pid,)
        ).fetchone()
        return row["n"] > 0

    def wait_until_ended(self, task_id: str) -> dict:
        wait_until(
            lambda: self.task(task_id)["status"] in ("finished", "failed", "cancelled"),
            timeout=TASK_TIMEOUT_S,
            interval=0.1,
        )
        return self.task(task_id)


# -- worker processes ----------------------------------------------------------------


class Workers:
    """``peptide-opt worker`` processes of this benchmark, each with its own log."""

    def __init__(self, folder: Path, environment: dict[str, str]) -> None:
        self.folder = folder
        self.environment = environment
        self.processes: list[subprocess.Popen] = []
        self.logs: dict[int, Path] = {}

    def log_path(self, process: subprocess.Popen) -> Path:
        return self.logs[process.pid]

    def start(self, queue: Queue) -> subprocess.Popen:
        """Start a worker and wait until it has registered in ``workers``."""
        index = len(self.processes)
        # The worker does not create its --workdir.
        (self.folder / f"tasks-{index}").mkdir()
        command = [
            sys.executable, "-m", "peptide_opt.cli", "worker",
            "--retry-delay", "0.2", "--workdir", str(self.folder / f"tasks-{index}"),
        ]
        log_path = self.folder / f"worker-{index}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, env=self.environment, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.folder,
            )
        self.logs[process.pid] = log_path
        self.processes.append(process)
        wait_until(lambda: self._registered(queue, process), timeout=120, interval=0.2)
        return process

    def _registered(self, queue: Queue, process: subprocess.Popen) -> bool:
        if process.poll() is not None:
            raise BenchmarkFailure(
                f"worker {process.pid} exited with {process.returncode} before it "
                f"registered:\n{self.log_path(process).read_text()[-3000:]}"
            )
        return queue.has_worker(process.pid)

    def stop(self, process: subprocess.Popen, timeout: float = 60.0) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        for process in self.processes:
            self.stop(process, timeout=30.0)

    def log_events(self, process: subprocess.Popen, since: datetime.datetime) -> list:
        """Return the worker's JSON log records from ``since`` (UTC) on.

        Its task processes log into the same stream.
        """
        events = []
        for line in self.log_path(process).read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict) or "time" not in event:
                continue
            if datetime.datetime.fromisoformat(event["time"]) >= since:
                events.append(event)
        return events


def worker_environment(url: str, storage_root: Path, args: argparse.Namespace) -> dict:
    # The machine's own queue and storage settings must not reach the workers.
    prefixes = ("DB_", "PEPTIDE_OPT_", "MAX_", "TASK_", "LEASE_", "STORAGE_", "SEAWEED_")
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith(prefixes)
    }
    environment.update(
        DATABASE_URL=url,
        STORAGE_BACKEND="local",
        STORAGE_LOCAL_ROOT=str(storage_root),
        SEAWEED_BUCKET=BUCKET,
        MAX_WORKERS="1",
        MAX_ATTEMPTS="2",
        WORKER_CORES=str(args.cores),
        LEASE_SECONDS=str(args.lease_seconds),
        # An idle worker's heartbeat, which also recovers expired leases, runs every
        # min(POLL_INTERVAL, LEASE_SECONDS / 2) seconds.
        POLL_INTERVAL=str(args.lease_seconds),
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
    )
    return environment


def kill_process_tree(process: subprocess.Popen, children_only: bool) -> list[int]:
    """SIGKILL the worker's task processes (and the worker unless ``children_only``).

    Returns the killed pids. The task processes die with their worker on their own
    (PR_SET_PDEATHSIG); any that are still alive 10 s later are killed by pid.
    """
    children = psutil.Process(process.pid).children(recursive=True)
    if not children:
        raise BenchmarkFailure(f"worker {process.pid} runs no task process to kill")
    killed = [child.pid for child in children]
    if children_only:
        for child in children:
            child.kill()
    else:
        process.kill()
        process.wait()
        killed.insert(0, process.pid)
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        child.kill()
    return killed


def tree_cpu_seconds(process: subprocess.Popen) -> float:
    """Return the CPU time (user + system, s) a worker and its descendants have used.

    Each live process adds its own time and that of the children it has reaped, so a
    design process counts while it runs and after its parent reaped it. A process that
    has exited but is not yet reaped counts nowhere.
    """
    total = 0.0
    try:
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return total
    for member in tree:
        try:
            times = member.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def wait_for_attempt(
    queue: Queue, task_id: str, attempt: int, worker: subprocess.Popen
) -> tuple[dict, float]:
    """Wait until ``attempt`` of the task has ended; return the row and its CPU time.

    The CPU time is the worker tree's from the first poll (every 0.1 s) that finds
    the attempt claimed until the task ended.
    """
    def claimed() -> bool:
        row = queue.task(task_id)
        return row["attempts"] >= attempt or row["status"] in ("finished", "failed")

    wait_until(claimed, timeout=TASK_TIMEOUT_S, interval=0.1)
    cpu_at_claim = tree_cpu_seconds(worker)
    row = queue.wait_until_ended(task_id)
    return row, tree_cpu_seconds(worker) - cpu_at_claim


# -- the two tasks -------------------------------------------------------------------


def run_full_task(queue: Queue, workers: Workers, storage_root: Path, config: str):
    """Run one task without interruption; return its row, attempts and result.json."""
    worker = workers.start(queue)
    prefix = store_job(storage_root, config)
    task_id = queue.add_task(prefix)
    row, cpu_s = wait_for_attempt(queue, task_id, 1, worker)
    workers.stop(worker)
    if row["status"] != "finished" or row["attempts"] != 1:
        raise BenchmarkFailure(
            f"the uninterrupted task {task_id} ended {row['status']} after "
            f"{row['attempts']} attempts: {row['error']}"
        )
    return {
        "row": row,
        "cpu_s": cpu_s,
        "attempts": queue.attempts(task_id),
        "result": read_output(storage_root, prefix, "result.json", as_json=True),
    }


def wait_for_design(queue: Queue, task_id: str, storage_root: Path, prefix: str) -> None:
    """Wait until the task's design step runs.

    ``current_step`` is the last finished step, so it reads ``assemble`` while design
    runs. The assemble checkpoint in storage shows that the worker uploaded it.
    """
    done_marker = storage_root / BUCKET / prefix / "work" / "assemble" / "done"

    def design_running() -> bool:
        row = queue.task(task_id)
        if row["status"] != "processing" and row["status"] != "pending":
            raise BenchmarkFailure(
                f"task {task_id} ended {row['status']} before design: {row['error']}"
            )
        return row["current_step"] == "assemble" and done_marker.is_file()

    wait_until(design_running, timeout=TASK_TIMEOUT_S, interval=0.1)


def run_killed_task(
    queue: Queue,
    workers: Workers,
    storage_root: Path,
    config: str,
    args: argparse.Namespace,
):
    """Kill a task during design, let it be retried; return what both attempts did."""
    worker = workers.start(queue)
    prefix = store_job(storage_root, config)
    task_id = queue.add_task(prefix)

    wait_for_design(queue, task_id, storage_root, prefix)
    time.sleep(args.kill_after)
    before_kill = queue.task(task_id)
    if before_kill["current_step"] != "assemble":
        raise BenchmarkFailure(
            f"design finished within {args.kill_after:g} s (current_step is "
            f"{before_kill['current_step']}); lower --kill-after"
        )
    killed_at = datetime.datetime.now(datetime.timezone.utc)
    killed_pids = kill_process_tree(worker, children_only=args.kill == "task")

    second_worker = worker if args.kill == "task" else workers.start(queue)
    row, cpu_s = wait_for_attempt(queue, task_id, 2, second_worker)
    workers.stop(second_worker)
    run_log = read_output(storage_root, prefix, "run.log")
    if row["status"] != "finished":
        worker_log = workers.log_path(second_worker).read_text(errors="replace")
        raise BenchmarkFailure(
            f"the retried task {task_id} ended {row['status']} after "
            f"{row['attempts']} attempts: {row['error']}\nrun.log of the last attempt:"
            f"\n{run_log}\nworker log:\n{worker_log[-5000:]}"
        )

    return {
        "row": row,
        "cpu_s": cpu_s,
        "before_kill": before_kill,
        "killed_at": killed_at,
        "killed_pids": killed_pids,
        "attempts": queue.attempts(task_id),
        "result": read_output(storage_root, prefix, "result.json", as_json=True),
        "run_log": run_log,
        "events": workers.log_events(second_worker, since=killed_at),
        "leftover_checkpoints": (storage_root / BUCKET / prefix / "work").exists(),
    }


def read_output(storage_root: Path, prefix: str, name: str, as_json: bool = False):
    path = storage_root / BUCKET / prefix / "output" / name
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    return json.loads(text) if as_json else text


# -- checks ---------------------------------------------------------------------------


def check_resumed(killed: dict, expected_results: int) -> list[str]:
    """Return every way the retried task did not resume after assemble (empty: none)."""
    row, result = killed["row"], killed["result"]
    problems = []
    if row["attempts"] != 2:
        problems.append(f"the task took {row['attempts']} attempts, expected 2")
    if result is None:
        return problems + ["the retried task left no output/result.json"]
    problems += check_result(result, expected_results)
    problems += check_run_log(killed["run_log"] or "")
    problems += check_worker_log(killed["events"])
    problems += check_step_timings(
        killed["before_kill"]["step_timings"] or {}, row["step_timings"] or {}
    )
    if killed["leftover_checkpoints"]:
        problems.append("PREFIX/work/ is still in storage after the task finished")
    return problems


def check_result(result: dict, expected_results: int) -> list[str]:
    problems = []
    if result.get("resumed_steps") != list(STEPS_BEFORE_DESIGN):
        problems.append(
            f"resumed_steps is {result.get('resumed_steps')}, expected "
            f"{list(STEPS_BEFORE_DESIGN)}"
        )
    rerun = [step for step in STEPS_BEFORE_DESIGN if step in result["timings"]]
    if rerun:
        problems.append(f"result.json timings list steps it ran again: {rerun}")
    n_results = len(result.get("results", []))
    if n_results < expected_results:
        problems.append(
            f"result.json lists {n_results} results, expected at least "
            f"{expected_results}"
        )
    return problems


def check_run_log(run_log: str) -> list[str]:
    problems = []
    lines = run_log.splitlines()
    dock_started = [line for line in lines if "step_started step=dock" in line]
    if dock_started:
        problems.append(f"run.log of the second attempt: {dock_started}")
    if not any("step_resumed step=dock" in line for line in lines):
        problems.append("run.log of the second attempt has no step_resumed step=dock")
    return problems


def check_worker_log(events: list[dict]) -> list[str]:
    # The worker logs "step_finished" with a step field when a step's report reaches
    # it. The pipeline logs "step_started step=NAME" from the task process.
    reported = [e.get("step") for e in events if e.get("event") == "step_finished"]
    started = [
        e["event"].removeprefix("step_started step=")
        for e in events
        if str(e.get("event", "")).startswith("step_started step=")
    ]
    problems = []
    for source, steps in (("step_finished", reported), ("step_started", started)):
        rerun = [step for step in STEPS_BEFORE_DESIGN if step in steps]
        if rerun:
            problems.append(f"the worker log has {source} after the kill: {rerun}")
    if "design" not in reported:
        problems.append("the worker log has no step_finished of design after the kill")
    return problems


def check_step_timings(before_kill: dict, after: dict) -> list[str]:
    # The first attempt's finish (kill=task) stores its step times again, rounded to
    # 1 ms. A dock run by the second attempt would differ by far more.
    dock_before, dock_after = before_kill.get("dock"), after.get("dock")
    if dock_before is None or dock_after is None:
        return [f"step_timings.dock is missing: {dock_before} before the kill, "
                f"{dock_after} after the retry"]
    if abs(dock_before - dock_after) > 0.01:
        return [
            f"step_timings.dock changed from {dock_before} to {dock_after}: the "
            "worker reported dock again"
        ]
    return []


# -- figures --------------------------------------------------------------------------


def attempt_seconds(row: dict) -> float:
    return (row["finished_at"] - row["started_at"]).total_seconds()


def format_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def step_rows(full: dict, killed: dict) -> list[tuple[str, str, str]]:
    """Return the table rows: each step, upload, the pipeline and the attempt."""
    full_timings = full["result"]["timings"]
    resumed_timings = killed["result"]["timings"]
    resumed_steps = killed["result"]["resumed_steps"]
    rows = [("step", "full attempt", "resumed attempt")]
    for step in PIPELINE_STEPS:
        if step not in full_timings and step not in resumed_timings:
            continue
        if step in resumed_steps:
            resumed = "checkpoint"
        else:
            resumed = format_seconds(resumed_timings.get(step))
        rows.append((step, format_seconds(full_timings.get(step)), resumed))

    full_upload = (full["row"]["step_timings"] or {}).get("upload")
    resumed_upload = (killed["row"]["step_timings"] or {}).get("upload")
    rows.append(("upload", format_seconds(full_upload), format_seconds(resumed_upload)))
    rows.append((
        "pipeline",
        format_seconds(full_timings["total"]),
        format_seconds(resumed_timings["total"]),
    ))
    rows.append((
        "attempt",
        format_seconds(attempt_seconds(full["row"])),
        format_seconds(attempt_seconds(killed["row"])),
    ))
    rows.append(("CPU", format_seconds(full["cpu_s"]), format_seconds(killed["cpu_s"])))
    return rows


def print_report(full: dict, killed: dict, args: argparse.Namespace, loads) -> None:
    print(
        f"1CZY job: {args.poses} poses x {args.designs} designs, selection="
        f"{args.selection}, WORKER_CORES={args.cores}, LEASE_SECONDS="
        f"{args.lease_seconds:g}, kill={args.kill} {args.kill_after:g} s into design"
    )
    start_load = ", ".join(f"{value:.2f}" for value in loads[0])
    end_load = ", ".join(f"{value:.2f}" for value in loads[1])
    print(f"load average (1, 5, 15 min): start {start_load}; end {end_load}")
    outcomes = ", ".join(f"{a['attempt']}={a['outcome']}" for a in killed["attempts"])
    killed_pids = ", ".join(map(str, killed["killed_pids"]))
    print(
        f"killed at {killed['killed_at']:%H:%M:%S} UTC (pids {killed_pids}); "
        f"attempt outcomes: {outcomes}"
    )
    # The database's timestamps are UTC without a time zone.
    killed_at = killed["killed_at"].replace(tzinfo=None)
    first_s = (killed_at - killed["attempts"][0]["started_at"]).total_seconds()
    recovery_s = (killed["row"]["started_at"] - killed_at).total_seconds()
    print(
        f"first attempt: {first_s:.1f} s from its claim to the kill; the second "
        f"attempt was claimed {recovery_s:.1f} s after the kill"
    )
    print()

    for name, full_text, resumed_text in step_rows(full, killed):
        print(f"  {name:<10} {full_text:>14} {resumed_text:>16}")
    print()

    full_s = attempt_seconds(full["row"])
    saved_s = full_s - attempt_seconds(killed["row"])
    print(
        f"time saved by resuming: {saved_s:.1f} s ({100 * saved_s / full_s:.0f} % of "
        "the full attempt)"
    )
    saved_cpu_s = full["cpu_s"] - killed["cpu_s"]
    print(
        f"CPU time saved: {saved_cpu_s:.1f} s ({100 * saved_cpu_s / full['cpu_s']:.0f} "
        "% of the full attempt's)"
    )
    print(
        "checks passed: resumed_steps = "
        + ",".join(killed["result"]["resumed_steps"])
        + "; the second attempt's timings, run.log, worker log and step_timings show "
        "no step before design"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--poses", type=int, default=10, help="n_poses (default 10)")
    parser.add_argument(
        "--designs", type=int, default=10, help="num_seq_per_target (default 10)"
    )
    parser.add_argument(
        "--selection", choices=("mpnn", "rescore"), default="mpnn",
        help="the job's selection (default mpnn, which skips the rescore step)",
    )
    parser.add_argument(
        "--kill", choices=("worker", "task"), default="worker",
        help="SIGKILL the whole worker, then start another one (default), or only "
        "its task process, which the same worker then retries",
    )
    parser.add_argument(
        "--kill-after", type=float, default=10.0, metavar="SECONDS",
        help="seconds into the design step at which the kill comes (default 10)",
    )
    parser.add_argument(
        "--lease-seconds", type=float, default=10.0, metavar="SECONDS",
        help="LEASE_SECONDS of the workers (default 10)",
    )
    parser.add_argument(
        "--cores", type=int, default=2, help="WORKER_CORES of the workers (default 2)"
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR",
        help="keep the storage and worker logs in DIR instead of a temporary folder",
    )
    args = parser.parse_args()
    config = job_config(args.poses, args.designs, args.selection)

    folder = Path(tempfile.mkdtemp(prefix="bench-retry-", dir=args.keep))
    storage_root = folder / "storage"
    loads = [os.getloadavg()]
    print(f"started {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    try:
        with scratch_database("retry") as url:
            upgrade(url)
            queue = Queue(url)
            workers = Workers(folder, worker_environment(url, storage_root, args))
            try:
                full = run_full_task(queue, workers, storage_root, config)
                killed = run_killed_task(queue, workers, storage_root, config, args)
            finally:
                workers.stop_all()
                queue.close()
        loads.append(os.getloadavg())
        problems = check_resumed(killed, expected_results=args.poses)
        if problems:
            raise BenchmarkFailure(
                "the retried task did not resume after assemble:\n  "
                + "\n  ".join(problems)
                + f"\nrun.log of the second attempt:\n{killed['run_log']}"
            )
        print_report(full, killed, args, loads)
    except BenchmarkFailure as failure:
        print(f"FAILED: {failure}\n(files kept in {folder})", file=sys.stderr)
        raise SystemExit(1) from None
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
