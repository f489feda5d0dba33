-- Every statement of the worker and the operator commands. Each block starts with
-- "-- name: NAME"; parameters are psycopg's %(name)s placeholders, never text
-- pasted into the statement. Task ids are cast to CHAR(36), the type of tasks.id,
-- because a text comparison would cast the column and miss the primary key. Rows of
-- task types other than ours are matched only through the task types a worker
-- handles, or through the pattern of ours: 'peptide_optimization' and
-- 'peptide_opt.*'.

-- name: claim
SELECT task_id, user_id, task_type, job_dir, attempt, max_attempts
FROM peptide_opt_claim_v1(
    %(worker_id)s, %(task_types)s, %(lease_seconds)s, %(max_attempts)s,
    %(max_per_user)s
);

-- name: session_setup
-- The worker's connection commits claims, heartbeats and progress without waiting
-- for the WAL flush: a claim lost in a server crash only returns its task to pending,
-- where the fence on (task, worker, attempt) rejects the late finish. The finishes
-- (peptide_opt_finish_v2 and peptide_opt_finish_and_claim_v2, migration 0007) set the
-- server's own setting back for their transaction, and a durable commit flushes every
-- earlier WAL record too.
SET synchronous_commit = off;

-- name: finish
SELECT peptide_opt_finish_v2(
    %(task_id)s, %(worker_id)s, %(attempt)s, %(outcome)s, %(retryable)s, %(error)s,
    %(summary)s, %(step_timings)s, %(retry_delay_seconds)s
) AS finished_status;

-- name: finish_and_claim
SELECT finished_status, task_id, user_id, task_type, job_dir, attempt, max_attempts
FROM peptide_opt_finish_and_claim_v2(
    %(task_id)s, %(worker_id)s, %(attempt)s, %(outcome)s, %(retryable)s, %(error)s,
    %(summary)s, %(step_timings)s, %(retry_delay_seconds)s, %(task_types)s,
    %(lease_seconds)s, %(max_attempts)s, %(max_per_user)s
);

-- name: heartbeat
SELECT paused, ready, cancel_ids, lost_ids, n_recovered
FROM peptide_opt_heartbeat_v1(
    %(worker_id)s, %(host)s, %(pid)s, %(started_at)s, %(status)s, %(max_workers)s,
    %(task_types)s, %(task_ids)s, %(attempts)s, %(lease_seconds)s
);

-- name: update_progress
-- Fenced like the finish: a row comes back only while the attempt is still ours.
UPDATE tasks
SET progress = %(progress)s,
    current_step = %(step)s::text,
    step_timings = coalesce(step_timings, '{}'::jsonb)
        || jsonb_build_object(%(step)s::text, %(step_seconds)s::float8),
    updated_at = timezone('utc', now())
WHERE id = %(task_id)s::char(36)
  AND worker_id = %(worker_id)s
  AND attempts = %(attempt)s
  AND status = 'processing'
RETURNING cancel_requested_at IS NOT NULL AS cancel_requested;

-- name: remove_worker
DELETE FROM workers WHERE worker_id = %(worker_id)s;

-- name: set_paused
UPDATE peptide_opt_settings
SET value = to_jsonb(%(paused)s::boolean), updated_at = timezone('utc', now())
WHERE name = 'paused';

-- name: get_paused
SELECT value = 'true'::jsonb AS paused FROM peptide_opt_settings WHERE name = 'paused';

-- name: notify_tasks
SELECT pg_notify('peptide_opt_tasks', %(reason)s);

-- name: notify_cancel
SELECT pg_notify('peptide_opt_cancel', %(task_id)s);

-- name: get_task
SELECT id, user_id, task_type, job_dir, status, attempts, max_attempts, worker_id,
       progress, current_step, error, cancel_requested_at, created_at, started_at,
       finished_at
FROM tasks
WHERE id = %(task_id)s::char(36)
  AND (task_type = 'peptide_optimization' OR task_type LIKE 'peptide\_opt.%%');

-- name: cancel_pending
UPDATE tasks
SET status = 'cancelled',
    error = 'cancelled by request',
    finished_at = timezone('utc', now()),
    updated_at = timezone('utc', now())
WHERE id = %(task_id)s::char(36)
  AND status = 'pending'
  AND (task_type = 'peptide_optimization' OR task_type LIKE 'peptide\_opt.%%')
RETURNING id;

-- name: request_cancel
UPDATE tasks
SET cancel_requested_at = coalesce(cancel_requested_at, timezone('utc', now())),
    updated_at = timezone('utc', now())
WHERE id = %(task_id)s::char(36)
  AND status = 'processing'
  AND (task_type = 'peptide_optimization' OR task_type LIKE 'peptide\_opt.%%')
RETURNING id;

-- name: retry_task
-- A retried task gets a fresh set of attempts on top of those it used.
UPDATE tasks
SET status = 'pending',
    error = NULL,
    progress = 0,
    current_step = NULL,
    not_before = NULL,
    cancel_requested_at = NULL,
    finished_at = NULL,
    max_attempts = attempts + %(max_attempts)s,
    updated_at = timezone('utc', now())
WHERE id = %(task_id)s::char(36)
  AND status IN ('failed', 'cancelled')
  AND (task_type = 'peptide_optimization' OR task_type LIKE 'peptide\_opt.%%')
RETURNING id;

-- name: list_live_workers
SELECT worker_id, host, pid, started_at, heartbeat_at, status, running_tasks,
       max_workers, task_types
FROM workers
WHERE heartbeat_at > timezone('utc', now()) - make_interval(secs => %(window_seconds)s)
ORDER BY started_at, worker_id;

-- name: queue_depth
SELECT status, count(*) AS n_tasks
FROM tasks
WHERE task_type = 'peptide_optimization' OR task_type LIKE 'peptide\_opt.%%'
GROUP BY status
ORDER BY status;

-- name: listen
LISTEN peptide_opt_tasks;
LISTEN peptide_opt_cancel;
