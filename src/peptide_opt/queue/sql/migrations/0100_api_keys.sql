-- API keys, the submission rate counters and the retention record of the HTTP API.
-- Idempotent: every statement leaves existing tables, columns and rows as they are.

-- Only the sha256 of a key is stored; the key itself is printed once when created.
CREATE TABLE IF NOT EXISTS api_keys (
    id          CHAR(36)     PRIMARY KEY,
    key_hash    CHAR(64)     NOT NULL UNIQUE,
    user_id     CHAR(36)     NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    is_admin    BOOLEAN      NOT NULL DEFAULT FALSE,
    label       VARCHAR(200),
    created_at  TIMESTAMP    NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    expires_at  TIMESTAMP,
    revoked_at  TIMESTAMP
);

CREATE INDEX IF NOT EXISTS api_keys_user_id_idx ON api_keys (user_id);

-- One row per user and UTC minute: the API processes increment it atomically, so the
-- limit holds across several processes.
CREATE TABLE IF NOT EXISTS api_submit_counts (
    user_id       CHAR(36)   NOT NULL,
    window_start  TIMESTAMP  NOT NULL,
    n_submitted   INTEGER    NOT NULL,
    PRIMARY KEY (user_id, window_start)
);

-- Tasks whose files the retention sweep has deleted, so that it skips them next time.
CREATE TABLE IF NOT EXISTS api_expired_tasks (
    task_id           CHAR(36)   PRIMARY KEY,
    files_deleted_at  TIMESTAMP  NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
