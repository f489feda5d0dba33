"""Every SQL statement of the HTTP API, one named constant each.

Statements take their values as ``$n`` parameters and are never built by string
formatting. The API reads and writes only rows whose ``task_type`` is
``peptide_optimization``; the platform's other task types share the table.
"""

TASK_TYPE = "peptide_optimization"

# -- users and keys -----------------------------------------------------------------

FIND_KEY = """
SELECT k.id, k.user_id, k.is_admin, u.username
FROM api_keys AS k
JOIN users AS u ON u.id = k.user_id
WHERE k.key_hash = $1
  AND k.revoked_at IS NULL
  AND (k.expires_at IS NULL OR k.expires_at > $2)
"""

INSERT_USER = """
INSERT INTO users (id, username, created_at) VALUES ($1, $2, $3)
"""

FIND_USER_BY_NAME = """
SELECT id FROM users WHERE username = $1
"""

FIND_USER_BY_ID = """
SELECT id FROM users WHERE id = $1
"""

INSERT_KEY = """
INSERT INTO api_keys (id, key_hash, user_id, is_admin, label, expires_at)
VALUES ($1, $2, $3, $4, $5, $6)
"""

_KEY_COLUMNS = """
k.id, k.user_id, u.username, k.is_admin, k.label, k.created_at, k.expires_at,
k.revoked_at
"""

GET_KEY = f"""
SELECT {_KEY_COLUMNS}
FROM api_keys AS k JOIN users AS u ON u.id = k.user_id
WHERE k.id = $1
"""

LIST_KEYS = f"""
SELECT {_KEY_COLUMNS}
FROM api_keys AS k JOIN users AS u ON u.id = k.user_id
WHERE $1 OR k.revoked_at IS NULL
ORDER BY k.created_at, k.id
"""

REVOKE_KEY = """
UPDATE api_keys SET revoked_at = $2
WHERE id = $1 AND revoked_at IS NULL
RETURNING id
"""

REVOKE_USER_KEYS = """
UPDATE api_keys AS k SET revoked_at = $2
FROM users AS u
WHERE u.id = k.user_id AND (u.username = $1 OR u.id = $1) AND k.revoked_at IS NULL
RETURNING k.id
"""

# -- submission limits --------------------------------------------------------------

# Adds one to the caller's count for this minute unless it has reached $3; returns NULL
# when the limit is reached. One statement, so concurrent API processes agree.
COUNT_SUBMISSION = """
INSERT INTO api_submit_counts AS c (user_id, window_start, n_submitted)
VALUES ($1, $2, 1)
ON CONFLICT (user_id, window_start) DO UPDATE
    SET n_submitted = c.n_submitted + 1
    WHERE c.n_submitted < $3
RETURNING n_submitted
"""

DELETE_OLD_SUBMIT_COUNTS = """
DELETE FROM api_submit_counts WHERE window_start < $1
"""

COUNT_PENDING = """
SELECT count(*) FROM tasks
WHERE user_id = $1 AND status = 'pending' AND task_type = $2
"""

# Held until the end of the submitting transaction.
LOCK_USER_SUBMISSIONS = """
SELECT pg_advisory_xact_lock(hashtextextended('peptide_opt.submit:' || $1::text, 0))
"""

# -- tasks ---------------------------------------------------------------------------

# The platform's own insert, plus the priority column that workers order by. It returns
# the columns of GET_TASK, so the response needs no second query.
INSERT_TASK = """
INSERT INTO tasks (id, user_id, task_type, job_dir, status, created_at, updated_at,
                   priority)
VALUES ($1, $2, $3, $4, 'pending', $5, $5, $6)
RETURNING id, user_id, task_type, job_dir, status, priority, progress, current_step,
          attempts, error, cancel_requested_at, step_timings, result_summary,
          created_at, started_at,
          finished_at, updated_at, NULL::timestamp AS files_deleted_at
"""

# EXECUTOR=celery: the send marker of a new task. The API sends the task's id to Celery
# only when this insert sets the marker. Otherwise the dispatcher has sent it already.
MARK_CELERY_SEND = """
INSERT INTO peptide_opt_celery_sends (task_id, sent_at)
VALUES ($1, timezone('utc', now()))
ON CONFLICT (task_id) DO NOTHING
RETURNING task_id
"""

UNMARK_CELERY_SEND = "DELETE FROM peptide_opt_celery_sends WHERE task_id = $1"

_TASK_COLUMNS = """
t.id, t.user_id, t.task_type, t.job_dir, t.status, t.priority, t.progress,
t.current_step, t.attempts, t.error, t.cancel_requested_at, t.step_timings,
t.result_summary, t.created_at, t.started_at, t.finished_at, t.updated_at, e.files_deleted_at
"""

# $3 is the caller's admin flag: an admin reads every user's tasks.
GET_TASK = f"""
SELECT {_TASK_COLUMNS}
FROM tasks AS t LEFT JOIN api_expired_tasks AS e ON e.task_id = t.id
WHERE t.id = $1 AND t.task_type = $2 AND ($3 OR t.user_id = $4)
"""

LIST_TASKS = f"""
SELECT {_TASK_COLUMNS}
FROM tasks AS t LEFT JOIN api_expired_tasks AS e ON e.task_id = t.id
WHERE t.task_type = $1 AND ($2 OR t.user_id = $3)
  AND ($4::varchar IS NULL OR t.status = $4::varchar)
ORDER BY t.created_at DESC, t.id DESC
LIMIT $5 OFFSET $6
"""

COUNT_TASKS = """
SELECT count(*) FROM tasks AS t
WHERE t.task_type = $1 AND ($2 OR t.user_id = $3)
  AND ($4::varchar IS NULL OR t.status = $4::varchar)
"""

CANCEL_PENDING_TASK = """
UPDATE tasks
SET status = 'cancelled', error = 'cancelled by request', finished_at = $2,
    updated_at = $2
WHERE id = $1 AND task_type = $3 AND status = 'pending'
RETURNING id
"""

REQUEST_CANCEL = """
UPDATE tasks
SET cancel_requested_at = COALESCE(cancel_requested_at, $2), updated_at = $2
WHERE id = $1 AND task_type = $3 AND status = 'processing'
RETURNING id
"""

# Wakes the worker at once. Without the notification it finds the request at its next
# heartbeat.
NOTIFY_CANCEL = """
SELECT pg_notify('peptide_opt_cancel', $1::text)
"""

LOCK_TASK_FOR_DELETE = """
SELECT status, job_dir FROM tasks WHERE id = $1 AND task_type = $2 FOR UPDATE
"""

DELETE_TASK = """
DELETE FROM tasks WHERE id = $1 AND task_type = $2
"""

DELETE_TASK_ATTEMPTS = """
DELETE FROM task_attempts WHERE task_id = $1
"""

DELETE_EXPIRED_MARK = """
DELETE FROM api_expired_tasks WHERE task_id = $1
"""

# -- retention -----------------------------------------------------------------------

EXPIRED_TASKS = """
SELECT t.id, t.job_dir FROM tasks AS t
LEFT JOIN api_expired_tasks AS e ON e.task_id = t.id
WHERE t.task_type = $1 AND t.status IN ('finished', 'failed', 'cancelled')
  AND t.finished_at < $2 AND e.task_id IS NULL
ORDER BY t.finished_at
LIMIT $3
"""

MARK_EXPIRED = """
INSERT INTO api_expired_tasks (task_id, files_deleted_at) VALUES ($1, $2)
ON CONFLICT (task_id) DO NOTHING
"""

# -- health and metrics --------------------------------------------------------------

TASKS_BY_STATUS = """
SELECT status, count(*) AS n_tasks FROM tasks WHERE task_type = $1 GROUP BY status
"""

# Bucket counts of finished tasks' durations (seconds from the last claim to the
# finish) for the upper bounds $2.
DURATION_BUCKETS = """
WITH durations AS (
    SELECT extract(epoch FROM finished_at - started_at)::float8 AS seconds
    FROM tasks
    WHERE task_type = $1 AND status = 'finished'
      AND started_at IS NOT NULL AND finished_at IS NOT NULL
)
SELECT bound, (SELECT count(*) FROM durations WHERE seconds <= bound) AS n_tasks
FROM unnest($2::float8[]) AS bound
"""

DURATION_TOTALS = """
SELECT count(*) AS n_tasks,
       coalesce(sum(extract(epoch FROM finished_at - started_at)), 0)::float8 AS seconds
FROM tasks
WHERE task_type = $1 AND status = 'finished'
  AND started_at IS NOT NULL AND finished_at IS NOT NULL
"""

STEP_DURATIONS = """
SELECT timing.key AS step, count(*) AS n_tasks, sum(timing.value::float8) AS seconds
FROM tasks, jsonb_each_text(tasks.step_timings) AS timing
WHERE tasks.task_type = $1 AND tasks.status = 'finished'
  AND jsonb_typeof(tasks.step_timings) = 'object'
GROUP BY timing.key
"""

OLDEST_PENDING = """
SELECT min(created_at) FROM tasks WHERE task_type = $1 AND status = 'pending'
"""

LIVE_WORKERS = """
SELECT status, count(*) AS n_workers, coalesce(sum(running_tasks), 0) AS n_running
FROM workers WHERE heartbeat_at > $1 GROUP BY status
"""
