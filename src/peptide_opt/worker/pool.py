"""Task processes: each runs one task at a time and is reused for the next.

A worker starts one :class:`TaskProcess` per slot before it claims anything, so a
task starts in a process whose handlers are already imported. A task process is a
session leader, so that killing its process group also stops the programs it
started. Its parent is the worker's forkserver, and it gets SIGKILL when that parent
exits (Linux ``PR_SET_PDEATHSIG``). Because the forkserver can outlive a killed
worker, a thread in the task process also watches the worker and kills the process
group once the worker has died.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from peptide_opt.errors import InputError, PeptideOptError, TaskCancelled
from peptide_opt.worker.context import TaskContext
from peptide_opt.worker.logs import configure_logging
from peptide_opt.worker.registry import load_handler

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# The worker's main process runs threads and database connections, which a fork
# would copy in an unsafe state. A forkserver is a single-threaded process started
# from a fresh interpreter, which imports this module once and forks each task
# process from itself. A new task process then costs a fork instead of an
# interpreter start with imports: about 6 ms of CPU against about 100 ms with the
# no-op test handler, measured on the 2-core machine of docs/benchmarks.md. A slot
# replaces its process every ``recycle_after_tasks`` tasks, so this cost recurs.
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload([__name__])


# The first message of every task process: its imports are done and it waits for tasks.
_READY = "ready"


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """How a task process logs: the worker's level, format and id."""

    level: str
    log_format: str
    worker_id: str


class TaskIdFilter(logging.Filter):
    """Add the running task's id to every record of a task process."""

    task_id: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if self.task_id is not None and not hasattr(record, "task_id"):
            record.task_id = self.task_id
        return True


_TASK_ID_FILTER = TaskIdFilter()


class TaskProcessDied(Exception):
    """The task process exited while it ran a task."""


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """The last message of a task: done, or failed with an error."""

    ok: bool
    summary: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = False
    outcome: str = "finished"


@dataclasses.dataclass(frozen=True)
class StepReport:
    step: str
    progress: float
    seconds: float


class TaskProcess:
    """One pool process and the pipe to it."""

    def __init__(
        self,
        handler_specs: dict[str, str],
        cores: int,
        log_config: LogConfig | None = None,
    ) -> None:
        self._handler_specs = handler_specs
        self._cores = cores
        self.n_tasks = 0
        self._pipe, child_end = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(
            target=_child_main,
            args=(child_end, handler_specs, cores, log_config, os.getpid()),
            name="peptide-opt-task",
        )
        self._process.start()
        child_end.close()
        self.ready = False

    @property
    def pid(self) -> int:
        return self._process.pid

    def is_alive(self) -> bool:
        return self._process.is_alive()

    def exit_description(self) -> str:
        code = self._process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def poll_ready(self) -> bool:
        """Return whether the process has started up, without waiting."""
        if not self.ready and self._process.is_alive() and self._pipe.poll(0):
            self._take_ready()
        return self.ready

    def wait_ready(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to start up."""
        if not self.ready and self._pipe.poll(timeout):
            self._take_ready()
        return self.ready

    def _take_ready(self) -> None:
        try:
            message = self._pipe.recv()
        except (EOFError, OSError):
            return
        if message != _READY:
            raise RuntimeError(f"task process sent {message!r} before it was ready")
        self.ready = True

    def send_task(self, payload: dict[str, Any]) -> None:
        self.n_tasks += 1
        self._pipe.send(("run", payload))

    def receive(self, timeout: float) -> StepReport | TaskResult | None:
        """Return the next message within ``timeout`` seconds, or None.

        Raises :class:`TaskProcessDied` when the process exits first.
        """
        # The task process's exit makes the pipe readable (end of file) at once,
        # unless a program it forked keeps the pipe open. The liveness check after
        # each timeout covers that case.
        if not self._pipe.poll(timeout):
            if self._process.is_alive():
                return None
            self._process.join(timeout=5)
            raise TaskProcessDied(self.exit_description())
        try:
            message = self._pipe.recv()
        except (EOFError, OSError):
            self._process.join(timeout=5)
            raise TaskProcessDied(self.exit_description()) from None
        if message == _READY:
            self.ready = True
            return None
        return message

    def rss_bytes(self) -> int:
        """Resident memory of the process and all its children, in bytes."""
        try:
            parent = psutil.Process(self._process.pid)
            processes = [parent, *parent.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        return total

    def kill(self) -> None:
        """Kill the process and everything it started; wait until it is gone."""
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._process.join(timeout=10)
        self._pipe.close()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask an idle process to exit; kill it when it does not."""
        try:
            self._pipe.send(("stop", None))
        except (OSError, ValueError):
            pass
        self._process.join(timeout=timeout)
        if self._process.is_alive():
            self.kill()
        else:
            self._pipe.close()


# -- the task process side ------------------------------------------------------------


def _child_main(
    pipe: multiprocessing.connection.Connection,
    handler_specs: dict[str, str],
    cores: int,
    log_config: LogConfig | None,
    worker_pid: int,
) -> None:
    os.setsid()
    _die_with_parent()
    _die_with_worker(worker_pid)
    # The worker decides when a task stops; Ctrl-C in a terminal reaches the worker
    # only, because this process left the terminal's process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(cores)
    if log_config is not None:
        # The pipeline's log events and warnings reach the worker's stderr with the
        # worker id and the task id on each line.
        configure_logging(log_config.level, log_config.log_format, log_config.worker_id)
        for handler in logging.getLogger().handlers:
            handler.addFilter(_TASK_ID_FILTER)
        logging.captureWarnings(True)

    handlers: dict[str, Any] = {}
    pipe.send(_READY)
    while True:
        try:
            kind, payload = pipe.recv()
        except (EOFError, OSError):
            return
        if kind == "stop":
            return
        _TASK_ID_FILTER.task_id = payload["task_id"]
        result = _run_task(pipe, payload, handler_specs, handlers, cores)
        _TASK_ID_FILTER.task_id = None
        pipe.send(result)


#: Seconds between two checks of :func:`_die_with_worker`.
WORKER_CHECK_INTERVAL = 0.5


def _die_with_worker(worker_pid: int) -> None:
    """Kill this process group once the worker process ``worker_pid`` has died.

    The parent of a task process is the forkserver, not the worker, and the forkserver
    can outlive a killed worker: a Celery worker killed with SIGKILL left its task
    running to the end. A daemon thread therefore watches the worker itself, through
    /proc, where a dead but unreaped worker shows as a zombie.
    """
    if not sys.platform.startswith("linux"):
        return

    def watch() -> None:
        while _process_running(worker_pid):
            time.sleep(WORKER_CHECK_INTERVAL)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, name="worker-watch", daemon=True).start()


def _process_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # The state follows the command name, which is in parentheses.
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before prctl took effect.
    if os.getppid() == 1:
        os._exit(1)


def _run_task(
    pipe: multiprocessing.connection.Connection,
    payload: dict[str, Any],
    handler_specs: dict[str, str],
    handlers: dict[str, Any],
    cores: int,
) -> TaskResult:
    task_type = payload["task_type"]
    last_step_at = time.monotonic()

    def report_step(step: str, progress: float) -> None:
        nonlocal last_step_at
        now = time.monotonic()
        pipe.send(StepReport(step, float(progress), now - last_step_at))
        last_step_at = now

    try:
        workdir = Path(payload["workdir"])
        workdir.mkdir(parents=True, exist_ok=True)
        handler = handlers.get(task_type)
        if handler is None:
            handler = handlers[task_type] = load_handler(handler_specs[task_type])
        _limit_torch_threads(cores)
        context = TaskContext(
            task_id=payload["task_id"],
            task_type=task_type,
            user_id=payload["user_id"],
            job_dir=payload["job_dir"],
            attempt=payload["attempt"],
            max_attempts=payload["max_attempts"],
            worker_id=payload["worker_id"],
            workdir=workdir,
            cores=cores,
            report_step=report_step,
        )
        summary = handler(context)
        return TaskResult(ok=True, summary=_json_ready(summary))
    except TaskCancelled as error:
        return TaskResult(ok=False, error=str(error), outcome="cancelled")
    except InputError as error:
        return TaskResult(ok=False, error=str(error), outcome="failed")
    except PeptideOptError as error:
        return TaskResult(ok=False, error=str(error), retryable=True, outcome="failed")
    except MemoryError:
        return TaskResult(ok=False, error="task ran out of memory", outcome="memory")
    except Exception as error:  # noqa: BLE001 - any handler error fails the task
        logger.exception(
            "task_internal_error",
            extra={"task_id": payload["task_id"], "error": repr(error)},
        )
        return TaskResult(
            ok=False,
            error=f"internal error: {type(error).__name__}: {error}",
            retryable=True,
            outcome="failed",
        )


def _limit_torch_threads(cores: int) -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != cores:
        torch.set_num_threads(cores)


def _json_ready(summary: Any) -> dict[str, Any] | None:
    # The summary goes into a JSONB column; values json cannot write become text.
    if summary is None:
        return None
    if not isinstance(summary, dict):
        summary = {"result": summary}
    return json.loads(json.dumps(summary, default=str))
