"""The claim, finish, heartbeat and recovery functions, called through QueueStore."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from peptide_opt.queue.store import ClaimPolicy, Outcome, QueueStore, utc_now

TASK_TYPES = ("peptide_opt.noop", "peptide_opt.sleep")


def _policy(worker_id: str = "worker-a", **changes) -> ClaimPolicy:
    values = dict(
        worker_id=worker_id,
        task_types=TASK_TYPES,
        lease_seconds=30.0,
        max_attempts=3,
        max_per_user=None,
        retry_delay_seconds=0.0,
    )
    values.update(changes)
    return ClaimPolicy(**values)


@pytest.fixture
def store(database_url):
    queue_store = QueueStore(database_url)
    yield queue_store
    queue_store.close()


def _identity() -> dict:
    return {"host": "test-host", "pid": 1, "started_at": utc_now()}


def test_claim_sets_processing_fields(store, queue_db):
    user = queue_db.add_user()
    task_id = queue_db.add_task("peptide_opt.noop", user)

    claimed = store.claim(_policy())

    assert claimed.task_id == task_id
    assert claimed.attempt == 1
    row = queue_db.task(task_id)
    assert row["status"] == "processing"
    assert row["worker_id"] == "worker-a"
    assert row["attempts"] == 1
    assert row["max_attempts"] == 3
    assert row["started_at"] is not None
    # Lease of 30 s from the claim; 2 s covers the test's own run time.
    lease_s = (row["lease_expires_at"] - row["started_at"]).total_seconds()
    assert lease_s == pytest.approx(30.0, abs=2.0)
    # The attempt's history row is written when the attempt ends.
    assert queue_db.attempts(task_id) == []


def test_claim_ignores_other_task_types(store, queue_db):
    user = queue_db.add_user()
    other = queue_db.add_task("docking", user)
    unhandled = queue_db.add_task("peptide_opt.crash", user)

    assert store.claim(_policy()) is None
    assert queue_db.task(other)["status"] == "pending"
    assert queue_db.task(other)["attempts"] == 0
    assert queue_db.task(unhandled)["status"] == "pending"


def test_claim_higher_priority_first(store, queue_db):
    user = queue_db.add_user()
    queue_db.add_task("peptide_opt.noop", user)
    urgent = queue_db.add_task("peptide_opt.noop", user, priority=5)

    assert store.claim(_policy()).task_id == urgent


def test_claim_user_with_fewer_running_first(store, queue_db):
    alice = queue_db.add_user("alice")
    bob = queue_db.add_user("bob")
    alice_tasks = [queue_db.add_task("peptide_opt.noop", alice) for _ in range(5)]
    bob_task = queue_db.add_task("peptide_opt.noop", bob)

    first = store.claim(_policy())
    second = store.claim(_policy())
    third = store.claim(_policy())

    # Alice's oldest goes first (no user runs a task), then Bob's (Alice now runs
    # one, Bob none), then Alice's second.
    assert first.task_id == alice_tasks[0]
    assert second.task_id == bob_task
    assert third.task_id == alice_tasks[1]


def test_claim_respects_cap_per_user(store, queue_db):
    user = queue_db.add_user()
    for _ in range(3):
        queue_db.add_task("peptide_opt.noop", user)

    policy = _policy(max_per_user=2)
    assert store.claim(policy) is not None
    assert store.claim(policy) is not None
    assert store.claim(policy) is None


def test_claim_waits_for_retry_delay(store, queue_db):
    user = queue_db.add_user()
    task_id = queue_db.add_task("peptide_opt.noop", user)
    policy = _policy(retry_delay_seconds=1.0)
    task = store.claim(policy)

    status = store.finish(policy, task, Outcome("failed", retryable=True, error="x"))

    assert status == "pending"
    assert store.claim(policy) is None
    time.sleep(1.2)
    again = store.claim(policy)
    assert again.task_id == task_id
    assert again.attempt == 2


def test_retry_delay_doubles_per_attempt(store, queue_db):
    user = queue_db.add_user()
    task_id = queue_db.add_task("peptide_opt.noop", user)
    policy = _policy(retry_delay_seconds=10.0, max_attempts=5)
    queue_db.connection.execute(
        "UPDATE tasks SET attempts = 2 WHERE id = %s", (task_id,)
    )
    task = store.claim(policy)

    store.finish(policy, task, Outcome("timeout", retryable=True, error="x"))

    row = queue_db.task(task_id)
    # Third attempt failed: 10 s * 2^(3 - 1) = 40 s; 2 s covers the test's run time.
    delay_s = (row["not_before"] - row["updated_at"]).total_seconds()
    assert task.attempt == 3
    assert delay_s == pytest.approx(40.0, abs=2.0)


def test_failure_after_max_attempts(store, queue_db):
    user = queue_db.add_user()
    task_id = queue_db.add_task("peptide_opt.noop", user)
    policy = _policy(max_attempts=2)

    for expected in ("pending", "failed"):
        task = store.claim(policy)
        status = store.finish(
            policy, task, Outcome("crashed", retryable=True, error="died")
        )
        assert status == expected

    row = queue_db.task(task_id)
    assert row["status"] == "failed"
    assert row["error"] == "died"
    assert row["finished_at"] is not None
    assert [a["outcome"] for a in queue_db.attempts(task_id)] == ["crashed", "crashed"]


def test_non_retryable_fails_at_once(store, queue_db):
    user = queue_db.add_user()
    task_id = queue_db.add_task("peptide_opt.noop", user)
    policy = _policy()
    task = store.claim(policy)

    status = store.finish(policy, task, Outcome("failed", error="bad input"))

    assert status == "failed"
    assert queue_db.task(task_id)["attempts"] == 1


def test_finish_fenced_on_worker_and_attempt(store, queue_db):
    user = queue_db.add_user()
    task_id = queue_db.add_task("peptide_opt.noop", user)
    policy_a = _policy("worker-a", lease_seconds=0.2)
    policy_b = _policy("worker-b")
    stale = store.claim(policy_a)
    time.sleep(0.4)
    store.heartbeat(policy_b, _identity(), "idle", 1, [])
    current = store.claim(policy_b)

    late = store.finish(policy_a, stale, Outcome("finished", summary={"by": "a"}))
    progress = store.update_progress(policy_a, stale, "dock", 50, 1.0)
    done = store.finish(policy_b, current, Outcome("finished", summary={"by": "b"}))

    assert current.task_id == task_id
    assert current.attempt == 2
    assert late is None
    assert progress is None
    assert done == "finished"
    assert queue_db.task(task_id)["result_summary"] == {"by": "b"}


def test_expired_lease_recovered_to_pending(store, queue_db):
    user = queue_db.add_user()
    task_id = queue_db.add_task("peptide_opt.noop", user)
    store.claim(_policy("worker-a", lease_seconds=0.2))
    time.sleep(0.4)

    beat = store.heartbeat(_policy("worker-b"), _identity(), "idle", 1, [])

    assert beat.n_recovered == 1
    assert beat.ready is True
    row = queue_db.task(task_id)
    assert row["status"] == "pending"
    assert row["error"] == "worker lost"
    assert row["worker_id"] is None
    assert [a["outcome"] for a in queue_db.attempts(task_id)] == ["lost"]


def test_expired_lease_fails_when_attempts_used(store, queue_db):
    user = queue_db.add_user()
    task_id = queue_db.add_task("peptide_opt.noop", user)
    store.claim(_policy("worker-a", lease_seconds=0.2, max_attempts=1))
    time.sleep(0.4)

    store.heartbeat(_policy("worker-b"), _identity(), "idle", 1, [])

    row = queue_db.task(task_id)
    assert row["status"] == "failed"
    assert row["error"] == "worker lost"
    assert row["finished_at"] is not None


def test_recovery_leaves_other_types(store, queue_db):
    user = queue_db.add_user()
    other = queue_db.add_task("docking", user)
    queue_db.connection.execute(
        "UPDATE tasks SET status = 'processing', "
        "lease_expires_at = timezone('utc', now()) - interval '1 hour' WHERE id = %s",
        (other,),
    )

    beat = store.heartbeat(_policy(), _identity(), "idle", 1, [])

    assert beat.n_recovered == 0
    assert queue_db.task(other)["status"] == "processing"


def test_heartbeat_renews_and_reports(store, queue_db):
    user = queue_db.add_user()
    task_id = queue_db.add_task("peptide_opt.noop", user)
    policy = _policy(lease_seconds=5.0)
    task = store.claim(policy)
    lease_before = queue_db.task(task_id)["lease_expires_at"]
    queue_db.connection.execute(
        "UPDATE tasks SET cancel_requested_at = timezone('utc', now()) WHERE id = %s",
        (task_id,),
    )
    time.sleep(0.1)

    beat = store.heartbeat(policy, _identity(), "busy", 2, [task])

    assert queue_db.task(task_id)["lease_expires_at"] > lease_before
    assert beat.cancel_ids == (task_id,)
    assert beat.lost_ids == ()
    worker = queue_db.connection.execute("SELECT * FROM workers").fetchone()
    assert worker["status"] == "busy"
    assert worker["running_tasks"] == 1
    assert worker["max_workers"] == 2


def test_pause_stops_claims(store, queue_db):
    user = queue_db.add_user()
    queue_db.add_task("peptide_opt.noop", user)
    store.execute("set_paused", {"paused": True})

    assert store.claim(_policy()) is None
    assert store.heartbeat(_policy(), _identity(), "idle", 1, []).paused is True

    store.execute("set_paused", {"paused": False})
    assert store.claim(_policy()) is not None


def test_finish_and_claim_one_call(store, queue_db):
    user = queue_db.add_user()
    first_id = queue_db.add_task("peptide_opt.noop", user)
    second_id = queue_db.add_task("peptide_opt.noop", user)
    policy = _policy()
    first = store.claim(policy)

    status, second = store.finish_and_claim(
        policy, first, Outcome("finished", summary={"n": 1}, step_timings={"a": 0.5})
    )
    status_last, none = store.finish_and_claim(policy, second, Outcome("finished"))

    assert (first.task_id, status, second.task_id) == (first_id, "finished", second_id)
    assert status_last == "finished"
    assert none is None
    row = queue_db.task(first_id)
    assert row["progress"] == 100
    assert row["step_timings"] == {"a": 0.5}
    assert row["finished_at"] is not None


def test_concurrent_claims_take_distinct_tasks(database_url, queue_db):
    user_ids = [queue_db.add_user() for _ in range(3)]
    for index in range(60):
        queue_db.add_task("peptide_opt.noop", user_ids[index % 3])
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all(worker_id: str) -> None:
        worker_store = QueueStore(database_url)
        policy = _policy(worker_id)
        while (task := worker_store.claim(policy)) is not None:
            with lock:
                claimed.append(task.task_id)
        worker_store.close()

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(claimed) == 60
    assert len(set(claimed)) == 60
    assert queue_db.count("processing") == 60


def test_insert_notifies_only_our_types(database_url, queue_db):
    user = queue_db.add_user()
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN peptide_opt_tasks")
        queue_db.add_task("docking", user)
        queue_db.add_task("peptide_optimization", user, "jobs/peptide_optimization/x")
        payloads = [n.payload for n in listener.notifies(timeout=1.0)]

    assert payloads == ["peptide_optimization"]


_FINISH_ARGS = "%s, %s, %s, 'finished', false, NULL, NULL, NULL, 0"
_CLAIM_ARGS = "%s, ARRAY['peptide_opt.noop'], 30, 3, NULL"


@pytest.mark.parametrize(
    "finish_statement",
    [
        f"SELECT peptide_opt_finish_v2({_FINISH_ARGS})",
        "SELECT finished_status FROM peptide_opt_finish_and_claim_v2("
        f"{_FINISH_ARGS}, ARRAY['peptide_opt.noop'], 30, 3, NULL)",
    ],
    ids=["finish", "finish_and_claim"],
)
def test_finish_v2_commits_durably(database_url, queue_db, finish_statement):
    user = queue_db.add_user()
    queue_db.add_task("peptide_opt.noop", user)

    with psycopg.connect(database_url, autocommit=True) as connection:
        server_value = connection.execute("SHOW synchronous_commit").fetchone()[0]
        # The worker's session setup: claims commit without waiting for the flush.
        connection.execute("SET synchronous_commit = off")
        task_id, attempt = connection.execute(
            f"SELECT task_id, attempt FROM peptide_opt_claim_v1({_CLAIM_ARGS})",
            ("worker-a",),
        ).fetchone()
        with connection.transaction():
            status = connection.execute(
                finish_statement, (task_id, "worker-a", attempt)
            ).fetchone()[0]
            # The setting that the finish's own commit uses.
            in_finish = connection.execute("SHOW synchronous_commit").fetchone()[0]
        after_finish = connection.execute("SHOW synchronous_commit").fetchone()[0]

    assert status == "finished"
    assert in_finish == server_value
    # SET LOCAL ends with the transaction: the session's claims stay fast.
    assert after_finish == "off"


def test_claim_plan_after_bulk_insert(database_url, queue_db):
    # A claim plan cached while the queue is empty must not scan the whole table
    # once many tasks arrive before the next ANALYZE.
    users = [queue_db.add_user() for _ in range(3)]
    store = QueueStore(database_url)
    policy = _policy()
    queue_db.connection.execute("VACUUM ANALYZE tasks")
    for _ in range(10):
        assert store.claim(policy) is None
    queue_db.connection.execute(
        "INSERT INTO tasks (id, user_id, task_type, job_dir, status) "
        "SELECT gen_random_uuid()::text, (%s::text[])[1 + i %% 3], "
        "'peptide_opt.noop', '{}', 'pending' FROM generate_series(1, 3000) AS i",
        (users,),
    )
    plans: list[str] = []
    connection = store._ensure_connection()
    for statement in (
        "LOAD 'auto_explain'",
        "SET auto_explain.log_min_duration = 0",
        "SET auto_explain.log_nested_statements = on",
        "SET auto_explain.log_level = notice",
    ):
        connection.execute(statement, prepare=False)
    connection.add_notice_handler(lambda notice: plans.append(notice.message_primary))

    claimed = store.claim(policy)
    store.close()

    assert claimed is not None
    walk = [plan for plan in plans if "WITH RECURSIVE pending_users" in plan]
    assert len(walk) == 1
    assert "Seq Scan" not in walk[0]
    assert "ix_tasks_pending_by_user" in walk[0]
