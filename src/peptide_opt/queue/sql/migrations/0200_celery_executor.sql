-- The Celery executor (EXECUTOR=celery): the claim of one named task, which a Celery
-- worker runs for each message, and the send markers of the dispatcher and the API.
--
-- A send marker says that a message for the task's current pending period is on its
-- way to the broker, so that the dispatcher's sweeps do not send one per sweep. A
-- claim deletes the task's marker, so a task that returns to pending (a retry, a
-- recovered lease, a release) gets a new message. Markers only save messages: the
-- claim's fence is what keeps a task from running twice.

CREATE TABLE IF NOT EXISTS peptide_opt_celery_sends (
    task_id  CHAR(36)   PRIMARY KEY,
    sent_at  TIMESTAMP  NOT NULL
);


-- Claim task p_task_id for p_worker_id when it is pending, due and of p_task_types, as
-- peptide_opt_claim_v1 claims its task: attempt incremented, lease set, attempt row
-- recorded. Returns one row; when nothing was claimed, the task columns are NULL and
-- skipped says why:
--   not_found    no task of p_task_types has this id
--   locked       another transaction holds the row, such as a claim of a duplicate
--   not_pending  the task is processing or done (a duplicate or stale message)
--   paused, not_due, user_limit
--                the task can run later; its send marker is deleted, so that the
--                dispatcher sends it again once it can
CREATE OR REPLACE FUNCTION peptide_opt_claim_task_v1(
    p_task_id        text,
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
    max_attempts  integer,
    skipped       text
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    -- A char(36) value compares with the primary key's index; text would not.
    v_id            char(36) := p_task_id;
    v_now           timestamp := timezone('utc', now());
    v_user_id       char(36);
    v_task_type     varchar;
    v_status        varchar;
    v_not_before    timestamp;
    v_job_dir       varchar;
    v_attempt       integer;
    v_max_attempts  integer;
    v_skipped       text;
BEGIN
    SELECT t.user_id, t.task_type, t.status, t.not_before
    INTO v_user_id, v_task_type, v_status, v_not_before
    FROM tasks AS t
    WHERE t.id = v_id AND t.task_type = ANY (p_task_types)
    FOR UPDATE SKIP LOCKED;

    IF NOT FOUND THEN
        v_skipped := CASE
            WHEN EXISTS (
                SELECT 1 FROM tasks AS t
                WHERE t.id = v_id AND t.task_type = ANY (p_task_types)
            ) THEN 'locked'
            ELSE 'not_found'
        END;
    ELSIF v_status <> 'pending' THEN
        v_skipped := 'not_pending';
    ELSIF EXISTS (
        SELECT 1 FROM peptide_opt_settings AS s
        WHERE s.name = 'paused' AND s.value = 'true'::jsonb
    ) THEN
        v_skipped := 'paused';
    ELSIF v_not_before IS NOT NULL AND v_not_before > v_now THEN
        v_skipped := 'not_due';
    ELSIF p_max_per_user IS NOT NULL AND (
        SELECT count(*)
        FROM tasks AS t
        WHERE t.user_id = v_user_id
          AND t.status = 'processing'
          AND t.task_type = ANY (p_task_types)
    ) >= p_max_per_user THEN
        v_skipped := 'user_limit';
    END IF;

    IF v_skipped IS NOT NULL THEN
        IF v_skipped IN ('paused', 'not_due', 'user_limit') THEN
            DELETE FROM peptide_opt_celery_sends AS s WHERE s.task_id = v_id;
        END IF;
        RETURN QUERY SELECT NULL::char(36), NULL::char(36), NULL::varchar,
            NULL::varchar, NULL::integer, NULL::integer, v_skipped;
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
    RETURNING t.job_dir, t.attempts, t.max_attempts
    INTO v_job_dir, v_attempt, v_max_attempts;

    INSERT INTO task_attempts AS a (task_id, attempt, worker_id, started_at)
    VALUES (v_id, v_attempt, p_worker_id, v_now)
    ON CONFLICT (task_id, attempt) DO UPDATE
        SET worker_id = excluded.worker_id, started_at = excluded.started_at,
            finished_at = NULL, outcome = NULL, error = NULL;

    DELETE FROM peptide_opt_celery_sends AS s WHERE s.task_id = v_id;

    RETURN QUERY SELECT v_id, v_user_id, v_task_type, v_job_dir, v_attempt,
        v_max_attempts, NULL::text;
END
$$;


-- Mark the pending, due tasks of p_task_types that need a message and return their
-- ids, at most p_limit, highest priority and oldest first: those without a marker and
-- those whose marker is older than p_resend_after_seconds (a message lost with the
-- broker, or sent by a process that died before sending it). Nothing while claiming
-- is paused. Markers of tasks that are no longer pending are deleted first.
--
-- Concurrent sweeps and API sends mark each task once: the upsert's condition is
-- checked again on the row that a concurrent transaction committed.
CREATE OR REPLACE FUNCTION peptide_opt_celery_sweep_v1(
    p_task_types             text[],
    p_resend_after_seconds   double precision,
    p_limit                  integer
)
RETURNS TABLE (task_id char(36))
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now    timestamp := timezone('utc', now());
    v_stale  timestamp := timezone('utc', now())
        - make_interval(secs => p_resend_after_seconds);
BEGIN
    DELETE FROM peptide_opt_celery_sends AS s
    WHERE NOT EXISTS (
        SELECT 1 FROM tasks AS t WHERE t.id = s.task_id AND t.status = 'pending'
    );

    IF EXISTS (
        SELECT 1 FROM peptide_opt_settings AS s
        WHERE s.name = 'paused' AND s.value = 'true'::jsonb
    ) THEN
        RETURN;
    END IF;

    RETURN QUERY
    INSERT INTO peptide_opt_celery_sends AS s (task_id, sent_at)
    SELECT t.id, v_now
    FROM tasks AS t
    WHERE t.status = 'pending'
      AND t.task_type = ANY (p_task_types)
      AND (t.not_before IS NULL OR t.not_before <= v_now)
      AND NOT EXISTS (
          SELECT 1 FROM peptide_opt_celery_sends AS m
          WHERE m.task_id = t.id AND m.sent_at >= v_stale
      )
    ORDER BY t.priority DESC, t.created_at, t.id
    LIMIT p_limit
    ON CONFLICT ON CONSTRAINT peptide_opt_celery_sends_pkey DO UPDATE
        SET sent_at = excluded.sent_at
        WHERE s.sent_at < v_stale
    RETURNING s.task_id;
END
$$;
