-- The worker's claim, finish and heartbeat as SQL functions, so that each is one
-- round trip and one transaction. Functions carry a version suffix: a later
-- migration adds _v2 beside them instead of replacing them, so that a worker of the
-- previous version keeps calling the functions it was written against.

CREATE INDEX IF NOT EXISTS ix_tasks_processing_by_user
    ON tasks (user_id)
    WHERE status = 'processing';


-- Claim the next pending task of p_task_types for p_worker_id, or return no row.
-- Order: higher priority first, then the user with fewer processing tasks, then the
-- oldest task. The walk visits each user that has pending tasks (a loose index scan
-- over ix_tasks_pending_by_user) and locks that user's next task with SKIP LOCKED, so
-- concurrent claims take different tasks and the cost grows with the number of users
-- that wait, not with the number of pending tasks.
CREATE OR REPLACE FUNCTION peptide_opt_claim_v1(
    p_worker_id      text,
    p_task_types     text[],
    p_lease_seconds  double precision,
    p_max_attempts   integer,
    p_max_per_user   integer
)
RETURNS TABLE (
    task_id       char(36),
    user_id       char(36),
    task_type     varchar,
    job_dir       varchar,
    attempt       integer,
    max_attempts  integer
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now  timestamp := timezone('utc', now());
    v_id   char(36);
BEGIN
    IF EXISTS (
        SELECT 1 FROM peptide_opt_settings AS s
        WHERE s.name = 'paused' AND s.value = 'true'::jsonb
    ) THEN
        RETURN;
    END IF;

    WITH RECURSIVE pending_users (user_id) AS (
        SELECT min(t.user_id)
        FROM tasks AS t
        WHERE t.status = 'pending' AND t.task_type = ANY (p_task_types)
        UNION ALL
        SELECT (
            SELECT min(t.user_id)
            FROM tasks AS t
            WHERE t.status = 'pending'
              AND t.task_type = ANY (p_task_types)
              AND t.user_id > u.user_id
        )
        FROM pending_users AS u
        WHERE u.user_id IS NOT NULL
    ),
    running AS (
        SELECT u.user_id, (
            SELECT count(*)
            FROM tasks AS t
            WHERE t.user_id = u.user_id
              AND t.status = 'processing'
              AND t.task_type = ANY (p_task_types)
        ) AS n_running
        FROM pending_users AS u
        WHERE u.user_id IS NOT NULL
    )
    SELECT next_task.id INTO v_id
    FROM running AS r
    CROSS JOIN LATERAL (
        SELECT t.id, t.priority, t.created_at
        FROM tasks AS t
        WHERE t.user_id = r.user_id
          AND t.status = 'pending'
          AND t.task_type = ANY (p_task_types)
          AND (t.not_before IS NULL OR t.not_before <= v_now)
        ORDER BY t.priority DESC, t.created_at, t.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ) AS next_task
    WHERE p_max_per_user IS NULL OR r.n_running < p_max_per_user
    ORDER BY next_task.priority DESC, r.n_running, next_task.created_at, next_task.id
    LIMIT 1;

    IF v_id IS NULL THEN
        RETURN;
    END IF;

    RETURN QUERY
    UPDATE tasks AS t
    SET status = 'processing',
        started_at = v_now,
        updated_at = v_now,
        worker_id = p_worker_id,
        lease_expires_at = v_now + make_interval(secs => p_lease_seconds),
        attempts = t.attempts + 1,
        max_attempts = coalesce(t.max_attempts, p_max_attempts),
        progress = 0,
        current_step = NULL,
        not_before = NULL
    WHERE t.id = v_id
    RETURNING t.id, t.user_id, t.task_type, t.job_dir, t.attempts, t.max_attempts;

    INSERT INTO task_attempts AS a (task_id, attempt, worker_id, started_at)
    SELECT t.id, t.attempts, p_worker_id, v_now FROM tasks AS t WHERE t.id = v_id
    ON CONFLICT (task_id, attempt) DO UPDATE
        SET worker_id = excluded.worker_id, started_at = excluded.started_at,
            finished_at = NULL, outcome = NULL, error = NULL;
END
$$;


-- End attempt p_attempt of p_task_id held by p_worker_id and return the task's new
-- status, or NULL when the task is no longer that worker's attempt (its lease expired
-- and the task was recovered): the fence on (task, worker, attempt) keeps a late
-- worker from overwriting the work of the task's new owner.
--
-- p_outcome: finished, cancelled or released; any other value (failed, timeout,
-- crashed, memory, ...) is a failure, retried after p_retry_delay_seconds *
-- 2^(attempt - 1) while p_retryable and attempts remain. A released task goes back
-- to pending with one more attempt allowed, because the release (a worker shutting
-- down) was not the task's fault.
CREATE OR REPLACE FUNCTION peptide_opt_finish_v1(
    p_task_id              text,
    p_worker_id            text,
    p_attempt              integer,
    p_outcome              text,
    p_retryable            boolean,
    p_error                text,
    p_summary              jsonb,
    p_step_timings         jsonb,
    p_retry_delay_seconds  double precision
)
RETURNS text
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamp := timezone('utc', now());
    v_status  text;
BEGIN
    UPDATE tasks AS t
    SET status = CASE
            WHEN p_outcome IN ('finished', 'cancelled') THEN p_outcome
            WHEN p_outcome = 'released' THEN 'pending'
            WHEN p_retryable AND t.attempts < coalesce(t.max_attempts, 1) THEN 'pending'
            ELSE 'failed'
        END,
        progress = CASE WHEN p_outcome = 'finished' THEN 100 ELSE t.progress END,
        error = CASE
            WHEN p_outcome = 'finished' THEN NULL
            ELSE coalesce(p_error, t.error)
        END,
        result_summary = coalesce(p_summary, t.result_summary),
        step_timings = CASE
            WHEN p_step_timings IS NULL THEN t.step_timings
            ELSE coalesce(t.step_timings, '{}'::jsonb) || p_step_timings
        END,
        max_attempts = CASE
            WHEN p_outcome = 'released' THEN coalesce(t.max_attempts, 1) + 1
            ELSE t.max_attempts
        END,
        worker_id = NULL,
        lease_expires_at = NULL,
        cancel_requested_at = NULL,
        updated_at = v_now
    WHERE t.id = p_task_id
      AND t.worker_id = p_worker_id
      AND t.attempts = p_attempt
      AND t.status = 'processing'
    RETURNING t.status INTO v_status;

    IF v_status IS NULL THEN
        RETURN NULL;
    END IF;

    IF v_status = 'pending' THEN
        UPDATE tasks AS t
        SET not_before = CASE
                WHEN p_outcome = 'released' THEN NULL
                ELSE v_now + make_interval(
                    secs => p_retry_delay_seconds * 2 ^ (p_attempt - 1)
                )
            END
        WHERE t.id = p_task_id;
        PERFORM pg_notify('peptide_opt_tasks', 'retry');
    ELSE
        UPDATE tasks AS t SET finished_at = v_now WHERE t.id = p_task_id;
    END IF;

    UPDATE task_attempts AS a
    SET finished_at = v_now, outcome = p_outcome, error = p_error
    WHERE a.task_id = p_task_id AND a.attempt = p_attempt;

    RETURN v_status;
END
$$;


-- Finish one attempt and claim the next task in the same round trip. Returns one row:
-- the finished task's new status (see peptide_opt_finish_v1) and the claimed task's
-- columns, which are NULL when nothing was claimed.
CREATE OR REPLACE FUNCTION peptide_opt_finish_and_claim_v1(
    p_task_id              text,
    p_worker_id            text,
    p_attempt              integer,
    p_outcome              text,
    p_retryable            boolean,
    p_error                text,
    p_summary              jsonb,
    p_step_timings         jsonb,
    p_retry_delay_seconds  double precision,
    p_task_types           text[],
    p_lease_seconds        double precision,
    p_max_attempts         integer,
    p_max_per_user         integer
)
RETURNS TABLE (
    finished_status  text,
    task_id          char(36),
    user_id          char(36),
    task_type        varchar,
    job_dir          varchar,
    attempt          integer,
    max_attempts     integer
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_status  text;
BEGIN
    v_status := peptide_opt_finish_v1(
        p_task_id, p_worker_id, p_attempt, p_outcome, p_retryable, p_error,
        p_summary, p_step_timings, p_retry_delay_seconds
    );
    RETURN QUERY
    SELECT v_status, c.task_id, c.user_id, c.task_type, c.job_dir, c.attempt,
           c.max_attempts
    FROM (SELECT 1) AS one
    LEFT JOIN peptide_opt_claim_v1(
        p_worker_id, p_task_types, p_lease_seconds, p_max_attempts, p_max_per_user
    ) AS c ON TRUE;
END
$$;


-- Return expired-lease tasks of p_task_types to pending, or to failed with the error
-- "worker lost" once their attempts are used up; returns how many were recovered.
CREATE OR REPLACE FUNCTION peptide_opt_recover_v1(p_task_types text[])
RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now          timestamp := timezone('utc', now());
    v_n_recovered  integer;
    v_n_requeued   integer;
BEGIN
    WITH expired AS (
        SELECT t.id, t.attempts
        FROM tasks AS t
        WHERE t.status = 'processing'
          AND t.lease_expires_at < v_now
          AND t.task_type = ANY (p_task_types)
        FOR UPDATE SKIP LOCKED
    ),
    recovered AS (
        UPDATE tasks AS t
        SET status = CASE
                WHEN t.attempts < coalesce(t.max_attempts, 1) THEN 'pending'
                ELSE 'failed'
            END,
            error = 'worker lost',
            finished_at = CASE
                WHEN t.attempts < coalesce(t.max_attempts, 1) THEN NULL
                ELSE v_now
            END,
            worker_id = NULL,
            lease_expires_at = NULL,
            not_before = NULL,
            updated_at = v_now
        FROM expired AS e
        WHERE t.id = e.id
        RETURNING t.id, t.attempts, t.status
    ),
    closed AS (
        UPDATE task_attempts AS a
        SET finished_at = v_now, outcome = 'lost', error = 'worker lost'
        FROM recovered AS r
        WHERE a.task_id = r.id AND a.attempt = r.attempts AND a.outcome IS NULL
        RETURNING a.task_id
    )
    SELECT count(*), count(*) FILTER (WHERE r.status = 'pending')
    INTO v_n_recovered, v_n_requeued
    FROM recovered AS r;

    IF v_n_requeued > 0 THEN
        PERFORM pg_notify('peptide_opt_tasks', 'recovered');
    END IF;
    RETURN v_n_recovered;
END
$$;


-- Record p_worker_id's heartbeat, renew the leases of the attempts it holds and
-- recover expired leases of other workers. Returns one row: whether claiming is
-- paused, whether a claimable task waits (the fallback poll), the held tasks whose
-- cancellation was requested, and the held tasks that are no longer this worker's.
CREATE OR REPLACE FUNCTION peptide_opt_heartbeat_v1(
    p_worker_id      text,
    p_host           text,
    p_pid            integer,
    p_started_at     timestamp,
    p_status         text,
    p_max_workers    integer,
    p_task_types     text[],
    p_task_ids       text[],
    p_attempts       integer[],
    p_lease_seconds  double precision
)
RETURNS TABLE (
    paused       boolean,
    ready        boolean,
    cancel_ids   text[],
    lost_ids     text[],
    n_recovered  integer
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now       timestamp := timezone('utc', now());
    v_renewed   text[];
    v_cancel    text[];
BEGIN
    INSERT INTO workers AS w (
        worker_id, host, pid, started_at, heartbeat_at, status, running_tasks,
        max_workers, task_types
    )
    VALUES (
        p_worker_id, p_host, p_pid, p_started_at, v_now, p_status,
        cardinality(p_task_ids), p_max_workers, p_task_types
    )
    ON CONFLICT (worker_id) DO UPDATE
        SET heartbeat_at = excluded.heartbeat_at, status = excluded.status,
            running_tasks = excluded.running_tasks;

    WITH held AS (
        SELECT h.id, h.attempt
        FROM unnest(p_task_ids, p_attempts) AS h (id, attempt)
    ),
    renewed AS (
        UPDATE tasks AS t
        SET lease_expires_at = v_now + make_interval(secs => p_lease_seconds)
        FROM held AS h
        WHERE t.id = h.id
          AND t.attempts = h.attempt
          AND t.worker_id = p_worker_id
          AND t.status = 'processing'
        RETURNING t.id, t.cancel_requested_at
    )
    SELECT coalesce(array_agg(r.id::text), '{}'),
           coalesce(
               array_agg(r.id::text) FILTER (WHERE r.cancel_requested_at IS NOT NULL),
               '{}'
           )
    INTO v_renewed, v_cancel
    FROM renewed AS r;

    n_recovered := peptide_opt_recover_v1(p_task_types);

    -- Rows of workers that stopped without removing their row.
    DELETE FROM workers AS w WHERE w.heartbeat_at < v_now - interval '1 day';

    paused := EXISTS (
        SELECT 1 FROM peptide_opt_settings AS s
        WHERE s.name = 'paused' AND s.value = 'true'::jsonb
    );
    ready := EXISTS (
        SELECT 1 FROM tasks AS t
        WHERE t.status = 'pending'
          AND t.task_type = ANY (p_task_types)
          AND (t.not_before IS NULL OR t.not_before <= v_now)
    );
    cancel_ids := v_cancel;
    lost_ids := ARRAY(
        SELECT h.id FROM unnest(p_task_ids) AS h (id) WHERE h.id <> ALL (v_renewed)
    );
    RETURN NEXT;
END
$$;
