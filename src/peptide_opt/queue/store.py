"""The data-access layer of the queue: one reconnecting connection per process role.

:class:`QueueStore` runs the named statements of ``sql/queries.sql`` on one autocommit
connection shared by the worker's threads (psycopg serializes them), with every
statement prepared on the server. :class:`Listener` owns the second connection,
which only LISTENs. Both reconnect with backoff when the database goes away.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from peptide_opt.errors import PeptideOptError
from peptide_opt.queue.queries import query

logger = logging.getLogger(__name__)

TASKS_CHANNEL = "peptide_opt_tasks"
CANCEL_CHANNEL = "peptide_opt_cancel"

_BACKOFF_START_S = 0.1
_BACKOFF_MAX_S = 5.0


class DatabaseUnavailable(PeptideOptError):
    """The database stayed unreachable until the caller gave up."""


@dataclasses.dataclass(frozen=True)
class ClaimedTask:
    """One attempt of a task that this worker holds."""

    task_id: str
    user_id: str
    task_type: str
    job_dir: str
    attempt: int
    max_attempts: int


@dataclasses.dataclass(frozen=True)
class ClaimPolicy:
    """A worker's claim settings: its task types, lease and limits."""

    worker_id: str
    task_types: tuple[str, ...]
    lease_seconds: float
    max_attempts: int
    max_per_user: int | None
    retry_delay_seconds: float


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The end of an attempt, in the terms of the SQL function peptide_opt_finish_v1."""

    outcome: str
    retryable: bool = False
    error: str | None = None
    summary: dict[str, Any] | None = None
    step_timings: dict[str, float] | None = None


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """The result of one heartbeat."""

    paused: bool
    ready: bool
    cancel_ids: tuple[str, ...]
    lost_ids: tuple[str, ...]
    n_recovered: int


def utc_now() -> dt.datetime:
    """Return the current UTC time without a time zone, as the tables store it."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _connect(database_url: str, fast_commits: bool) -> psycopg.Connection:
    # prepare_threshold=0 prepares every statement on its first use: the worker runs
    # the same few statements thousands of times.
    connection = psycopg.connect(
        database_url,
        autocommit=True,
        prepare_threshold=0,
        row_factory=dict_row,
        connect_timeout=5,
    )
    if fast_commits:
        connection.execute(query("session_setup"), prepare=False)
    return connection


class QueueStore:
    """The queue's statements on one connection that reconnects when it breaks.

    With ``fast_commits``, every statement but the finishes commits without waiting
    for the WAL flush (see ``session_setup`` in queries.sql); the worker uses that.

    A statement interrupted by a lost connection is sent again after reconnecting.
    That is safe for every statement here: finishes and progress updates are fenced
    on (task, worker, attempt), and a claim whose reply was lost leaves a task whose
    lease expires and is recovered.
    """

    def __init__(
        self,
        database_url: str,
        should_give_up: Callable[[], bool] | None = None,
        fast_commits: bool = False,
    ) -> None:
        self._database_url = database_url
        self._fast_commits = fast_commits
        self._should_give_up = should_give_up or (lambda: False)
        self._lock = threading.Lock()
        self._connection: psycopg.Connection | None = None

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def execute(self, name: str, params: dict[str, Any] | None = None) -> list[dict]:
        """Run the named statement and return its rows (empty for none)."""
        statement = query(name)
        backoff = _BACKOFF_START_S
        with self._lock:
            while True:
                try:
                    connection = self._ensure_connection()
                    cursor = connection.execute(statement, params or {})
                    return cursor.fetchall() if cursor.description else []
                except psycopg.OperationalError as error:
                    self._drop_connection()
                    if self._should_give_up():
                        raise DatabaseUnavailable(
                            f"database unavailable: {error}"
                        ) from error
                    logger.warning(
                        "database_retry",
                        extra={"statement": name, "error": str(error).strip()},
                    )
                    time.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _ensure_connection(self) -> psycopg.Connection:
        if self._connection is None or self._connection.closed:
            self._connection = _connect(self._database_url, self._fast_commits)
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except psycopg.Error:
                pass
            self._connection = None

    # -- worker statements ----------------------------------------------------------

    def claim(self, policy: ClaimPolicy) -> ClaimedTask | None:
        rows = self.execute("claim", _claim_params(policy))
        return _claimed(rows[0]) if rows else None

    def finish(
        self, policy: ClaimPolicy, task: ClaimedTask, outcome: Outcome
    ) -> str | None:
        """End ``task``'s attempt; return its new status, None when it is not ours."""
        rows = self.execute("finish", _finish_params(policy, task, outcome))
        return rows[0]["finished_status"]

    def finish_and_claim(
        self, policy: ClaimPolicy, task: ClaimedTask, outcome: Outcome
    ) -> tuple[str | None, ClaimedTask | None]:
        """End ``task``'s attempt and claim the next task in one round trip."""
        params = _finish_params(policy, task, outcome) | _claim_params(policy)
        row = self.execute("finish_and_claim", params)[0]
        claimed = _claimed(row) if row["task_id"] is not None else None
        return row["finished_status"], claimed

    def update_progress(
        self,
        policy: ClaimPolicy,
        task: ClaimedTask,
        step: str,
        progress: float,
        step_seconds: float,
    ) -> bool | None:
        """Store a finished step; return whether cancellation was requested.

        None means the attempt is no longer this worker's.
        """
        rows = self.execute(
            "update_progress",
            {
                "task_id": task.task_id,
                "worker_id": policy.worker_id,
                "attempt": task.attempt,
                "step": step,
                "progress": int(max(0, min(100, round(progress)))),
                "step_seconds": float(step_seconds),
            },
        )
        return rows[0]["cancel_requested"] if rows else None

    def heartbeat(
        self,
        policy: ClaimPolicy,
        identity: dict[str, Any],
        status: str,
        max_workers: int,
        held_tasks: Iterable[ClaimedTask],
    ) -> Heartbeat:
        """Record the heartbeat and renew the leases of ``held_tasks``."""
        held_tasks = list(held_tasks)
        row = self.execute(
            "heartbeat",
            {
                **identity,
                "worker_id": policy.worker_id,
                "status": status,
                "max_workers": max_workers,
                "task_types": list(policy.task_types),
                "task_ids": [task.task_id for task in held_tasks],
                "attempts": [task.attempt for task in held_tasks],
                "lease_seconds": policy.lease_seconds,
            },
        )[0]
        return Heartbeat(
            paused=row["paused"],
            ready=row["ready"],
            cancel_ids=tuple(task_id.strip() for task_id in row["cancel_ids"]),
            lost_ids=tuple(task_id.strip() for task_id in row["lost_ids"]),
            n_recovered=row["n_recovered"],
        )

    def remove_worker(self, worker_id: str) -> None:
        self.execute("remove_worker", {"worker_id": worker_id})


def _claim_params(policy: ClaimPolicy) -> dict[str, Any]:
    return {
        "worker_id": policy.worker_id,
        "task_types": list(policy.task_types),
        "lease_seconds": policy.lease_seconds,
        "max_attempts": policy.max_attempts,
        "max_per_user": policy.max_per_user,
    }


def _finish_params(
    policy: ClaimPolicy, task: ClaimedTask, outcome: Outcome
) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "worker_id": policy.worker_id,
        "attempt": task.attempt,
        "outcome": outcome.outcome,
        "retryable": outcome.retryable,
        "error": outcome.error,
        "summary": Jsonb(outcome.summary) if outcome.summary is not None else None,
        "step_timings": (
            Jsonb(outcome.step_timings) if outcome.step_timings is not None else None
        ),
        "retry_delay_seconds": policy.retry_delay_seconds,
    }


def _claimed(row: dict[str, Any]) -> ClaimedTask:
    return ClaimedTask(
        task_id=row["task_id"].strip(),
        user_id=row["user_id"].strip(),
        task_type=row["task_type"],
        job_dir=row["job_dir"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
    )


class Listener:
    """A connection that LISTENs on the queue's channels and calls ``on_notify``.

    It reconnects with backoff and then calls ``on_reconnect``, because
    notifications sent while it was away are lost.
    """

    def __init__(
        self,
        database_url: str,
        on_notify: Callable[[str, str], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._database_url = database_url
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="peptide-opt-listener", daemon=True
        )
        self._connection: psycopg.Connection | None = None
        self.ready = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = _BACKOFF_START_S
        first = True
        while not self._stopped.is_set():
            try:
                with psycopg.connect(
                    self._database_url, autocommit=True, connect_timeout=5
                ) as connection:
                    connection.execute(query("listen"))
                    backoff = _BACKOFF_START_S
                    self.ready.set()
                    if not first:
                        logger.info("listener_reconnected")
                        self._on_reconnect()
                    first = False
                    self._receive(connection)
            except psycopg.OperationalError as error:
                logger.warning("listener_retry", extra={"error": str(error).strip()})
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                first = False

    def _receive(self, connection: psycopg.Connection) -> None:
        while not self._stopped.is_set():
            # The timeout only bounds how long stop() waits for this thread.
            for notification in connection.notifies(timeout=1.0):
                self._on_notify(notification.channel, notification.payload)
