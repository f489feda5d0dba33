"""Task handlers for tests and benchmarks, found by worker subprocesses through
``PEPTIDE_OPT_EXTRA_HANDLERS=tests.handlers:HANDLERS``.

A task's ``job_dir`` contains a JSON object of parameters for these handlers. Each
handler that takes ``"log"`` appends one line ``task_id attempt worker_id event
unix_time`` to that file, with O_APPEND so that concurrent processes do not mix lines.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

from peptide_opt.errors import InputError
from peptide_opt.worker.context import TaskContext

EXTRA_HANDLERS = "tests.handlers:HANDLERS"


def _parameters(context: TaskContext) -> dict[str, Any]:
    try:
        return json.loads(context.job_dir)
    except json.JSONDecodeError:
        return {}


def _record(context: TaskContext, event: str) -> None:
    path = _parameters(context).get("log")
    if not path:
        return
    line = (
        f"{context.task_id} {context.attempt} {context.worker_id} {event} "
        f"{time.time():.6f}\n"
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


def noop(context: TaskContext) -> dict[str, Any]:
    _record(context, "start")
    return {"task_id": context.task_id}


def sleep(context: TaskContext) -> dict[str, Any]:
    """Sleep ``seconds``, reporting a step every ``step_seconds`` when given."""
    parameters = _parameters(context)
    _record(context, "start")
    seconds = float(parameters.get("seconds", 1.0))
    step_seconds = parameters.get("step_seconds")
    if step_seconds:
        n_steps = max(1, round(seconds / float(step_seconds)))
        for index in range(n_steps):
            time.sleep(seconds / n_steps)
            context.report_step(f"sleep{index + 1}", 100.0 * (index + 1) / n_steps)
    else:
        time.sleep(seconds)
    _record(context, "end")
    return {"slept_s": seconds, "cores": context.cores}


def crash(context: TaskContext) -> None:
    """Kill the task process, as a segfault or the OOM killer would."""
    _record(context, "start")
    os.kill(os.getpid(), signal.SIGKILL)


def hang(context: TaskContext) -> None:
    _record(context, "start")
    while True:
        time.sleep(1.0)


def allocate(context: TaskContext) -> dict[str, Any]:
    """Hold ``megabytes`` MiB of touched memory for ``seconds``."""
    parameters = _parameters(context)
    _record(context, "start")
    block = bytearray(int(parameters.get("megabytes", 100)) * 1024**2)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    time.sleep(float(parameters.get("seconds", 5.0)))
    return {"allocated_mib": len(block) // 1024**2}


def bad_input(context: TaskContext) -> None:
    _record(context, "start")
    raise InputError("peptide length 61 exceeds the limit of 50 residues")


def broken(context: TaskContext) -> None:
    _record(context, "start")
    raise RuntimeError("unexpected state")


def spin_loop(iterations: int) -> int:
    """Burn one core for ``iterations`` loop iterations.

    bench/queue_scaleout.py runs the same loop without the queue.
    """
    total = 0
    for value in range(iterations):
        total += value * value % 7
    return total


def spin(context: TaskContext) -> dict[str, Any]:
    """Burn one core for ``iterations`` loop iterations (a CPU-bound task)."""
    _record(context, "start")
    total = spin_loop(int(_parameters(context).get("iterations", 10_000_000)))
    _record(context, "end")
    return {"total": total}


HANDLERS = {
    "peptide_opt.noop": noop,
    "peptide_opt.sleep": sleep,
    "peptide_opt.crash": crash,
    "peptide_opt.hang": hang,
    "peptide_opt.allocate": allocate,
    "peptide_opt.bad_input": bad_input,
    "peptide_opt.broken": broken,
    "peptide_opt.spin": spin,
}
