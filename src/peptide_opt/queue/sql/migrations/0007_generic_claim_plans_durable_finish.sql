-- Cheaper claims and finishes, with the signatures, arguments and results of 0004.
--
-- The claim's statements run on generic plans that only walk indexes. Under the
-- default plan_cache_mode, PL/pgSQL planned the claim's main statement anew on every
-- call, which cost about half of the claim's server time. A plan cached while the
-- queue was empty used sequential scans instead, and kept them after a bulk insert
-- until the next ANALYZE: 120 ms per claim over 20,000 pending tasks of 10 users.
-- The settings below keep every scan on an index, whatever the statistics say.
-- jit is off because the penalty that the planner adds to a disabled sort (the one
-- that orders the candidates) would push the cost over jit_above_cost, and compiling
-- the statement took about a second per call.
--
-- peptide_opt_finish_v2 and peptide_opt_finish_and_claim_v2 commit durably by
-- themselves: SET LOCAL synchronous_commit TO DEFAULT restores the server's setting
-- for the caller's transaction, in a session that turned it off for its claims. A
-- worker of the previous version wraps the v1 functions in its own set_config, which
-- read that setting from pg_settings at about 0.6 ms per finish.

-- Claim the next pending task; see 0004 for the order and the walk over users. The
-- walk orders by every column of ix_tasks_pending_by_user, so that with sorts
-- disabled that index is the one that gives the order.
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
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_sort = off
SET enable_incremental_sort = off
SET jit = off
AS $$
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
        (
            SELECT t.user_id
            FROM tasks AS t
            WHERE t.status = 'pending' AND t.task_type = ANY (p_task_types)
            ORDER BY t.user_id, t.priority DESC, t.created_at, t.id
            LIMIT 1
        )
        UNION ALL
        SELECT (
            SELECT t.user_id
            FROM tasks AS t
            WHERE t.status = 'pending'
              AND t.task_type = ANY (p_task_types)
              AND t.user_id > u.user_id
            ORDER BY t.user_id, t.priority DESC, t.created_at, t.id
            LIMIT 1
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


-- peptide_opt_finish_v1 with a durable commit of the caller's transaction.
CREATE OR REPLACE FUNCTION peptide_opt_finish_v2(
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
BEGIN
    SET LOCAL synchronous_commit TO DEFAULT;
    RETURN peptide_opt_finish_v1(
        p_task_id, p_worker_id, p_attempt, p_outcome, p_retryable, p_error,
        p_summary, p_step_timings, p_retry_delay_seconds
    );
END
$$;


-- peptide_opt_finish_and_claim_v1 with a durable commit of the caller's transaction.
CREATE OR REPLACE FUNCTION peptide_opt_finish_and_claim_v2(
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
BEGIN
    SET LOCAL synchronous_commit TO DEFAULT;
    RETURN QUERY
    SELECT *
    FROM peptide_opt_finish_and_claim_v1(
        p_task_id, p_worker_id, p_attempt, p_outcome, p_retryable, p_error,
        p_summary, p_step_timings, p_retry_delay_seconds, p_task_types,
        p_lease_seconds, p_max_attempts, p_max_per_user
    );
END
$$;
