-- The worker's columns on tasks and its own tables. Additive only: every new tasks
-- column is nullable or has a constant default, so PostgreSQL adds it without
-- rewriting rows, and a worker of the previous version keeps working beside this one.

ALTER TABLE tasks
    ADD COLUMN IF NOT EXISTS progress SMALLINT NOT NULL DEFAULT 0
        CHECK (progress BETWEEN 0 AND 100),
    ADD COLUMN IF NOT EXISTS current_step VARCHAR(32),
    ADD COLUMN IF NOT EXISTS worker_id VARCHAR(128),
    ADD COLUMN IF NOT EXISTS lease_expires_at TIMESTAMP,
    ADD COLUMN IF NOT EXISTS attempts INTEGER NOT NULL DEFAULT 0,
    -- NULL until the first claim, which stores the claiming worker's MAX_ATTEMPTS.
    ADD COLUMN IF NOT EXISTS max_attempts INTEGER,
    ADD COLUMN IF NOT EXISTS error TEXT,
    ADD COLUMN IF NOT EXISTS priority INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS cancel_requested_at TIMESTAMP,
    -- A failed attempt's retry is not claimed before this time (UTC).
    ADD COLUMN IF NOT EXISTS not_before TIMESTAMP,
    ADD COLUMN IF NOT EXISTS result_summary JSONB,
    -- Seconds per step, keyed by step name.
    ADD COLUMN IF NOT EXISTS step_timings JSONB;

-- The claim walks the users that have pending tasks and takes each one's next task;
-- this index serves both walks.
CREATE INDEX IF NOT EXISTS ix_tasks_pending_by_user
    ON tasks (user_id, priority DESC, created_at, id)
    WHERE status = 'pending';

CREATE INDEX IF NOT EXISTS ix_tasks_processing_lease
    ON tasks (lease_expires_at)
    WHERE status = 'processing';

CREATE TABLE IF NOT EXISTS task_attempts (
    task_id      CHAR(36)      NOT NULL,
    attempt      INTEGER       NOT NULL,
    worker_id    VARCHAR(128)  NOT NULL,
    started_at   TIMESTAMP     NOT NULL,
    finished_at  TIMESTAMP,
    -- finished, failed, timeout, crashed, memory, lost, cancelled or released;
    -- NULL while the attempt runs.
    outcome      VARCHAR(20),
    error        TEXT,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE IF NOT EXISTS workers (
    worker_id      VARCHAR(128)  PRIMARY KEY,
    host           VARCHAR(255)  NOT NULL,
    pid            INTEGER       NOT NULL,
    started_at     TIMESTAMP     NOT NULL,
    heartbeat_at   TIMESTAMP     NOT NULL,
    status         VARCHAR(20)   NOT NULL,
    running_tasks  INTEGER       NOT NULL DEFAULT 0,
    max_workers    INTEGER       NOT NULL,
    task_types     TEXT[]        NOT NULL DEFAULT '{}'
);

-- Queue-wide switches; the row 'paused' stops claiming on every worker.
CREATE TABLE IF NOT EXISTS peptide_opt_settings (
    name        VARCHAR(64)  PRIMARY KEY,
    value       JSONB        NOT NULL,
    updated_at  TIMESTAMP    NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);

INSERT INTO peptide_opt_settings (name, value)
VALUES ('paused', 'false')
ON CONFLICT (name) DO NOTHING;
