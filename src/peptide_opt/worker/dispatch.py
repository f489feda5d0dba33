"""``peptide-opt dispatch``: send the ids of pending tasks to Celery.

The dispatcher LISTENs on the channel that the tasks table's insert trigger notifies,
as retries, recovered leases and ``workers resume`` do too. On each notification, at
start-up, every POLL_INTERVAL seconds and when the earliest retry delay of a pending
task ends, it sweeps: it marks the pending, due tasks that have no message on its way
yet and sends one message per marked task (see ``peptide_opt_celery_sweep_v1``).

A marker older than ``resend_after_s`` gets a new message, which covers a message
lost with the broker or never sent by a process that died. Extra messages are
harmless, because a Celery worker runs a task only when its claim of the pending row
succeeds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import signal
import threading
import time

from kombu.exceptions import KombuError

from peptide_opt.queue.store import CANCEL_CHANNEL, Listener, QueueStore, utc_now
from peptide_opt.settings import Settings
from peptide_opt.worker.celery_app import app_for, send_task_ids

logger = logging.getLogger(__name__)

_BROKER_BACKOFF_START_S = 0.5
_BROKER_BACKOFF_MAX_S = 30.0


@dataclasses.dataclass(frozen=True)
class DispatchOptions:
    """Dispatcher settings beyond the environment's :class:`Settings`."""

    resend_after_s: float = 600.0
    batch_size: int = 500


class Dispatcher:
    """Sends the ids of pending tasks of ``task_types`` to the broker."""

    def __init__(
        self,
        settings: Settings,
        task_types: tuple[str, ...],
        options: DispatchOptions | None = None,
    ) -> None:
        self.settings = settings
        self.task_types = task_types
        self.options = options or DispatchOptions()
        self.celery = app_for(settings.celery_broker_url)
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.store = QueueStore(settings.database_url, self.stopping.is_set)
        self.listener = Listener(settings.database_url, self._on_notify, self.wake.set)
        self.n_sent = 0

    def run(self) -> int:
        """Sweep until SIGTERM or SIGINT; return the exit code."""
        self._install_signal_handlers()
        logger.info(
            "dispatcher_started",
            extra={
                "task_types": ",".join(self.task_types),
                "resend_after_s": self.options.resend_after_s,
                "poll_interval_s": self.settings.poll_interval_s,
            },
        )
        # Listen before the first sweep: a task inserted after it then wakes the loop.
        self.listener.start()
        self.listener.ready.wait(timeout=30)
        backoff = _BROKER_BACKOFF_START_S
        while not self.stopping.is_set():
            self.wake.clear()
            try:
                self.sweep()
                backoff = _BROKER_BACKOFF_START_S
                timeout = self._seconds_to_next_sweep()
            except KombuError as error:
                logger.warning("broker_unavailable", extra={"error": str(error)})
                timeout, backoff = backoff, min(backoff * 2, _BROKER_BACKOFF_MAX_S)
            self.wake.wait(timeout)
        self.listener.stop()
        self.store.close()
        logger.info("dispatcher_stopped", extra={"n_sent": self.n_sent})
        return 0

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def sweep(self) -> int:
        """Send a message for every pending, due task without one; return how many."""
        n_sent = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            rows = self.store.execute(
                "celery_sweep",
                {
                    "task_types": list(self.task_types),
                    "resend_after_seconds": self.options.resend_after_s,
                    "limit": self.options.batch_size,
                },
            )
            task_ids = [row["task_id"].strip() for row in rows]
            if task_ids:
                self._send(task_ids)
                n_sent += len(task_ids)
                logger.info(
                    "tasks_sent",
                    extra={
                        "n_tasks": len(task_ids),
                        "duration_s": round(time.monotonic() - started, 3),
                    },
                )
            if len(task_ids) < self.options.batch_size:
                break
        self.n_sent += n_sent
        return n_sent

    def _send(self, task_ids: list[str]) -> None:
        try:
            send_task_ids(self.celery, task_ids)
        except KombuError:
            # The markers would hold these tasks back until resend_after_s; without
            # them the next sweep, after the backoff, sends them again.
            self.store.execute("celery_unmark", {"task_ids": task_ids})
            raise

    def _seconds_to_next_sweep(self) -> float:
        timeout = self.settings.poll_interval_s
        rows = self.store.execute(
            "celery_next_due", {"task_types": list(self.task_types)}
        )
        next_due: dt.datetime | None = rows[0]["next_due"] if rows else None
        if next_due is not None:
            until_due = (next_due - utc_now()).total_seconds()
            # A little late rather than early, so that the task is due when swept.
            timeout = min(timeout, max(0.0, until_due) + 0.05)
        return timeout

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel != CANCEL_CHANNEL:
            self.wake.set()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handle(signum: int, frame: object) -> None:
            logger.info(
                "dispatcher_stopping", extra={"reason": signal.Signals(signum).name}
            )
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
