"""The worker: claims tasks from PostgreSQL and runs each in a pool process.

One worker process runs ``max_workers`` slots. Each slot is a thread that owns one
task process and loops: claim a task, send it to its process, watch it (progress,
timeout, memory, cancellation, lease), then finish it and claim the next task in one
round trip. A heartbeat thread renews the leases of the running tasks, records the
worker's row and recovers tasks of workers whose lease expired. A listener thread
wakes idle slots on NOTIFY; the heartbeat's check for waiting tasks is the fallback
poll.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path

from peptide_opt.queue.store import (
    CANCEL_CHANNEL,
    ClaimedTask,
    ClaimPolicy,
    DatabaseUnavailable,
    Listener,
    Outcome,
    QueueStore,
    utc_now,
)
from peptide_opt.settings import Settings
from peptide_opt.worker.pool import (
    LogConfig,
    StepReport,
    TaskProcess,
    TaskProcessDied,
    TaskResult,
)

logger = logging.getLogger(__name__)

# How often a busy worker renews its leases: a third of the lease, at most 5 s.
_MAX_BUSY_HEARTBEAT_S = 5.0
# An idle worker's heartbeat, which also polls for tasks and recovers expired leases.
# 20 s keeps a waiting worker at 0.05 queries per second.
_MAX_IDLE_HEARTBEAT_S = 20.0
# How often a slot looks at its running task (cancel, timeout, lease, shutdown).
_WATCH_INTERVAL_S = 0.25
_MEMORY_CHECK_INTERVAL_S = 1.0


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    """Worker settings beyond the environment's :class:`Settings`."""

    retry_delay_s: float = 10.0
    recycle_after_tasks: int = 100
    workdir_root: Path | None = None


def new_worker_id() -> str:
    """Return ``host-pid-random``: unique across hosts, restarts and pid reuse."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _format_bytes(n_bytes: int) -> str:
    return f"{n_bytes / 1024**2:.0f} MiB"


class Worker:
    """A worker process: its slots, heartbeat, listener and shutdown."""

    def __init__(
        self,
        settings: Settings,
        handler_specs: dict[str, str],
        options: WorkerOptions | None = None,
        worker_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.options = options or WorkerOptions()
        self.handler_specs = handler_specs
        self.worker_id = worker_id or new_worker_id()
        self.policy = ClaimPolicy(
            worker_id=self.worker_id,
            task_types=tuple(sorted(handler_specs)),
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
            max_per_user=settings.max_tasks_per_user,
            retry_delay_seconds=self.options.retry_delay_s,
        )
        self.identity = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": utc_now(),
        }
        self.cores_per_task = max(1, settings.worker_cores // settings.max_workers)
        self.log_config = LogConfig(
            logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            settings.log_format,
            self.worker_id,
        )
        self.store = QueueStore(
            settings.database_url, self._database_give_up, fast_commits=True
        )
        self.listener = Listener(
            settings.database_url, self._on_notify, self.wake_idle_slots
        )
        self.stopping = threading.Event()
        self.grace_deadline: float | None = None
        self.finished = threading.Event()
        self.paused = False
        self._heartbeat_due = threading.Event()
        self._reported_busy = False
        self._workdir_root = Path(
            tempfile.mkdtemp(
                prefix=f"peptide-opt-{self.worker_id}-",
                dir=self.options.workdir_root,
            )
        )
        self.slots = [Slot(self, index) for index in range(settings.max_workers)]
        self._cleanup_queue: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._cleanup = threading.Thread(
            target=self._cleanup_loop, name="peptide-opt-cleanup", daemon=True
        )
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name="peptide-opt-heartbeat", daemon=True
        )

    # -- life cycle -----------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit code."""
        self._install_signal_handlers()
        logger.info(
            "worker_started",
            extra={
                "task_types": ",".join(self.policy.task_types),
                "max_workers": self.settings.max_workers,
                "cores_per_task": self.cores_per_task,
                "lease_s": self.settings.lease_seconds,
            },
        )
        self.start_services()
        for slot in self.slots:
            slot.thread.start()

        for slot in self.slots:
            while slot.thread.is_alive():
                slot.thread.join(timeout=0.5)
        self.stop_services()
        return 0

    def start_services(self) -> None:
        """Start the task processes, the listener and the heartbeat, but no claims.

        :meth:`run` starts the slots' claim loops after this; the Celery executor
        claims each task by id and runs it with :meth:`Slot.run_claimed` instead.
        """
        for slot in self.slots:
            slot.start_process()
        for slot in self.slots:
            slot.process.wait_ready(timeout=60)
        # Listen before the first heartbeat and the first claims: a task inserted
        # after a claim found nothing then always wakes a slot.
        self.listener.start()
        self.listener.ready.wait(timeout=30)
        self._send_heartbeat()
        self._heartbeat.start()
        self._cleanup.start()

    def stop_services(self) -> None:
        """Stop what :meth:`start_services` started, once no task runs any more."""
        self.finished.set()
        self._heartbeat_due.set()
        self._heartbeat.join(timeout=10)
        self._shut_down()

    def request_stop(self, reason: str) -> None:
        """Stop claiming; running tasks get SHUTDOWN_GRACE seconds to finish."""
        if self.stopping.is_set():
            # A second request ends the grace period now.
            self.grace_deadline = time.monotonic()
            return
        self.grace_deadline = time.monotonic() + self.settings.shutdown_grace_s
        self.stopping.set()
        logger.info(
            "worker_stopping",
            extra={"reason": reason, "grace_s": self.settings.shutdown_grace_s},
        )
        self.wake_idle_slots()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handle(signum: int, frame: object) -> None:
            self.request_stop(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _shut_down(self) -> None:
        for slot in self.slots:
            slot.stop_process()
        self._cleanup_queue.put(None)
        self._cleanup.join(timeout=30)
        self.listener.stop()
        try:
            self.store.remove_worker(self.worker_id)
        except DatabaseUnavailable:
            logger.warning("worker_row_not_removed")
        self.store.close()
        shutil.rmtree(self._workdir_root, ignore_errors=True)
        logger.info("worker_stopped")

    def _database_give_up(self) -> bool:
        # While stopping, a task's result is still worth waiting for; a worker whose
        # slots have all ended gives up on the database at once.
        return self.finished.is_set()

    # -- wake-ups -------------------------------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == CANCEL_CHANNEL:
            for slot in self.slots:
                slot.request_cancel(payload.strip())
            return
        self.wake_idle_slots()

    def wake_idle_slots(self) -> None:
        for slot in self.slots:
            slot.wake.set()

    def note_state_change(self) -> None:
        """Ask for an early heartbeat when the worker turned idle or busy, so that
        the workers table shows it."""
        busy = any(slot.current is not None for slot in self.slots)
        if busy != self._reported_busy:
            self._reported_busy = busy
            self._heartbeat_due.set()

    # -- heartbeat ------------------------------------------------------------------

    def _heartbeat_interval(self) -> float:
        lease = self.settings.lease_seconds
        if any(slot.current is not None for slot in self.slots):
            return min(_MAX_BUSY_HEARTBEAT_S, lease / 3)
        return min(_MAX_IDLE_HEARTBEAT_S, self.settings.poll_interval_s, lease / 2)

    def _heartbeat_loop(self) -> None:
        last_beat = time.monotonic()
        while not self.finished.is_set():
            interval = self._heartbeat_interval()
            self._heartbeat_due.wait(max(0.0, last_beat + interval - time.monotonic()))
            if self.finished.is_set():
                return
            if self._heartbeat_due.is_set():
                self._heartbeat_due.clear()
                # State changes may come in bursts; one early beat per second is
                # enough for the workers table.
                if time.monotonic() - last_beat < 1.0:
                    self._heartbeat_due.wait(1.0 - (time.monotonic() - last_beat))
                    self._heartbeat_due.clear()
            try:
                self._send_heartbeat()
            except DatabaseUnavailable:
                return
            last_beat = time.monotonic()

    def _send_heartbeat(self) -> None:
        held = [slot.current for slot in self.slots if slot.current is not None]
        beat = self.store.heartbeat(
            self.policy,
            self.identity,
            "busy" if held else "idle",
            self.settings.max_workers,
            held,
        )
        self.paused = beat.paused
        for task_id in beat.cancel_ids:
            for slot in self.slots:
                slot.request_cancel(task_id)
        for task_id in beat.lost_ids:
            for slot in self.slots:
                slot.mark_lease_lost(task_id)
        if beat.n_recovered:
            logger.warning("tasks_recovered", extra={"n_tasks": beat.n_recovered})
        if beat.ready and not beat.paused and not self.stopping.is_set():
            self.wake_idle_slots()

    def workdir_for(self, task: ClaimedTask) -> Path:
        return self._workdir_root / f"{task.task_id}-{task.attempt}"

    def remove_later(self, workdir: Path) -> None:
        """Delete a finished task's working directory in the cleanup thread, so that
        the slot finishes the task and claims the next one without waiting."""
        self._cleanup_queue.put(workdir)

    def _cleanup_loop(self) -> None:
        while (workdir := self._cleanup_queue.get()) is not None:
            shutil.rmtree(workdir, ignore_errors=True)


class Slot:
    """One task at a time: a thread and the task process it owns."""

    def __init__(self, worker: Worker, index: int) -> None:
        self.worker = worker
        self.index = index
        self.wake = threading.Event()
        self.current: ClaimedTask | None = None
        self.process: TaskProcess | None = None
        # A process started ahead to replace one that is due for recycling. It takes
        # over once its imports are done, so that no task waits for a process start.
        self.spare: TaskProcess | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"peptide-opt-slot-{index}", daemon=True
        )
        self._lock = threading.Lock()
        self._cancel_requested = False
        self._lease_lost = False
        self._last_duration_s = 0.0

    # -- signals from other threads -------------------------------------------------

    def request_cancel(self, task_id: str) -> None:
        with self._lock:
            if self.current is not None and self.current.task_id == task_id:
                self._cancel_requested = True

    def mark_lease_lost(self, task_id: str) -> None:
        with self._lock:
            if self.current is not None and self.current.task_id == task_id:
                self._lease_lost = True

    # -- task process ---------------------------------------------------------------

    def start_process(self) -> None:
        self.process = TaskProcess(
            self.worker.handler_specs,
            self.worker.cores_per_task,
            self.worker.log_config,
        )

    def stop_process(self) -> None:
        for process in (self.process, self.spare):
            if process is not None:
                process.stop()
        self.process = self.spare = None

    def _prepare_process(self) -> None:
        """Make sure a live task process is there; swap in a ready spare."""
        if self.process is None or not self.process.is_alive():
            self._replace_process()
            return
        if self.spare is not None and self.spare.poll_ready():
            retired, self.process, self.spare = self.process, self.spare, None
            # The idle process exits on its own; waiting for it would delay the task.
            threading.Thread(target=retired.stop, daemon=True).start()

    def _replace_process(self) -> None:
        if self.process is not None:
            self.process.kill()
        if self.spare is not None:
            self.process, self.spare = self.spare, None
        else:
            self.start_process()

    # -- the loop -------------------------------------------------------------------

    def _run(self) -> None:
        worker = self.worker
        task: ClaimedTask | None = None
        while True:
            try:
                if task is None:
                    if worker.stopping.is_set():
                        return
                    task = self._wait_and_claim()
                    continue
                outcome = self._execute(task)
                task = self._finish(task, outcome)
            except DatabaseUnavailable:
                logger.error("database_unavailable", extra={"slot": self.index})
                return
            except Exception:
                # A bug here must not end the slot; the task, if any, is left to its
                # lease, which expires and returns it to pending.
                logger.exception(
                    "slot_error",
                    extra={"slot": self.index, "task_id": task and task.task_id},
                )
                task = None
                worker.stopping.wait(1.0)

    def _wait_and_claim(self) -> ClaimedTask | None:
        # Clear before claiming: a NOTIFY that arrives during the claim sets the
        # event again, so the slot claims once more instead of sleeping through it.
        self.wake.clear()
        task = None
        if not self.worker.paused:
            task = self.worker.store.claim(self.worker.policy)
        if task is None:
            self.wake.wait()
        return task

    def _finish(self, task: ClaimedTask, outcome: Outcome | None) -> ClaimedTask | None:
        """Store ``outcome`` and return the next task, claimed in the same call."""
        worker = self.worker
        if outcome is None:
            return None
        if worker.stopping.is_set() or worker.paused:
            status = worker.store.finish(worker.policy, task, outcome)
            next_task = None
        else:
            status, next_task = worker.store.finish_and_claim(
                worker.policy, task, outcome
            )
        self._log_finish(task, outcome, status)
        if status == "pending" and outcome.outcome != "released":
            self._wake_after_retry_delay(task)
        if next_task is None:
            worker.note_state_change()
        return next_task

    def run_claimed(self, task: ClaimedTask) -> str | None:
        """Run a task that the caller claimed and store its outcome.

        Returns the task's new status, or None when the attempt is no longer this
        worker's (its lease was lost).
        """
        outcome = self._execute(task)
        if outcome is None:
            return None
        status = self.worker.store.finish(self.worker.policy, task, outcome)
        self._log_finish(task, outcome, status)
        self.worker.note_state_change()
        return status

    def _wake_after_retry_delay(self, task: ClaimedTask) -> None:
        # The retry is not claimable before its delay (see peptide_opt_finish_v1);
        # without this wake-up it would wait for the next heartbeat's poll.
        delay = self.worker.policy.retry_delay_seconds * 2 ** (task.attempt - 1)
        timer = threading.Timer(delay + 0.05, self.worker.wake_idle_slots)
        timer.daemon = True
        timer.start()

    def _log_finish(
        self, task: ClaimedTask, outcome: Outcome, status: str | None
    ) -> None:
        fields = {
            "task_id": task.task_id,
            "attempt": task.attempt,
            "outcome": outcome.outcome,
            "status": status,
            "duration_s": round(self._last_duration_s, 3),
        }
        if status is None:
            # The lease expired and the task moved on: this attempt's result is
            # dropped so that it cannot overwrite the new owner's.
            logger.warning("task_result_dropped", extra=fields)
        elif status == "failed":
            logger.error("task_failed", extra=fields | {"error": outcome.error})
        elif status == "pending":
            logger.warning("task_requeued", extra=fields | {"error": outcome.error})
        else:
            logger.info(f"task_{status}", extra=fields)

    # -- running one task -----------------------------------------------------------

    def _execute(self, task: ClaimedTask) -> Outcome | None:
        """Run ``task`` in the task process; None when the lease was lost."""
        with self._lock:
            self.current = task
            self._cancel_requested = False
            self._lease_lost = False
        # The task process creates the working directory; everything that can wait
        # comes after the task is sent, because it adds to the pickup latency.
        workdir = self.worker.workdir_for(task)
        self._prepare_process()
        started = time.monotonic()
        self.process.send_task(self._payload(task, workdir))
        self.worker.note_state_change()
        logger.info(
            "task_started",
            extra={
                "task_id": task.task_id,
                "task_type": task.task_type,
                "attempt": task.attempt,
            },
        )
        try:
            outcome = self._watch(task, started)
        finally:
            with self._lock:
                self.current = None
            self.worker.remove_later(workdir)
        self._last_duration_s = time.monotonic() - started
        if (
            self.spare is None
            and self.process is not None
            and self.process.n_tasks >= self.worker.options.recycle_after_tasks
        ):
            self.spare = TaskProcess(
                self.worker.handler_specs,
                self.worker.cores_per_task,
                self.worker.log_config,
            )
        return outcome

    def _payload(self, task: ClaimedTask, workdir: Path) -> dict:
        return {
            "task_id": task.task_id,
            "task_type": task.task_type,
            "user_id": task.user_id,
            "job_dir": task.job_dir,
            "attempt": task.attempt,
            "max_attempts": task.max_attempts,
            "worker_id": self.worker.worker_id,
            "workdir": str(workdir),
        }

    def _watch(self, task: ClaimedTask, started: float) -> Outcome | None:
        settings = self.worker.settings
        process = self.process
        timings: dict[str, float] = {}
        deadline = started + settings.task_timeout_s
        next_memory_check = started + _MEMORY_CHECK_INTERVAL_S
        while True:
            now = time.monotonic()
            try:
                message = process.receive(
                    timeout=max(0.0, min(_WATCH_INTERVAL_S, deadline - now))
                )
            except TaskProcessDied as died:
                self._replace_process()
                return Outcome(
                    "crashed",
                    retryable=True,
                    error=f"task process died ({died})",
                    step_timings=timings or None,
                )
            if isinstance(message, TaskResult):
                return _outcome_of(message, timings)
            if isinstance(message, StepReport):
                timings[message.step] = round(message.seconds, 3)
                self._store_step(task, message)

            stop = self._stop_reason(deadline, next_memory_check)
            if now >= next_memory_check:
                next_memory_check = now + _MEMORY_CHECK_INTERVAL_S
            if stop is None:
                continue
            self._replace_process()
            if stop == "lease_lost":
                logger.warning("task_lease_lost", extra={"task_id": task.task_id})
                return None
            return dataclasses.replace(stop, step_timings=timings or None)

    def _store_step(self, task: ClaimedTask, report: StepReport) -> None:
        worker = self.worker
        cancel = worker.store.update_progress(
            worker.policy, task, report.step, report.progress, report.seconds
        )
        logger.info(
            "step_finished",
            extra={
                "task_id": task.task_id,
                "step": report.step,
                "progress": round(report.progress, 1),
                "duration_s": round(report.seconds, 3),
            },
        )
        with self._lock:
            if cancel is None:
                self._lease_lost = True
            elif cancel:
                self._cancel_requested = True

    def _stop_reason(
        self, deadline: float, next_memory_check: float
    ) -> Outcome | str | None:
        """Return why the running task must stop now, or None to let it run."""
        worker = self.worker
        settings = worker.settings
        now = time.monotonic()
        with self._lock:
            lease_lost = self._lease_lost
            cancel = self._cancel_requested
        if lease_lost:
            return "lease_lost"
        if cancel:
            return Outcome("cancelled", error="cancelled by request")
        if now >= deadline:
            return Outcome(
                "timeout",
                retryable=True,
                error=f"task timed out after {settings.task_timeout_s:g} s "
                "(TASK_TIMEOUT)",
            )
        if now >= next_memory_check:
            rss = self.process.rss_bytes()
            if rss > settings.task_memory_limit_bytes:
                return Outcome(
                    "memory",
                    error=f"task used {_format_bytes(rss)} of memory, over "
                    f"TASK_MEMORY_LIMIT of "
                    f"{_format_bytes(settings.task_memory_limit_bytes)}",
                )
        if worker.grace_deadline is not None and now >= worker.grace_deadline:
            return Outcome("released", error=None)
        return None


def _outcome_of(result: TaskResult, timings: dict[str, float]) -> Outcome:
    if result.ok:
        return Outcome("finished", summary=result.summary, step_timings=timings or None)
    return Outcome(
        result.outcome,
        retryable=result.retryable,
        error=result.error,
        step_timings=timings or None,
    )
