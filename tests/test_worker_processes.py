"""Worker subprocesses on a real database: exactly-once processing, crashes, kills,
timeouts, cancellation, shutdown and fairness."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.fixtures.postgres import wait_for_workers, worker_environment

pytestmark = pytest.mark.services


def _log_lines(path: Path) -> list[tuple[str, int, str, str, float]]:
    """Lines of a test handler log: (task_id, attempt, worker_id, event, time)."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        task_id, attempt, worker_id, event, stamp = line.split()
        lines.append((task_id, int(attempt), worker_id, event, float(stamp)))
    return lines


def _worker_pid(worker_id: str) -> int:
    # Worker ids are host-pid-random; host names may contain dashes.
    return int(worker_id.rsplit("-", 2)[1])


def _run_cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "peptide_opt.cli", *args],
        env=worker_environment(database_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_eight_workers_run_each_task_once(queue_db, start_worker, tmp_path):
    log = tmp_path / "starts.log"
    workers = [start_worker() for _ in range(8)]
    wait_for_workers(queue_db, 8, timeout=60)
    users = [queue_db.add_user() for _ in range(4)]

    task_ids = [
        queue_db.add_task("peptide_opt.noop", users[index % 4], {"log": str(log)})
        for index in range(200)
    ]
    queue_db.wait_for(
        lambda: queue_db.count("finished") == 200,
        timeout=120,
        message="200 tasks to finish",
    )

    starts = collections.Counter(line[0] for line in _log_lines(log))
    assert set(starts) == set(task_ids)
    assert max(starts.values()) == 1
    attempts = queue_db.connection.execute(
        "SELECT count(*) AS n, count(DISTINCT task_id) AS n_tasks, "
        "count(*) FILTER (WHERE outcome = 'finished') AS n_finished "
        "FROM task_attempts"
    ).fetchone()
    assert attempts == {"n": 200, "n_tasks": 200, "n_finished": 200}
    # Every worker took part: 200 tasks over 8 idle workers woken by NOTIFY.
    n_workers = queue_db.connection.execute(
        "SELECT count(DISTINCT worker_id) AS n FROM task_attempts"
    ).fetchone()["n"]
    assert n_workers >= 2
    for worker in workers:
        assert worker.terminate() == 0


def test_killed_worker_task_finishes_elsewhere(queue_db, start_worker, tmp_path):
    lease_s = 3.0
    log = tmp_path / "runs.log"
    user = queue_db.add_user()
    workers = {}
    for _ in range(3):
        worker = start_worker(LEASE_SECONDS=str(lease_s))
        workers[worker.pid] = worker
    wait_for_workers(queue_db, 3)

    for round_index in range(3):
        task_id = queue_db.add_task(
            "peptide_opt.sleep", user, {"seconds": 2.0, "log": str(log)}
        )
        row = queue_db.wait_for_status(task_id, "processing", timeout=10)
        victim_pid = _worker_pid(row["worker_id"])
        # The task processes are children of the worker's forkserver, itself a
        # child of the worker.
        task_processes = psutil.Process(victim_pid).children(recursive=True)
        os.kill(victim_pid, signal.SIGKILL)
        killed_at = time.time()
        workers.pop(victim_pid).process.wait(10)
        replacement = start_worker(LEASE_SECONDS=str(lease_s))
        workers[replacement.pid] = replacement

        row = queue_db.wait_for_status(task_id, "finished", timeout=lease_s + 15)
        attempts = queue_db.attempts(task_id)
        second_start = [
            line[4] for line in _log_lines(log) if line[0] == task_id and line[1] == 2
        ]
        assert [a["outcome"] for a in attempts] == ["lost", "finished"], round_index
        assert _worker_pid(attempts[1]["worker_id"]) != victim_pid
        # The second attempt starts within the lease plus a few seconds of the kill
        # (recovery runs on the idle workers' heartbeat, every lease/2).
        assert second_start[0] - killed_at < lease_s + 4.0
        # The killed worker's task process died with it.
        for process in task_processes:
            assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE


def test_crashing_task_fails_others_finish(queue_db, start_worker, tmp_path):
    log = tmp_path / "runs.log"
    user = queue_db.add_user()
    start_worker(MAX_ATTEMPTS="3")
    wait_for_workers(queue_db, 1)

    crash_id = queue_db.add_task("peptide_opt.crash", user, {"log": str(log)})
    noop_ids = [
        queue_db.add_task("peptide_opt.noop", user, {"log": str(log)}) for _ in range(5)
    ]

    row = queue_db.wait_for_status(crash_id, "failed", timeout=30)
    assert row["attempts"] == 3
    assert row["error"] == "task process died (killed by SIGKILL)"
    assert [a["outcome"] for a in queue_db.attempts(crash_id)] == ["crashed"] * 3
    for task_id in noop_ids:
        assert queue_db.wait_for_status(task_id, "finished", timeout=10)


def test_hanging_task_stopped_at_timeout(queue_db, start_worker):
    user = queue_db.add_user()
    worker = start_worker(TASK_TIMEOUT="2", MAX_ATTEMPTS="1")
    wait_for_workers(queue_db, 1)

    hang_id = queue_db.add_task("peptide_opt.hang", user)
    row = queue_db.wait_for_status(hang_id, "failed", timeout=15)
    after_id = queue_db.add_task("peptide_opt.noop", user)

    assert row["error"] == "task timed out after 2 s (TASK_TIMEOUT)"
    running = (row["finished_at"] - row["started_at"]).total_seconds()
    # Stopped at 2 s; the watch loop looks every 0.25 s, 1 s covers a busy machine.
    assert 2.0 <= running < 3.0
    assert queue_db.wait_for_status(after_id, "finished", timeout=10)
    assert worker.process.poll() is None


def test_paused_worker_past_lease_no_double_finish(queue_db, start_worker, tmp_path):
    lease_s = 3.0
    log = tmp_path / "runs.log"
    user = queue_db.add_user()
    first = start_worker(LEASE_SECONDS=str(lease_s))
    wait_for_workers(queue_db, 1)

    task_id = queue_db.add_task(
        "peptide_opt.sleep", user, {"seconds": 2.0, "log": str(log)}
    )
    queue_db.wait_for_status(task_id, "processing", timeout=10)
    os.kill(first.pid, signal.SIGSTOP)
    second = start_worker(LEASE_SECONDS=str(lease_s))
    # The stopped worker's task process runs on and ends its sleep; the second
    # worker recovers the task once the lease expires and runs it again.
    queue_db.wait_for(
        lambda: queue_db.task(task_id)["attempts"] == 2,
        timeout=lease_s + 10,
        message="the second worker to claim the task",
    )
    os.kill(first.pid, signal.SIGCONT)

    row = queue_db.wait_for_status(task_id, "finished", timeout=15)
    time.sleep(2.0)  # let the resumed worker try to finish its stale attempt
    attempts = queue_db.attempts(task_id)
    assert [a["outcome"] for a in attempts] == ["lost", "finished"]
    assert attempts[1]["worker_id"] == row["worker_id"] or row["worker_id"] is None
    assert queue_db.task(task_id)["status"] == "finished"
    assert "task_result_dropped" in first.log() or "task_lease_lost" in first.log()
    assert first.terminate() == 0
    assert second.terminate() == 0


def test_fairness_second_user_before_third(queue_db, start_worker, tmp_path):
    alice = queue_db.add_user("alice")
    bob = queue_db.add_user("bob")
    start_worker()
    start_worker()
    wait_for_workers(queue_db, 2)

    # One transaction per task, as the platform inserts them, so that the tasks are
    # taken in creation order. Alice's short first task frees one worker 2 s early.
    alice_ids = [
        queue_db.add_task(
            "peptide_opt.sleep", alice, {"seconds": 1.0 if index == 0 else 3.0}
        )
        for index in range(20)
    ]
    bob_id = queue_db.add_task("peptide_opt.sleep", bob, {"seconds": 0.5})
    queue_db.wait_for_status(bob_id, "finished", timeout=30)

    def alice_claims() -> list:
        rows = [queue_db.task(task_id) for task_id in alice_ids]
        return sorted(row["started_at"] for row in rows if row["started_at"])

    queue_db.wait_for(
        lambda: len(alice_claims()) >= 3, timeout=30, message="Alice's third claim"
    )
    # started_at is the time of the claim. The worker freed at 1 s takes Bob's task
    # because Bob runs fewer tasks, so Alice's third waits until 1.5 s.
    bob_claim = queue_db.task(bob_id)["started_at"]
    assert bob_claim < alice_claims()[2], (bob_claim, alice_claims())


def test_cancel_running_and_pending(queue_db, start_worker, database_url):
    user = queue_db.add_user()
    worker = start_worker()
    wait_for_workers(queue_db, 1)
    running_id = queue_db.add_task(
        "peptide_opt.sleep", user, {"seconds": 60, "step_seconds": 0.5}
    )
    queue_db.wait_for_status(running_id, "processing", timeout=10)
    pending_id = queue_db.add_task("peptide_opt.sleep", user, {"seconds": 60})

    pending_result = _run_cli(database_url, "tasks", "cancel", pending_id)
    result = _run_cli(database_url, "tasks", "cancel", running_id)
    waited = queue_db.wait_for(
        lambda: queue_db.task(running_id)["status"] == "cancelled",
        timeout=10,
        message="the running task to be cancelled",
    )

    assert pending_result.returncode == 0, pending_result.stderr
    assert queue_db.task(pending_id)["status"] == "cancelled"
    assert result.returncode == 0, result.stderr
    # NOTIFY reaches the worker at once; the heartbeat is the fallback.
    assert waited < 5.0
    assert queue_db.attempts(running_id)[0]["outcome"] == "cancelled"
    assert queue_db.task(running_id)["finished_at"] is not None
    again = _run_cli(database_url, "tasks", "cancel", running_id)
    assert again.returncode == 2
    assert "only pending or processing tasks can be cancelled" in again.stderr
    assert worker.process.poll() is None


def test_retry_command_requeues_failed(queue_db, start_worker, database_url):
    user = queue_db.add_user()
    start_worker()
    wait_for_workers(queue_db, 1)
    task_id = queue_db.add_task("peptide_opt.bad_input", user)
    row = queue_db.wait_for_status(task_id, "failed", timeout=10)
    assert row["error"] == "peptide length 61 exceeds the limit of 50 residues"

    result = _run_cli(database_url, "tasks", "retry", task_id)

    assert result.returncode == 0, result.stderr
    queue_db.wait_for(
        lambda: (
            queue_db.task(task_id)["attempts"] == 2
            and queue_db.task(task_id)["status"] == "failed"
        ),
        timeout=10,
        message="the retried task to run again",
    )
    missing = _run_cli(database_url, "tasks", "retry", "no-such-task")
    assert missing.returncode == 2
    assert "not found" in missing.stderr


def test_sigterm_lets_running_task_finish(queue_db, start_worker):
    user = queue_db.add_user()
    worker = start_worker(SHUTDOWN_GRACE="20")
    wait_for_workers(queue_db, 1)
    task_id = queue_db.add_task("peptide_opt.sleep", user, {"seconds": 2.0})
    queue_db.wait_for_status(task_id, "processing", timeout=10)
    later_id = queue_db.add_task("peptide_opt.noop", user)

    assert worker.terminate(timeout=20) == 0

    assert queue_db.task(task_id)["status"] == "finished"
    # A stopping worker claims nothing more.
    assert queue_db.task(later_id)["status"] == "pending"
    assert queue_db.connection.execute("SELECT * FROM workers").fetchall() == []


def test_sigterm_releases_after_grace(queue_db, start_worker):
    user = queue_db.add_user()
    worker = start_worker(SHUTDOWN_GRACE="1", MAX_ATTEMPTS="3")
    wait_for_workers(queue_db, 1)
    task_id = queue_db.add_task("peptide_opt.sleep", user, {"seconds": 60})
    queue_db.wait_for_status(task_id, "processing", timeout=10)

    assert worker.terminate(timeout=15) == 0

    row = queue_db.task(task_id)
    assert row["status"] == "pending"
    # The release is not counted against the task: one more attempt is allowed.
    assert row["max_attempts"] == 4
    assert queue_db.attempts(task_id)[0]["outcome"] == "released"


def test_memory_limit_fails_task(queue_db, start_worker):
    user = queue_db.add_user()
    start_worker(TASK_MEMORY_LIMIT="150M")
    wait_for_workers(queue_db, 1)

    task_id = queue_db.add_task(
        "peptide_opt.allocate", user, {"megabytes": 300, "seconds": 10}
    )
    row = queue_db.wait_for_status(task_id, "failed", timeout=20)
    after_id = queue_db.add_task("peptide_opt.noop", user)

    assert "over TASK_MEMORY_LIMIT of 150 MiB" in row["error"]
    assert row["attempts"] == 1
    assert queue_db.wait_for_status(after_id, "finished", timeout=10)


def test_cores_split_between_slots(queue_db, start_worker):
    user = queue_db.add_user()
    start_worker(WORKER_CORES="4", MAX_WORKERS="2")
    wait_for_workers(queue_db, 1)

    task_id = queue_db.add_task("peptide_opt.sleep", user, {"seconds": 0.1})
    row = queue_db.wait_for_status(task_id, "finished", timeout=10)

    # 4 cores over 2 tasks at once: 2 cores per task.
    assert row["result_summary"]["cores"] == 2


def test_progress_and_step_timings(queue_db, start_worker):
    user = queue_db.add_user()
    start_worker()
    wait_for_workers(queue_db, 1)

    task_id = queue_db.add_task(
        "peptide_opt.sleep", user, {"seconds": 1.0, "step_seconds": 0.25}
    )
    row = queue_db.wait_for_status(task_id, "finished", timeout=10)

    assert row["progress"] == 100
    assert row["current_step"] == "sleep4"
    assert sorted(row["step_timings"]) == ["sleep1", "sleep2", "sleep3", "sleep4"]
    # Each step sleeps 0.25 s; 0.2 s covers scheduling on a busy machine.
    for seconds in row["step_timings"].values():
        assert seconds == pytest.approx(0.25, abs=0.2)


def test_workers_command_lists_and_pauses(queue_db, start_worker, database_url):
    user = queue_db.add_user()
    start_worker()
    wait_for_workers(queue_db, 1)

    paused = _run_cli(database_url, "workers", "pause")
    task_id = queue_db.add_task("peptide_opt.noop", user)
    time.sleep(1.5)
    status_while_paused = queue_db.task(task_id)["status"]
    listing = _run_cli(database_url, "workers")
    resumed = _run_cli(database_url, "workers", "resume")

    assert paused.returncode == 0, paused.stderr
    assert status_while_paused == "pending"
    assert "1 live worker(s)" in listing.stdout
    assert "PAUSED" in listing.stdout
    assert "pending 1" in listing.stdout
    assert resumed.returncode == 0, resumed.stderr
    assert queue_db.wait_for_status(task_id, "finished", timeout=10)


def test_workdir_created_when_missing(queue_db, start_worker, tmp_path):
    # --workdir names a folder that does not exist yet: the worker creates it (and
    # its parents) instead of stopping with FileNotFoundError, then runs tasks in it.
    workdir = tmp_path / "missing" / "tasks"
    log = tmp_path / "starts.log"
    worker = start_worker(args=("--workdir", str(workdir)))
    wait_for_workers(queue_db, 1)
    queue_db.add_task("peptide_opt.noop", queue_db.add_user(), {"log": str(log)})
    queue_db.wait_for(
        lambda: queue_db.count("finished") == 1, timeout=60, message="the task to finish"
    )
    assert workdir.is_dir()
    assert worker.terminate() == 0
