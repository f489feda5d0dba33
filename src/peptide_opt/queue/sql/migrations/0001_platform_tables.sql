-- The platform's users and tasks tables, created only where the platform has not
-- created them. Existing tables, columns, indexes and rows are left as they are.
-- Timestamps are TIMESTAMP without time zone and hold UTC.

CREATE TABLE IF NOT EXISTS users (
    id          CHAR(36)      PRIMARY KEY,
    username    VARCHAR(150)  NOT NULL UNIQUE,
    created_at  TIMESTAMP     NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);

CREATE TABLE IF NOT EXISTS tasks (
    id           CHAR(36)       PRIMARY KEY,
    user_id      CHAR(36)       NOT NULL REFERENCES users (id),
    task_type    VARCHAR(50)    NOT NULL,
    job_dir      VARCHAR(1024)  NOT NULL,
    status       VARCHAR(20)    NOT NULL DEFAULT 'pending',
    created_at   TIMESTAMP      NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    started_at   TIMESTAMP,
    finished_at  TIMESTAMP,
    updated_at   TIMESTAMP      DEFAULT (now() AT TIME ZONE 'utc')
);

-- The platform's four single-column indexes. A platform database may already have
-- them under other names, so an index is created only when no index of tasks starts
-- with that column.
DO $$
DECLARE
    column_name text;
BEGIN
    FOREACH column_name IN ARRAY ARRAY['user_id', 'status', 'task_type', 'created_at']
    LOOP
        IF NOT EXISTS (
            SELECT 1
            FROM pg_index AS i
            JOIN pg_attribute AS a
              ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = 'tasks'::regclass AND a.attname = column_name
        ) THEN
            EXECUTE format(
                'CREATE INDEX %I ON tasks (%I)', 'ix_tasks_' || column_name, column_name
            );
        END IF;
    END LOOP;
END
$$;
