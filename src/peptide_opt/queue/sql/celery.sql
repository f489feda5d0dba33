-- The statements of the Celery executor (EXECUTOR=celery): the claim of one named
-- task and the dispatcher's sweep, in blocks like those of queries.sql. The functions
-- and the send marker table come from migration 0200.

-- name: claim_task
SELECT task_id, user_id, task_type, job_dir, attempt, max_attempts, skipped
FROM peptide_opt_claim_task_v1(
    %(task_id)s, %(worker_id)s, %(task_types)s, %(lease_seconds)s, %(max_attempts)s,
    %(max_per_user)s
);

-- name: celery_sweep
SELECT task_id
FROM peptide_opt_celery_sweep_v1(
    %(task_types)s, %(resend_after_seconds)s, %(limit)s
);

-- name: celery_unmark
-- Markers of messages that could not be sent, so that the next sweep sends them.
DELETE FROM peptide_opt_celery_sends WHERE task_id = ANY (%(task_ids)s::char(36)[]);

-- name: celery_next_due
-- When the earliest retry delay of a pending task ends (UTC), or NULL.
SELECT min(not_before) AS next_due
FROM tasks
WHERE status = 'pending'
  AND task_type = ANY (%(task_types)s)
  AND not_before > timezone('utc', now());
