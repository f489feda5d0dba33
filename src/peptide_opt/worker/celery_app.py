"""The Celery application of ``EXECUTOR=celery``: its settings, its one task and the
executor that runs that task inside a Celery worker.

A message carries only a task id, and the tasks table stays the source of truth. A
Celery worker claims the row of that id (fenced, in one transaction) and runs the task
in a task process of :mod:`peptide_opt.worker.pool`. Slots, leases, heartbeat,
timeout, memory limit, cancellation and the fenced finish are those of the PostgreSQL
worker. A message whose task is not pending (a duplicate, or a task already done) is
acknowledged and ignored, so a task never runs twice however often its id is sent.

The worker must use Celery's ``threads`` or ``solo`` pool (``threads`` is the default
here): each pool thread only waits for its task process, and the heartbeat and
listener threads of the executor share the worker's process with the pool.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading

from celery import Celery, signals
from celery.concurrency import get_implementation
from celery.exceptions import Reject

from peptide_opt.queue.store import ClaimedTask, ClaimPolicy, QueueStore
from peptide_opt.settings import Settings
from peptide_opt.worker.logs import configure_logging
from peptide_opt.worker.loop import Worker, WorkerOptions, new_worker_id
from peptide_opt.worker.registry import handler_specs

logger = logging.getLogger(__name__)

TASK_NAME = "peptide_opt.run_task"
# tasks.id is CHAR(36); a longer id cannot name a task.
MAX_TASK_ID_LENGTH = 36
# The modules of Celery's ``threads`` and ``solo`` pools.
_ALLOWED_POOL_MODULES = ("celery.concurrency.thread", "celery.concurrency.solo")


def configure(app: Celery, broker_url: str) -> None:
    """Apply the executor's settings to ``app``."""
    app.conf.update(
        broker_url=broker_url,
        broker_connection_retry_on_startup=True,
        # Results live in the tasks table, so Celery stores none.
        task_ignore_result=True,
        result_backend=None,
        task_serializer="json",
        accept_content=["json"],
        # A message is acknowledged when its task ends, so the message of a worker
        # that dies mid-task is delivered again. The claim's fence ignores it when
        # the task has finished elsewhere in the meantime.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One message per pool thread: a message waits in the broker, where any
        # idle worker can take it, rather than behind a busy worker's running task.
        worker_prefetch_multiplier=1,
        worker_pool="threads",
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        # Task events (what Flower shows) stay off: Flower turns them on in every
        # worker while it runs (its enable_events option, on by default), so that
        # workers pay for the events only while someone watches.
        worker_send_task_events=False,
    )


def create_app(broker_url: str) -> Celery:
    """Return a Celery application on ``broker_url`` with the executor's settings."""
    app = Celery("peptide_opt", set_as_current=False)
    configure(app, broker_url)
    return app


@functools.cache
def app_for(broker_url: str) -> Celery:
    """Return the application that sends to ``broker_url`` (one per URL and process)."""
    if broker_url == app.conf.broker_url:
        return app
    return create_app(broker_url)


def claim_task(
    store: QueueStore, policy: ClaimPolicy, task_id: str
) -> tuple[ClaimedTask | None, str | None]:
    """Claim the task ``task_id`` for ``policy``'s worker when it is pending and due.

    Returns the claimed attempt, or None and why nothing was claimed (see
    ``peptide_opt_claim_task_v1``).
    """
    row = store.execute(
        "claim_task",
        {
            "task_id": task_id,
            "worker_id": policy.worker_id,
            "task_types": list(policy.task_types),
            "lease_seconds": policy.lease_seconds,
            "max_attempts": policy.max_attempts,
            "max_per_user": policy.max_per_user,
        },
    )[0]
    if row["skipped"] is not None:
        return None, row["skipped"]
    claimed = ClaimedTask(
        task_id=row["task_id"].strip(),
        user_id=row["user_id"].strip(),
        task_type=row["task_type"],
        job_dir=row["job_dir"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
    )
    return claimed, None


def send_task_ids(celery: Celery, task_ids: list[str]) -> None:
    """Send one message per task id, over one broker connection."""
    with celery.producer_or_acquire() as producer:
        for task_id in task_ids:
            celery.send_task(TASK_NAME, args=[task_id], producer=producer)


# ``celery -A peptide_opt.worker.celery_app worker|flower`` finds this application.
app = create_app(Settings.from_env().celery_broker_url)


@app.task(name=TASK_NAME, ignore_result=True)
def run_task(task_id: str) -> str | None:
    """Claim and run the task ``task_id``; return its new status, None when ignored."""
    executor = _executor
    if executor is None:
        raise RuntimeError("the Celery executor has not started in this worker")
    return executor.run_task(task_id)


class CeleryExecutor:
    """The PostgreSQL worker's slots, heartbeat and listener, without its claim loop.

    Each Celery pool thread takes a free slot for the task it runs; there are as many
    slots as pool threads.
    """

    def __init__(
        self,
        settings: Settings,
        options: WorkerOptions | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.worker = Worker(settings, handler_specs(), options, worker_id=worker_id)
        self._free_slots: queue.SimpleQueue = queue.SimpleQueue()
        for slot in self.worker.slots:
            self._free_slots.put(slot)

    def start(self) -> None:
        logger.info(
            "celery_executor_started",
            extra={
                "task_types": ",".join(self.worker.policy.task_types),
                "max_workers": self.worker.settings.max_workers,
                "cores_per_task": self.worker.cores_per_task,
                "lease_s": self.worker.settings.lease_seconds,
            },
        )
        self.worker.start_services()

    def request_stop(self, reason: str) -> None:
        """Give running tasks SHUTDOWN_GRACE seconds; a second request ends it now."""
        self.worker.request_stop(reason)

    def stop(self) -> None:
        self.worker.stop_services()

    def run_task(self, task_id: str) -> str | None:
        """Claim ``task_id`` and run it; return its new status, None when ignored."""
        if not isinstance(task_id, str) or len(task_id) > MAX_TASK_ID_LENGTH:
            logger.warning("task_message_invalid", extra={"task_id": repr(task_id)})
            return None
        if self.worker.stopping.is_set():
            # The message goes back to the broker for another worker.
            raise Reject("the worker is shutting down", requeue=True)

        slot = self._free_slots.get()
        try:
            task, skipped = claim_task(self.worker.store, self.worker.policy, task_id)
            if task is None:
                logger.info(
                    "task_message_ignored",
                    extra={"task_id": task_id, "reason": skipped},
                )
                return None
            return slot.run_claimed(task)
        finally:
            self._free_slots.put(slot)


# -- the worker's life cycle ----------------------------------------------------------

_executor: CeleryExecutor | None = None
_executor_lock = threading.Lock()
# Settings, options and worker id that ``peptide-opt worker`` chose before it started
# the Celery worker.
_prepared: dict = {}


def prepare_worker(settings: Settings, options: WorkerOptions, worker_id: str) -> None:
    """Set the settings, options and worker id of the executor that starts next."""
    _prepared.update(settings=settings, options=options, worker_id=worker_id)


@signals.worker_init.connect
def _start_executor(sender, **kwargs) -> None:
    global _executor
    if sender.app is not app:
        return
    pool_module = get_implementation(sender.pool_cls).__module__
    if pool_module not in _ALLOWED_POOL_MODULES:
        # A prefork pool would run tasks in processes where no executor exists.
        # SystemExit passes through Celery's signal dispatch, which logs and
        # swallows ordinary exceptions.
        logger.error("celery_pool_unsupported", extra={"pool": pool_module})
        raise SystemExit(2)

    # The solo pool runs one task at a time whatever its concurrency says.
    max_workers = 1 if pool_module.endswith("solo") else int(sender.concurrency or 1)
    if _prepared:
        settings, worker_id = _prepared["settings"], _prepared["worker_id"]
    else:
        # Started as ``celery -A peptide_opt.worker.celery_app worker``.
        settings, worker_id = Settings.from_env(), new_worker_id()
        configure_logging(settings.log_level, settings.log_format, worker_id)
    settings = dataclasses.replace(settings, max_workers=max_workers)
    executor = CeleryExecutor(settings, _prepared.get("options"), worker_id)
    executor.start()
    with _executor_lock:
        _executor = executor


@signals.worker_shutting_down.connect
def _request_executor_stop(sig=None, how=None, **kwargs) -> None:
    executor = _executor
    if executor is not None:
        executor.request_stop(f"{how or 'warm'} shutdown ({sig})")


@signals.worker_shutdown.connect
def _stop_executor(sender, **kwargs) -> None:
    global _executor
    if sender.app is not app:
        return
    with _executor_lock:
        executor, _executor = _executor, None
    if executor is not None:
        executor.stop()
