-- Faster claim, finish, recovery and heartbeat functions with the signatures,
-- arguments and results of 0004, so workers of either version call them alike.
-- The finish writes the task row once (one new row version instead of two), and an
-- attempt's row in task_attempts is written once, when the attempt ends: by the
-- finish, or by the recovery for a lost worker. The running attempt is the task
-- row's own (worker_id, attempts, started_at).

-- Claim the next pending task; see 0004 for the order and the walk over users.
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
    v_id            char(36);
    v_user_id       char(36);
    v_task_type     varchar;
    v_job_dir       varchar;
    v_attempt       integer;
    v_max_attempts  integer;
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
    RETURNING t.user_id, t.task_type, t.job_dir, t.attempts, t.max_attempts
    INTO v_user_id, v_task_type, v_job_dir, v_attempt, v_max_attempts;

    RETURN QUERY
    SELECT v_id, v_user_id, v_task_type, v_job_dir, v_attempt, v_max_attempts;
END
$$;


-- End attempt p_attempt of p_task_id held by p_worker_id; see 0004 for the outcomes.
-- The row is locked and fenced first, so the status, finish time and retry time
-- are computed once and written in a single UPDATE.
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
    -- tasks.id is CHAR(36): a text comparison would cast the column and miss the
    -- primary key's index.
    v_id            char(36) := p_task_id;
    v_now           timestamp := timezone('utc', now());
    v_max_attempts  integer;
    v_started_at    timestamp;
    v_status        text;
    v_not_before    timestamp;
BEGIN
    SELECT coalesce(t.max_attempts, 1), t.started_at
    INTO v_max_attempts, v_started_at
    FROM tasks AS t
    WHERE t.id = v_id
      AND t.worker_id = p_worker_id
      AND t.attempts = p_attempt
      AND t.status = 'processing'
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;

    v_status := CASE
        WHEN p_outcome IN ('finished', 'cancelled') THEN p_outcome
        WHEN p_outcome = 'released' THEN 'pending'
        WHEN p_retryable AND p_attempt < v_max_attempts THEN 'pending'
        ELSE 'failed'
    END;
    IF v_status = 'pending' AND p_outcome <> 'released' THEN
        v_not_before := v_now + make_interval(
            secs => p_retry_delay_seconds * 2 ^ (p_attempt - 1)
        );
    END IF;

    UPDATE tasks AS t
    SET status = v_status,
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
            WHEN p_outcome = 'released' THEN v_max_attempts + 1
            ELSE t.max_attempts
        END,
        finished_at = CASE WHEN v_status = 'pending' THEN NULL ELSE v_now END,
        not_before = v_not_before,
        worker_id = NULL,
        lease_expires_at = NULL,
        cancel_requested_at = NULL,
        updated_at = v_now
    WHERE t.id = v_id;

    IF v_status = 'pending' THEN
        PERFORM pg_notify('peptide_opt_tasks', 'retry');
    END IF;

    INSERT INTO task_attempts AS a (
        task_id, attempt, worker_id, started_at, finished_at, outcome, error
    )
    VALUES (
        v_id, p_attempt, p_worker_id, coalesce(v_started_at, v_now), v_now,
        p_outcome, p_error
    )
    ON CONFLICT (task_id, attempt) DO UPDATE
        SET worker_id = excluded.worker_id, started_at = excluded.started_at,
            finished_at = excluded.finished_at, outcome = excluded.outcome,
            error = excluded.error;

    RETURN v_status;
END
$$;


-- Return expired-lease tasks to pending or failed; see 0004.
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
        SELECT t.id, t.attempts, t.worker_id, t.started_at
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
        INSERT INTO task_attempts AS a (
            task_id, attempt, worker_id, started_at, finished_at, outcome, error
        )
        SELECT e.id, e.attempts, e.worker_id, coalesce(e.started_at, v_now), v_now,
               'lost', 'worker lost'
        FROM expired AS e
        JOIN recovered AS r ON r.id = e.id
        ON CONFLICT (task_id, attempt) DO UPDATE
            SET finished_at = excluded.finished_at, outcome = excluded.outcome,
                error = excluded.error
            WHERE a.outcome IS NULL
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


-- Record a worker's heartbeat and renew its leases; see 0004. The held task ids
-- are compared as CHAR(36), the type of tasks.id, so that the primary key serves.
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
        SELECT h.id::char(36) AS id, h.attempt
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
    SELECT coalesce(array_agg(rtrim(r.id)), '{}'),
           coalesce(
               array_agg(rtrim(r.id)) FILTER (WHERE r.cancel_requested_at IS NOT NULL),
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
        SELECT h.id
        FROM unnest(p_task_ids) AS h (id)
        WHERE rtrim(h.id) <> ALL (v_renewed)
    );
    RETURN NEXT;
END
$$;
