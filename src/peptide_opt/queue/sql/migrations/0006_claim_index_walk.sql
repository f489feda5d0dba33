-- The claim walks ix_tasks_pending_by_user in index order and stops at the first
-- entry of each user. Right after a bulk insert the table's statistics still count
-- few pending rows, and the planner then preferred a bitmap scan that reads every
-- pending row on each claim, so each claim cost grew with the queue's length. The
-- walk is now written as ORDER BY ... LIMIT 1 and the function turns bitmap scans
-- off for its own statements. Signature, arguments and results are those of 0004.

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
SET enable_bitmapscan = off
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
            ORDER BY t.user_id
            LIMIT 1
        )
        UNION ALL
        SELECT (
            SELECT t.user_id
            FROM tasks AS t
            WHERE t.status = 'pending'
              AND t.task_type = ANY (p_task_types)
              AND t.user_id > u.user_id
            ORDER BY t.user_id
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
