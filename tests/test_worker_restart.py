"""Workers across a PostgreSQL restart, on a cluster of the test's own."""

from __future__ import annotations

import psycopg
import pytest

from peptide_opt.queue.migrations import upgrade
from tests.fixtures.postgres import QueueDatabase, wait_for_workers

pytestmark = pytest.mark.services


@pytest.fixture
def restart_db(local_cluster):
    with psycopg.connect(local_cluster.url, autocommit=True) as connection:
        connection.execute("CREATE DATABASE queue")
    url = local_cluster.database_url("queue")
    upgrade(url)
    database = QueueDatabase(url)
    yield local_cluster, database
    database.close()


def _reconnect(database: QueueDatabase) -> None:
    database.connection.close()
    database.connection = psycopg.connect(
        database.url, autocommit=True, row_factory=psycopg.rows.dict_row
    )


def test_waiting_workers_reconnect(restart_db, start_worker):
    cluster, database = restart_db
    workers = [start_worker(url=database.url) for _ in range(2)]
    wait_for_workers(database, 2)
    user = database.add_user()

    cluster.stop("fast")
    cluster.start()
    _reconnect(database)
    # Inserted after the restart: only a worker that listens again, or polls after
    # reconnecting, picks it up.
    task_id = database.add_task("peptide_opt.noop", user)
    row = database.wait_for_status(task_id, "finished", timeout=30)

    assert row["attempts"] == 1
    for worker in workers:
        assert worker.process.poll() is None
        assert "listener_reconnected" in worker.log()


def test_running_task_survives_restart(restart_db, start_worker):
    cluster, database = restart_db
    # A lease longer than the outage: the task stays with its worker.
    worker = start_worker(url=database.url, LEASE_SECONDS="30")
    wait_for_workers(database, 1)
    user = database.add_user()
    task_id = database.add_task("peptide_opt.sleep", user, {"seconds": 4.0})
    database.wait_for_status(task_id, "processing", timeout=10)

    cluster.stop("fast")
    cluster.start()
    _reconnect(database)
    row = database.wait_for_status(task_id, {"finished", "failed"}, timeout=40)

    assert row["status"] == "finished"
    assert row["attempts"] == 1
    assert [a["outcome"] for a in database.attempts(task_id)] == ["finished"]
    later_id = database.add_task("peptide_opt.noop", user)
    assert database.wait_for_status(later_id, "finished", timeout=30)
    assert worker.terminate() == 0
