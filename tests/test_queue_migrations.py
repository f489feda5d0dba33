"""Schema migrations: the platform's tables as its contract states them, idempotent
upgrades, and platform rows left as they are."""

from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from peptide_opt.queue.migrations import list_migrations, upgrade


def _schema(url: str) -> dict[str, list]:
    """Columns, indexes, constraints, triggers and functions of the public schema."""
    with psycopg.connect(url) as connection:
        columns = connection.execute(
            "SELECT table_name, column_name, data_type, character_maximum_length, "
            "is_nullable, column_default FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, column_name"
        ).fetchall()
        indexes = connection.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
            "ORDER BY indexname"
        ).fetchall()
        constraints = connection.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'public'::regnamespace ORDER BY conname"
        ).fetchall()
        triggers = connection.execute(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY tgname"
        ).fetchall()
        functions = connection.execute(
            "SELECT proname, md5(prosrc) FROM pg_proc "
            "WHERE pronamespace = 'public'::regnamespace ORDER BY proname"
        ).fetchall()
    return {
        "columns": columns,
        "indexes": indexes,
        "constraints": constraints,
        "triggers": triggers,
        "functions": functions,
    }


def _columns(url: str, table: str) -> dict[str, tuple]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT column_name, data_type, character_maximum_length "
            "FROM information_schema.columns WHERE table_name = %s",
            (table,),
        ).fetchall()
    return {name: (data_type, length) for name, data_type, length in rows}


def test_migration_files_ordered_and_numbered():
    versions = [migration.version for migration in list_migrations()]

    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)
    # The queue's files use 0001-0099; the first four create its schema.
    assert versions[:4] == [1, 2, 3, 4]


def test_upgrade_records_every_file(empty_database_url):
    applied = upgrade(empty_database_url)

    with psycopg.connect(empty_database_url) as connection:
        recorded = [
            row[0]
            for row in connection.execute(
                "SELECT version FROM peptide_opt_migrations ORDER BY version"
            )
        ]
    assert [migration.version for migration in applied] == recorded
    assert recorded == [migration.version for migration in list_migrations()]


def test_upgrade_twice_changes_nothing(empty_database_url):
    upgrade(empty_database_url)
    before = _schema(empty_database_url)

    applied_again = upgrade(empty_database_url)

    assert applied_again == []
    assert _schema(empty_database_url) == before


def test_files_rerun_change_nothing(empty_database_url):
    # Each file is idempotent on its own, not only through the record of versions:
    # running it against a database that has it already changes nothing.
    upgrade(empty_database_url)
    before = _schema(empty_database_url)

    with psycopg.connect(empty_database_url, autocommit=True) as connection:
        for migration in list_migrations():
            if migration.version < 100:
                connection.execute(migration.sql.encode())

    assert _schema(empty_database_url) == before


def test_tasks_table_matches_contract(empty_database_url):
    upgrade(empty_database_url)

    columns = _columns(empty_database_url, "tasks")
    expected = {
        "id": ("character", 36),
        "user_id": ("character", 36),
        "task_type": ("character varying", 50),
        "job_dir": ("character varying", 1024),
        "status": ("character varying", 20),
        "created_at": ("timestamp without time zone", None),
        "started_at": ("timestamp without time zone", None),
        "finished_at": ("timestamp without time zone", None),
        "updated_at": ("timestamp without time zone", None),
    }
    for name, column_type in expected.items():
        assert columns[name] == column_type, name

    users = _columns(empty_database_url, "users")
    assert users["id"] == ("character", 36)
    assert "username" in users
    assert users["created_at"] == ("timestamp without time zone", None)


def test_contract_indexes_exist(empty_database_url):
    upgrade(empty_database_url)

    with psycopg.connect(empty_database_url) as connection:
        first_columns = {
            row[0]
            for row in connection.execute(
                "SELECT a.attname FROM pg_index AS i JOIN pg_attribute AS a "
                "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
                "WHERE i.indrelid = 'tasks'::regclass"
            )
        }
    assert {"user_id", "status", "task_type", "created_at"} <= first_columns


def test_queue_columns_and_tables_exist(empty_database_url):
    upgrade(empty_database_url)

    columns = _columns(empty_database_url, "tasks")
    for name in (
        "progress",
        "current_step",
        "worker_id",
        "lease_expires_at",
        "attempts",
        "max_attempts",
        "error",
        "priority",
        "cancel_requested_at",
        "result_summary",
        "step_timings",
    ):
        assert name in columns, name
    assert columns["result_summary"][0] == "jsonb"
    assert columns["step_timings"][0] == "jsonb"
    assert set(_columns(empty_database_url, "task_attempts")) >= {
        "task_id",
        "attempt",
        "worker_id",
        "started_at",
        "finished_at",
        "outcome",
        "error",
    }
    assert set(_columns(empty_database_url, "workers")) >= {
        "worker_id",
        "host",
        "pid",
        "started_at",
        "heartbeat_at",
        "status",
        "running_tasks",
        "max_workers",
    }


_PLATFORM_SCHEMA = """
CREATE TABLE users (
    id CHAR(36) PRIMARY KEY,
    username VARCHAR(80) NOT NULL,
    email VARCHAR(200),
    created_at TIMESTAMP DEFAULT now()
);
CREATE TABLE tasks (
    id CHAR(36) PRIMARY KEY,
    user_id CHAR(36) REFERENCES users (id),
    task_type VARCHAR(50),
    job_dir VARCHAR(1024),
    status VARCHAR(20),
    created_at TIMESTAMP DEFAULT now(),
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    updated_at TIMESTAMP
);
CREATE INDEX platform_tasks_user ON tasks (user_id);
CREATE INDEX platform_tasks_status ON tasks (status);
CREATE INDEX platform_tasks_type ON tasks (task_type);
CREATE INDEX platform_tasks_created ON tasks (created_at);
INSERT INTO users (id, username, email)
VALUES ('11111111-1111-1111-1111-111111111111', 'alice', 'a@example.org');
INSERT INTO tasks (id, user_id, task_type, job_dir, status, created_at, started_at)
VALUES
 ('22222222-2222-2222-2222-222222222222', '11111111-1111-1111-1111-111111111111',
  'docking', '/tmp/astramolecula/jobs/docking/x', 'processing',
  '2026-01-02 03:04:05', '2026-01-02 03:05:00'),
 ('33333333-3333-3333-3333-333333333333', '11111111-1111-1111-1111-111111111111',
  'peptide_optimization', 'jobs/peptide_optimization/y', 'finished',
  '2026-01-02 03:04:06', NULL);
"""


def test_platform_database_keeps_rows(empty_database_url):
    with psycopg.connect(empty_database_url, autocommit=True) as connection:
        connection.execute(_PLATFORM_SCHEMA.encode())
        columns_before = connection.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'tasks' ORDER BY ordinal_position"
        ).fetchall()

    upgrade(empty_database_url)

    with psycopg.connect(empty_database_url, row_factory=dict_row) as connection:
        rows = connection.execute(
            "SELECT id, user_id, task_type, job_dir, status, created_at, started_at, "
            "finished_at, updated_at FROM tasks ORDER BY id"
        ).fetchall()
        columns_after = connection.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'tasks' ORDER BY ordinal_position"
        ).fetchall()
        indexes = [
            row["indexname"]
            for row in connection.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'tasks'"
            )
        ]
        email = connection.execute("SELECT email FROM users").fetchone()["email"]

    # The platform's columns keep their order and types; ours follow them.
    assert columns_after[: len(columns_before)] == [
        {"column_name": name, "data_type": kind} for name, kind in columns_before
    ]
    assert rows[0]["status"] == "processing"
    assert rows[0]["task_type"] == "docking"
    assert str(rows[0]["started_at"]) == "2026-01-02 03:05:00"
    assert rows[0]["updated_at"] is None
    assert rows[1]["status"] == "finished"
    assert email == "a@example.org"
    # The platform's own indexes serve; no second index on the same columns.
    assert not any(name.startswith("ix_tasks_user_id") for name in indexes)
    assert not any(name.startswith("ix_tasks_status") for name in indexes)


# The claim and the finish as a worker of the previous version sends them: the v1
# functions, with the durable commit set by its own statement.
_PREVIOUS_CLAIM = """
SELECT task_id, attempt
FROM peptide_opt_claim_v1('worker-old', ARRAY['peptide_opt.noop'], 30, 3, NULL)
"""
_PREVIOUS_FINISH_AND_CLAIM = """
SELECT finished_status, task_id, attempt
FROM set_config(
    'synchronous_commit',
    (SELECT reset_val FROM pg_settings WHERE name = 'synchronous_commit'),
    true
) AS durable,
peptide_opt_finish_and_claim_v1(
    %s, 'worker-old', %s, 'finished', false, NULL, '{"n": 1}', NULL, 10,
    ARRAY['peptide_opt.noop'], 30, 3, NULL
)
"""


def test_previous_worker_statements_still_work(database_url):
    # database_url is migrated to the newest version; a worker of the previous
    # version keeps running beside the new ones during a rolling upgrade.
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO users (id, username) "
            "VALUES ('11111111-1111-1111-1111-111111111111', 'alice')"
        )
        for _ in range(2):
            connection.execute(
                "INSERT INTO tasks (id, user_id, task_type, job_dir, status) "
                "VALUES (gen_random_uuid()::text, "
                "'11111111-1111-1111-1111-111111111111', 'peptide_opt.noop', '{}', "
                "'pending')"
            )
        connection.execute("SET synchronous_commit = off")

        first_id, first_attempt = connection.execute(_PREVIOUS_CLAIM).fetchone()
        status, second_id, _ = connection.execute(
            _PREVIOUS_FINISH_AND_CLAIM, (first_id, first_attempt)
        ).fetchone()
        row = connection.execute(
            "SELECT status, result_summary FROM tasks WHERE id = %s", (first_id,)
        ).fetchone()

    assert status == "finished"
    assert second_id is not None
    assert second_id != first_id
    assert row == ("finished", {"n": 1})
