"""Run the API and N workers as local child processes and keep them running.

This is what ``peptide-opt up`` does on a machine without Docker or Kubernetes. It starts
each child in its own process group and restarts a child that exits, after a delay that
grows with each exit in a row. On SIGINT or SIGTERM it sends SIGTERM to every child, waits
up to a stop timeout and then sends SIGKILL to whatever is left.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

# A child that exits with this code rejected its own settings or arguments
# (InputError and argparse both exit with 2); starting it again cannot help.
EXIT_CODE_BAD_INPUT = 2

_POLL_INTERVAL_S = 0.1


@dataclasses.dataclass(frozen=True)
class RestartPolicy:
    """Delays before restarting a child that exited.

    The n-th consecutive failure waits ``initial_delay_s * 2 ** (n - 1)`` seconds, capped
    at ``max_delay_s``. A child that stayed up for ``stable_after_s`` seconds before it
    exited starts the count again.
    """

    initial_delay_s: float = 1.0
    max_delay_s: float = 60.0
    stable_after_s: float = 30.0

    def delay_s(self, failures: int) -> float:
        """Return the delay in seconds before the restart after ``failures`` failures."""
        return min(self.max_delay_s, self.initial_delay_s * 2 ** max(0, failures - 1))


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    """One supervised command: its name in log events, argument list and environment."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]


@dataclasses.dataclass
class _Child:
    spec: ChildSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None


def log_event(event: str, level: int = logging.INFO, **fields: object) -> None:
    """Log ``event`` as the message, with its fields as record extras."""
    logger.log(level, event, extra=fields)


def worker_cores_share(total_cores: int, n_workers: int) -> int:
    """Return each worker's share of ``total_cores`` when ``n_workers`` share them."""
    return max(1, total_cores // n_workers)


def build_child_specs(
    *,
    n_workers: int,
    total_cores: int,
    api_argv: Sequence[str] | None,
    worker_argv: Sequence[str],
    base_env: Mapping[str, str],
    dispatcher_argv: Sequence[str] | None = None,
) -> list[ChildSpec]:
    """Return the specs of the API and the dispatcher (each unless None) and the workers.

    Every worker gets ``WORKER_CORES`` set to its share of ``total_cores``.
    """
    specs = []
    if api_argv is not None:
        specs.append(ChildSpec("api", tuple(api_argv), dict(base_env)))
    if dispatcher_argv is not None:
        specs.append(ChildSpec("dispatcher", tuple(dispatcher_argv), dict(base_env)))
    cores = str(worker_cores_share(total_cores, n_workers))
    for index in range(1, n_workers + 1):
        env = {**base_env, "WORKER_CORES": cores}
        specs.append(ChildSpec(f"worker-{index}", tuple(worker_argv), env))
    return specs


def run_once(name: str, argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Run a one-shot command (such as the migrations) and return its exit code."""
    started = time.monotonic()
    log_event("command_started", command_name=name, argv=" ".join(argv))
    completed = subprocess.run(list(argv), env=dict(env), check=False)
    log_event(
        "command_finished",
        command_name=name,
        returncode=completed.returncode,
        duration=f"{time.monotonic() - started:.2f}",
    )
    return completed.returncode


class Supervisor:
    """Start child processes, restart the ones that exit, stop all of them on a signal.

    Parameters
    ----------
    specs
        The children to run.
    stop_timeout_s
        Seconds to wait after SIGTERM before a child's process group gets SIGKILL.
    policy
        Restart delays.
    """

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        stop_timeout_s: float,
        policy: RestartPolicy | None = None,
    ) -> None:
        self._children = [_Child(spec) for spec in specs]
        self._stop_timeout_s = stop_timeout_s
        self._policy = policy or RestartPolicy()
        self._stop_signal: int | None = None
        self._force = False
        self._exit_code = 0

    def request_stop(self, signum: int, _frame: object = None) -> None:
        """Start the shutdown; a second request sends SIGKILL at once."""
        if self._stop_signal is not None:
            self._force = True
            return
        self._stop_signal = signum

    def run(self) -> int:
        """Supervise until a stop request or a fatal child exit; return the exit code."""
        previous = {
            signum: signal.signal(signum, self.request_stop)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            log_event("supervisor_started", n_children=len(self._children))
            for child in self._children:
                self._start(child)
            while self._stop_signal is None:
                self._check_children()
                time.sleep(_POLL_INTERVAL_S)
            self._stop_all()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        log_event("supervisor_stopped", exit_code=self._exit_code)
        return self._exit_code

    def _start(self, child: _Child) -> None:
        child.process = subprocess.Popen(
            list(child.spec.argv),
            env=dict(child.spec.env),
            # Own process group: Ctrl-C in the terminal reaches only the supervisor,
            # which then stops the children in order, and SIGKILL can reach the
            # processes a child started itself.
            process_group=0,
            preexec_fn=functools.partial(_die_with_parent, os.getpid()),
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        log_event("process_started", process_name=child.spec.name, pid=child.process.pid)

    def _check_children(self) -> None:
        now = time.monotonic()
        for child in self._children:
            if child.process is None:
                if child.restart_at is not None and now >= child.restart_at:
                    self._start(child)
                continue
            returncode = child.process.poll()
            if returncode is None:
                continue
            self._on_exit(child, returncode, now)
            if self._stop_signal is not None:
                return

    def _on_exit(self, child: _Child, returncode: int, now: float) -> None:
        assert child.process is not None
        pid = child.process.pid
        uptime_s = now - child.started_at
        child.process = None

        # Processes the child started (a worker's task processes) lose their parent's
        # lease renewals, so they must not go on running beside its replacement.
        _kill_group(pid)
        log_event(
            "process_exited",
            logging.WARNING,
            process_name=child.spec.name,
            pid=pid,
            returncode=returncode,
            uptime_s=f"{uptime_s:.1f}",
        )

        if returncode == EXIT_CODE_BAD_INPUT:
            log_event(
                "process_rejected_settings",
                logging.ERROR,
                process_name=child.spec.name,
                pid=pid,
                returncode=returncode,
            )
            self._exit_code = EXIT_CODE_BAD_INPUT
            self._stop_signal = signal.SIGTERM
            return
        self._schedule_restart(child, uptime_s, now)

    def _schedule_restart(self, child: _Child, uptime_s: float, now: float) -> None:
        stable = uptime_s >= self._policy.stable_after_s
        child.failures = 1 if stable else child.failures + 1
        delay_s = self._policy.delay_s(child.failures)
        child.restart_at = now + delay_s
        log_event(
            "process_restart_scheduled",
            logging.WARNING,
            process_name=child.spec.name,
            failures=child.failures,
            delay_s=f"{delay_s:.2f}",
        )

    def _stop_all(self) -> None:
        running = [child for child in self._children if child.process is not None]
        log_event(
            "supervisor_stopping",
            signal=signal.Signals(self._stop_signal or signal.SIGTERM).name,
            n_running=len(running),
            stop_timeout_s=self._stop_timeout_s,
        )
        for child in running:
            assert child.process is not None
            _send(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout_s
        while running and not self._force and time.monotonic() < deadline:
            running = [child for child in running if child.process.poll() is None]
            if running:
                time.sleep(_POLL_INTERVAL_S)
        for child in self._children:
            if child.process is None:
                continue
            if child.process.poll() is None:
                log_event(
                    "process_killed",
                    logging.WARNING,
                    process_name=child.spec.name,
                    pid=child.process.pid,
                )
            _kill_group(child.process.pid)
            child.process.wait()
            log_event(
                "process_stopped",
                process_name=child.spec.name,
                pid=child.process.pid,
                returncode=child.process.returncode,
            )
            child.process = None


def _send(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _kill_group(pgid: int) -> None:
    # A process group's ID stays reserved while any member lives, so this reaches
    # only what is left of the child's group even after the child itself was reaped.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to send SIGTERM to the child when the supervisor dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    # The supervisor may have died between fork and prctl, which then never fires.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)
