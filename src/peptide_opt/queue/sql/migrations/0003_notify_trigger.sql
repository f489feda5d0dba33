-- Wake the workers when a row of one of our task types is inserted, including rows
-- that the platform inserts with a plain INSERT. The payload is the task type, so
-- PostgreSQL folds the notifications of a many-row insert into one per type.

CREATE OR REPLACE FUNCTION peptide_opt_notify_task_v1() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('peptide_opt_tasks', NEW.task_type);
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER peptide_opt_notify_task
    AFTER INSERT ON tasks
    FOR EACH ROW
    WHEN (
        NEW.status = 'pending'
        AND (NEW.task_type = 'peptide_optimization'
             OR NEW.task_type LIKE 'peptide\_opt.%')
    )
    EXECUTE FUNCTION peptide_opt_notify_task_v1();
