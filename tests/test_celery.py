"""Celery mode (EXECUTOR=celery) on real Redis, real PostgreSQL and real ``celery
worker`` processes: the claim by id, the dispatcher's sweep, tasks from the API and
from plain INSERTs, a killed worker, duplicate messages, cancellation."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from peptide_opt.queue.store import ClaimPolicy, QueueStore
from peptide_opt.worker.celery_app import claim_task, create_app, send_task_ids
from tests.fixtures.api import free_port
from tests.fixtures.celery import CELERY_QUEUE, REDIS_URL, celery_environment
from tests.fixtures.postgres import wait_for_workers
from tests.handlers import EXTRA_HANDLERS

pytestmark = pytest.mark.services

NOOP = "peptide_opt.noop"
SLEEP = "peptide_opt.sleep"
TEST_TYPES = (NOOP, SLEEP)
# Seconds within which a quick task finishes on a loaded two-core machine; a Celery
# worker needs about 3 s to start.
FINISH_TIMEOUT_S = 60


def _log_lines(path: Path) -> list[tuple[str, int, str, str]]:
    """Lines of a test handler log: (task_id, attempt, worker_id, event)."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        task_id, attempt, worker_id, event, _ = line.split()
        lines.append((task_id, int(attempt), worker_id, event))
    return lines


def _sweep(store: QueueStore, resend_after_s: float = 600.0) -> list[str]:
    rows = store.execute(
        "celery_sweep",
        {
            "task_types": list(TEST_TYPES),
            "resend_after_seconds": resend_after_s,
            "limit": 100,
        },
    )
    return sorted(row["task_id"].strip() for row in rows)


def _policy(max_per_user: int | None = None) -> ClaimPolicy:
    return ClaimPolicy(
        worker_id="test-worker",
        task_types=TEST_TYPES,
        lease_seconds=30.0,
        max_attempts=3,
        max_per_user=max_per_user,
        retry_delay_seconds=1.0,
    )


def _n_markers(queue_db) -> int:
    return queue_db.connection.execute(
        "SELECT count(*) AS n FROM peptide_opt_celery_sends"
    ).fetchone()["n"]


@pytest.fixture
def store(database_url):
    store = QueueStore(database_url)
    yield store
    store.close()


# -- the sweep and the claim by id, in SQL ----------------------------------------


def test_sweep_marks_pending_tasks_once(queue_db, store):
    user = queue_db.add_user()
    first = queue_db.add_task(NOOP, user)
    second = queue_db.add_task(SLEEP, user)
    # Rows of the platform's other tools are never sent.
    queue_db.add_task("docking", user)
    not_due = queue_db.add_task(NOOP, user)
    queue_db.connection.execute(
        "UPDATE tasks SET not_before = timezone('utc', now()) + interval '1 hour' "
        "WHERE id = %s",
        (not_due,),
    )

    assert _sweep(store) == sorted([first, second])
    # Both have a message on its way: a second sweep sends nothing.
    assert _sweep(store) == []
    # A marker older than resend_after_s gets a new message.
    assert _sweep(store, resend_after_s=0.0) == sorted([first, second])


def test_sweep_sends_nothing_while_paused(queue_db, store):
    user = queue_db.add_user()
    task_id = queue_db.add_task(NOOP, user)
    store.execute("set_paused", {"paused": True})

    assert _sweep(store) == []

    store.execute("set_paused", {"paused": False})
    assert _sweep(store) == [task_id]


def test_claim_task_takes_named_task(queue_db, store):
    user = queue_db.add_user()
    other = queue_db.add_task(NOOP, user)
    task_id = queue_db.add_task(NOOP, user, {"n": 1})
    _sweep(store)

    task, skipped = claim_task(store, _policy(), task_id)

    assert skipped is None
    assert task.task_id == task_id
    assert task.attempt == 1
    assert task.job_dir == '{"n": 1}'
    row = queue_db.task(task_id)
    assert row["status"] == "processing"
    assert row["worker_id"] == "test-worker"
    assert row["lease_expires_at"] is not None
    assert [a["worker_id"] for a in queue_db.attempts(task_id)] == ["test-worker"]
    # The claim deleted the claimed task's marker only.
    assert _n_markers(queue_db) == 1
    assert queue_db.task(other)["status"] == "pending"


def test_claim_task_skips_unclaimable(queue_db, store):
    user = queue_db.add_user()
    done = queue_db.add_task(NOOP, user)
    claim_task(store, _policy(), done)
    not_due = queue_db.add_task(NOOP, user)
    queue_db.connection.execute(
        "UPDATE tasks SET not_before = timezone('utc', now()) + interval '1 hour' "
        "WHERE id = %s",
        (not_due,),
    )
    foreign = queue_db.add_task("docking", user)
    queue_db.connection.execute(
        "INSERT INTO peptide_opt_celery_sends VALUES (%s, timezone('utc', now()))",
        (not_due,),
    )

    assert claim_task(store, _policy(), done) == (None, "not_pending")
    assert claim_task(store, _policy(), foreign) == (None, "not_found")
    assert claim_task(store, _policy(), "no-such-task") == (None, "not_found")
    assert claim_task(store, _policy(), not_due) == (None, "not_due")
    # A task that can run later loses its marker, so the dispatcher sends it again.
    assert _n_markers(queue_db) == 0
    assert queue_db.task(foreign)["attempts"] == 0
    assert queue_db.task(not_due)["status"] == "pending"


def test_claim_task_honours_user_limit_and_pause(queue_db, store):
    user = queue_db.add_user()
    running = queue_db.add_task(NOOP, user)
    waiting = queue_db.add_task(NOOP, user)
    claim_task(store, _policy(max_per_user=1), running)

    assert claim_task(store, _policy(max_per_user=1), waiting) == (None, "user_limit")
    store.execute("set_paused", {"paused": True})
    assert claim_task(store, _policy(), waiting) == (None, "paused")
    store.execute("set_paused", {"paused": False})
    task, skipped = claim_task(store, _policy(), waiting)
    assert skipped is None
    assert task.task_id == waiting


# -- Celery workers and the dispatcher ----------------------------------------------


def test_platform_insert_finishes(
    queue_db, start_celery_process, celery_broker, tmp_path
):
    log = tmp_path / "runs.log"
    worker = start_celery_process("worker")
    dispatcher = start_celery_process("dispatch")
    wait_for_workers(queue_db, 1)
    user = queue_db.add_user()

    task_ids = [queue_db.add_task(NOOP, user, {"log": str(log)}) for _ in range(5)]
    for task_id in task_ids:
        row = queue_db.wait_for_status(task_id, "finished", FINISH_TIMEOUT_S)
        assert row["attempts"] == 1
        assert row["progress"] == 100
        assert row["result_summary"] == {"task_id": task_id}

    starts = collections.Counter(line[0] for line in _log_lines(log))
    assert starts == {task_id: 1 for task_id in task_ids}
    # The Celery worker keeps its row in the workers table like any worker.
    workers = queue_db.connection.execute("SELECT * FROM workers").fetchall()
    assert [row["worker_id"] for row in workers] == [_log_lines(log)[0][2]]
    assert _n_markers(queue_db) == 0
    assert celery_broker.llen(CELERY_QUEUE) == 0
    assert dispatcher.terminate() == 0
    assert worker.terminate() == 0
    assert "worker_stopped" in worker.log()


def test_retry_is_sent_when_due(queue_db, start_celery_process, tmp_path):
    # peptide_opt.broken raises; MAX_ATTEMPTS=2 with --retry-delay 0.5 retries it
    # once after 0.5 s, and only the dispatcher's due-time wake-up sends the retry.
    log = tmp_path / "runs.log"
    start_celery_process("worker", "--retry-delay", "0.5", MAX_ATTEMPTS="2")
    start_celery_process("dispatch", POLL_INTERVAL="300")
    wait_for_workers(queue_db, 1)
    user = queue_db.add_user()

    task_id = queue_db.add_task("peptide_opt.broken", user, {"log": str(log)})
    row = queue_db.wait_for_status(task_id, "failed", FINISH_TIMEOUT_S)

    assert row["attempts"] == 2
    assert "RuntimeError: unexpected state" in row["error"]
    assert [line[1] for line in _log_lines(log)] == [1, 2]


def test_api_submission_finishes(
    api_server_factory, api_users, queue_db, start_celery_process, celery_broker
):
    # No dispatcher runs: the API itself sends the ids of the tasks it creates.
    from tests.test_api import submit

    start_celery_process(
        "worker",
        PEPTIDE_OPT_EXTRA_HANDLERS=f"{EXTRA_HANDLERS},peptide_optimization="
        "tests.handlers:noop",
    )
    server = api_server_factory(EXECUTOR="celery", CELERY_BROKER_URL=REDIS_URL)
    user = api_users("celery-user")
    wait_for_workers(queue_db, 1)

    with server.client(user) as client:
        response = submit(client)
        assert response.status_code == 201, response.text
        task_id = response.json()["id"]
        row = queue_db.wait_for_status(task_id, "finished", FINISH_TIMEOUT_S)
        task = client.get(f"/v1/tasks/{task_id}").json()

    assert row["attempts"] == 1
    assert task["status"] == "finished"
    assert task["progress"] == 100
    assert _n_markers(queue_db) == 0


@pytest.fixture
def api_storage_env(tmp_path) -> dict[str, str]:
    """Local storage: the quick handler of these tests reads no inputs."""
    return {"STORAGE_BACKEND": "local", "STORAGE_LOCAL_ROOT": str(tmp_path / "storage")}


def test_killed_worker_task_finishes_once(queue_db, start_celery_process, tmp_path):
    lease_s = 3.0
    log = tmp_path / "runs.log"
    victim = start_celery_process("worker", LEASE_SECONDS=str(lease_s))
    start_celery_process("dispatch")
    wait_for_workers(queue_db, 1)
    user = queue_db.add_user()

    task_id = queue_db.add_task(SLEEP, user, {"seconds": 4.0, "log": str(log)})
    queue_db.wait_for(
        lambda: len(_log_lines(log)) == 1, FINISH_TIMEOUT_S, "the task to start"
    )
    os.kill(victim.pid, signal.SIGKILL)
    victim.process.wait(10)
    start_celery_process("worker", LEASE_SECONDS=str(lease_s))

    row = queue_db.wait_for_status(task_id, "finished", lease_s + FINISH_TIMEOUT_S)
    attempts = queue_db.attempts(task_id)
    events = [(line[1], line[3]) for line in _log_lines(log)]
    assert row["attempts"] == 2
    assert [attempt["outcome"] for attempt in attempts] == ["lost", "finished"]
    # The first attempt died with its worker before its end; the second ran once.
    assert events == [(1, "start"), (2, "start"), (2, "end")]


def test_duplicate_messages_run_task_once(
    queue_db, start_celery_process, celery_broker, tmp_path
):
    # Two pool threads, so that duplicates can arrive while the task runs.
    log = tmp_path / "runs.log"
    worker = start_celery_process("worker", MAX_WORKERS="2")
    wait_for_workers(queue_db, 1)
    user = queue_db.add_user()
    task_id = queue_db.add_task(SLEEP, user, {"seconds": 1.0, "log": str(log)})

    send_task_ids(create_app(REDIS_URL), [task_id] * 6)
    queue_db.wait_for_status(task_id, "finished", FINISH_TIMEOUT_S)
    queue_db.wait_for(
        lambda: worker.log().count("task_message_ignored") == 5,
        FINISH_TIMEOUT_S,
        "the five duplicates to be ignored",
    )

    assert [(line[1], line[3]) for line in _log_lines(log)] == [
        (1, "start"),
        (1, "end"),
    ]
    assert queue_db.task(task_id)["attempts"] == 1
    assert celery_broker.llen(CELERY_QUEUE) == 0


def test_cancel_stops_running_task(queue_db, start_celery_process, tmp_path):
    log = tmp_path / "runs.log"
    start_celery_process("worker")
    start_celery_process("dispatch")
    wait_for_workers(queue_db, 1)
    user = queue_db.add_user()
    task_id = queue_db.add_task(
        SLEEP, user, {"seconds": 60.0, "step_seconds": 1.0, "log": str(log)}
    )
    queue_db.wait_for_status(task_id, "processing", FINISH_TIMEOUT_S)

    cancelled = subprocess.run(
        [sys.executable, "-m", "peptide_opt.cli", "tasks", "cancel", task_id],
        env=celery_environment(queue_db.url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cancelled.returncode == 0, cancelled.stderr
    row = queue_db.wait_for_status(task_id, "cancelled", 20)

    assert row["error"] == "cancelled by request"
    assert [line[3] for line in _log_lines(log)] == ["start"]


def test_timeout_fails_task(queue_db, start_celery_process, tmp_path):
    start_celery_process("worker", TASK_TIMEOUT="1", MAX_ATTEMPTS="1")
    start_celery_process("dispatch")
    wait_for_workers(queue_db, 1)
    user = queue_db.add_user()

    task_id = queue_db.add_task("peptide_opt.hang", user)
    row = queue_db.wait_for_status(task_id, "failed", FINISH_TIMEOUT_S)

    assert "timed out after 1 s" in row["error"]
    assert [a["outcome"] for a in queue_db.attempts(task_id)] == ["timeout"]


def test_dispatch_rejects_bad_option(database_url):
    completed = subprocess.run(
        [sys.executable, "-m", "peptide_opt.cli", "dispatch", "--batch-size", "0"],
        env=celery_environment(database_url),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 2
    assert "--batch-size must be at least 1, got 0" in completed.stderr


def test_shutdown_releases_running_task(queue_db, start_celery_process, tmp_path):
    # SIGTERM starts Celery's warm shutdown; after SHUTDOWN_GRACE=1 s the running
    # task is released to pending, and the dispatcher sends it to the next worker.
    log = tmp_path / "runs.log"
    first = start_celery_process("worker", SHUTDOWN_GRACE="1")
    start_celery_process("dispatch")
    wait_for_workers(queue_db, 1)
    user = queue_db.add_user()
    task_id = queue_db.add_task(
        SLEEP, user, {"seconds": 30.0, "step_seconds": 0.5, "log": str(log)}
    )
    queue_db.wait_for_status(task_id, "processing", FINISH_TIMEOUT_S)

    assert first.terminate(timeout=30) == 0
    row = queue_db.task(task_id)
    assert row["status"] == "pending"
    assert [a["outcome"] for a in queue_db.attempts(task_id)] == ["released"]

    queue_db.connection.execute(
        "UPDATE tasks SET job_dir = %s WHERE id = %s",
        ('{"seconds": 0.5, "log": "%s"}' % log, task_id),
    )
    start_celery_process("worker")
    row = queue_db.wait_for_status(task_id, "finished", FINISH_TIMEOUT_S)
    assert row["attempts"] == 2
    assert [line[3] for line in _log_lines(log)] == ["start", "start", "end"]


def test_flower_shows_worker_and_task(
    queue_db, start_celery_process, celery_broker, tmp_path
):
    # Flower turns task events on in the workers it sees; its API then lists the
    # worker under the name that matches its row and the task it ran.
    port = str(free_port())
    worker = start_celery_process("worker")
    wait_for_workers(queue_db, 1)
    worker_id = queue_db.connection.execute("SELECT worker_id FROM workers").fetchone()[
        "worker_id"
    ]
    flower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "peptide_opt.worker.celery_app",
            "flower",
            "--address=127.0.0.1",
            f"--port={port}",
        ],
        env=celery_environment(queue_db.url, FLOWER_UNAUTHENTICATED_API="true"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/api"
        queue_db.wait_for(
            lambda: _flower_json(f"{base}/workers?refresh=1").get(
                f"peptide-opt@{worker_id}"
            ),
            FINISH_TIMEOUT_S,
            "Flower to list the worker",
        )
        # Flower sends the command that turns task events on every few seconds.
        queue_db.wait_for(
            lambda: "Events of group {task} enabled by remote" in worker.log(),
            FINISH_TIMEOUT_S,
            "Flower to turn task events on",
        )
        task_id = queue_db.add_task(NOOP, queue_db.add_user())
        send_task_ids(create_app(REDIS_URL), [task_id])
        queue_db.wait_for_status(task_id, "finished", FINISH_TIMEOUT_S)
        queue_db.wait_for(
            lambda: any(
                task["args"] == repr([task_id]) and task["state"] == "SUCCESS"
                for task in _flower_json(f"{base}/tasks").values()
            ),
            FINISH_TIMEOUT_S,
            "Flower to show the finished task",
        )
    finally:
        flower.terminate()
        flower.wait(20)
    assert worker.terminate() == 0


def _flower_json(url: str) -> dict:
    try:
        response = httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return {}
    return response.json() if response.status_code == 200 else {}


@pytest.mark.slow
def test_real_1czy_job_finishes(
    api_server_factory, api_users, api_storage_env, queue_db, start_celery_process
):
    # The product's own handler on 1CZY (TRAF2 and its peptide PQQATDD, chain B
    # marking the site) with 2 poses and 2 designs per pose: a few minutes on two
    # cores. The API sends the task; the worker reads the inputs from local storage.
    import csv
    import io

    from tests.test_api import submit

    worker = start_celery_process("worker", WORKER_CORES="2", **api_storage_env)
    server = api_server_factory(EXECUTOR="celery", CELERY_BROKER_URL=REDIS_URL)
    user = api_users("celery-1czy")
    wait_for_workers(queue_db, 1)

    with server.client(user) as client:
        response = submit(client, n_poses=2, num_seq_per_target=2, site_chain="B")
        assert response.status_code == 201, response.text
        task_id = response.json()["id"]
        row = queue_db.wait_for_status(task_id, {"finished", "failed"}, 1200)
        assert row["status"] == "finished", row["error"] + worker.log()[-4000:]
        task = client.get(f"/v1/tasks/{task_id}").json()
        result = client.get(f"/v1/tasks/{task_id}/result").json()
        csv_file = client.get(f"/v1/tasks/{task_id}/files/result.csv")

    assert task["attempts"] == 1
    assert task["progress"] == 100
    for step in ("prepare", "model", "site", "dock", "score", "assemble", "design"):
        assert task["step_timings"][step] >= 0, step
    assert [pose["rank"] for pose in result["results"]] == [1, 2]
    assert result["results"][0]["originalSequence"] == "PQQATDD"
    # Vina affinities of a bound peptide are negative (kcal/mol).
    assert result["results"][0]["originalSequenceAffinityScore"] < 0
    rows = list(csv.reader(io.StringIO(csv_file.text)))
    assert [row[0] for row in rows[1:]] == [
        "Input peptide property",
        "Docking result rank 1",
        "Docking result rank 2",
    ]


def test_dispatcher_waits_out_broker_outage(queue_db, start_celery_process, tmp_path):
    # The broker is a redis-server of the test's own on a free port, started only
    # after the dispatcher failed to send: the task must be sent once it is up.
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    broker_url = f"redis://127.0.0.1:{port}/0"
    dispatcher = start_celery_process("dispatch", CELERY_BROKER_URL=broker_url)
    user = queue_db.add_user()
    task_id = queue_db.add_task(NOOP, user)
    queue_db.wait_for(
        lambda: "broker_unavailable" in dispatcher.log(),
        FINISH_TIMEOUT_S,
        "the dispatcher to report the broker down",
    )
    # The failed send left no marker, so nothing holds the task back.
    assert _n_markers(queue_db) == 0

    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        queue_db.wait_for(
            lambda: _queue_length(client) == 1,
            FINISH_TIMEOUT_S,
            "the message to reach the broker",
        )
        message = json.loads(client.lindex(CELERY_QUEUE, 0))
        assert message["headers"]["argsrepr"] == repr([task_id])
        assert _n_markers(queue_db) == 1
        assert dispatcher.terminate() == 0
    finally:
        server.terminate()
        server.wait(10)


def _queue_length(client: redis.Redis) -> int:
    try:
        return client.llen(CELERY_QUEUE)
    except redis.RedisError:
        return -1


def test_api_submits_while_broker_down(api_server_factory, api_users, queue_db):
    # Nothing listens on the broker's port: the submission still succeeds, and its
    # marker is deleted so that the dispatcher's next sweep sends the task.
    from tests.test_api import submit

    broker_url = f"redis://127.0.0.1:{free_port()}/0"
    server = api_server_factory(EXECUTOR="celery", CELERY_BROKER_URL=broker_url)
    user = api_users("celery-outage")

    with server.client(user) as client:
        response = submit(client)

    assert response.status_code == 201, response.text
    assert queue_db.task(response.json()["id"])["status"] == "pending"
    assert _n_markers(queue_db) == 0
