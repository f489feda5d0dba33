"""``peptide-opt worker`` and ``peptide-opt workers [pause|resume]``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import socket
from pathlib import Path

from peptide_opt.errors import InputError
from peptide_opt.queue.cli import operator_store
from peptide_opt.settings import Settings
from peptide_opt.worker.logs import configure_logging
from peptide_opt.worker.loop import Worker, WorkerOptions, new_worker_id
from peptide_opt.worker.registry import handler_specs

# A worker's row counts as live while its heartbeat is this recent. An idle worker
# beats at least every 20 s, so this allows two missed beats.
LIVE_WINDOW_S = 60.0

# EXECUTOR=celery runs this module's run_celery_worker(args) instead.
CELERY_WORKER_MODULE = "peptide_opt.worker.celery_cli"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``worker`` and ``workers`` subcommands."""
    worker = subparsers.add_parser(
        "worker",
        help="claim tasks from the database and run them until SIGTERM",
    )
    worker.add_argument(
        "--max-workers",
        type=int,
        metavar="N",
        help="tasks this process runs at once (default: MAX_WORKERS, or 1)",
    )
    worker.add_argument(
        "--retry-delay",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="delay before the first retry of a failed attempt; it doubles with each "
        "further attempt (default 10)",
    )
    worker.add_argument(
        "--recycle-after",
        type=int,
        default=100,
        metavar="N",
        help="replace a task process after it has run N tasks (default 100)",
    )
    worker.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="folder for the tasks' working directories, created when missing "
        "(default: the system's temporary folder)",
    )
    worker.set_defaults(handler=run_worker)

    workers = subparsers.add_parser(
        "workers", help="list live workers and the queue depth; pause or resume"
    )
    workers.add_argument(
        "--check-self",
        action="store_true",
        help="health probe: exit 0 when a worker on this host has a heartbeat from the "
        f"last {LIVE_WINDOW_S:.0f} s, 1 otherwise",
    )
    workers.set_defaults(handler=run_list_workers)
    commands = workers.add_subparsers(dest="workers_command", metavar="COMMAND")
    pause = commands.add_parser("pause", help="stop claiming tasks on every worker")
    pause.set_defaults(handler=run_pause)
    resume = commands.add_parser("resume", help="start claiming tasks again")
    resume.set_defaults(handler=run_resume)


def run_worker(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.max_workers is not None:
        if args.max_workers < 1:
            raise InputError(
                f"--max-workers must be at least 1, got {args.max_workers}"
            )
        settings = dataclasses.replace(settings, max_workers=args.max_workers)
    if args.retry_delay < 0:
        raise InputError(f"--retry-delay must be at least 0, got {args.retry_delay:g}")
    if args.recycle_after < 1:
        raise InputError(
            f"--recycle-after must be at least 1, got {args.recycle_after}"
        )
    if args.workdir is not None:
        try:
            args.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(
                f"--workdir {args.workdir} could not be created: {error.strerror}"
            ) from None
    if settings.executor == "celery":
        return _run_celery_worker(args)

    worker_id = new_worker_id()
    configure_logging(
        "DEBUG" if args.debug else settings.log_level, settings.log_format, worker_id
    )
    options = WorkerOptions(
        retry_delay_s=args.retry_delay,
        recycle_after_tasks=args.recycle_after,
        workdir_root=args.workdir,
    )
    worker = Worker(settings, handler_specs(), options, worker_id=worker_id)
    return worker.run()


def _run_celery_worker(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module(CELERY_WORKER_MODULE)
    except ModuleNotFoundError as error:
        if error.name != CELERY_WORKER_MODULE:
            raise
        raise InputError(
            "EXECUTOR=celery, but the Celery executor is not installed; unset "
            "EXECUTOR to use the PostgreSQL worker"
        ) from None
    return int(module.run_celery_worker(args) or 0)


def run_list_workers(args: argparse.Namespace) -> int:
    if getattr(args, "check_self", False):
        return run_check_self()
    settings = Settings.from_env()
    store = operator_store(settings)
    try:
        workers = store.execute("list_live_workers", {"window_seconds": LIVE_WINDOW_S})
        depth = store.execute("queue_depth")
        paused = store.execute("get_paused")
    finally:
        store.close()

    if paused and paused[0]["paused"]:
        print("claiming is PAUSED (peptide-opt workers resume)")
    print(f"{len(workers)} live worker(s)")
    if workers:
        print(f"{'WORKER':<44} {'STATUS':<6} {'TASKS':>7} {'HEARTBEAT (UTC)':<19}")
    for row in workers:
        tasks = f"{row['running_tasks']}/{row['max_workers']}"
        heartbeat = row["heartbeat_at"].strftime("%Y-%m-%d %H:%M:%S")
        print(f"{row['worker_id']:<44} {row['status']:<6} {tasks:>7} {heartbeat}")
    counts = {row["status"]: row["n_tasks"] for row in depth}
    statuses = ("pending", "processing", "finished", "failed", "cancelled")
    print(
        "tasks: "
        + ", ".join(f"{status} {counts.get(status, 0)}" for status in statuses)
    )
    return 0


def run_check_self() -> int:
    """Return 0 when a worker of this host (a container's hostname) is live, else 1."""
    host = socket.gethostname()
    store = operator_store(Settings.from_env())
    try:
        workers = store.execute("list_live_workers", {"window_seconds": LIVE_WINDOW_S})
    finally:
        store.close()
    if any(row["host"] == host for row in workers):
        return 0
    print(f"no worker on host {host} has a heartbeat from the last {LIVE_WINDOW_S:.0f} s")
    return 1


def _set_paused(paused: bool) -> None:
    store = operator_store(Settings.from_env())
    try:
        store.execute("set_paused", {"paused": paused})
        if not paused:
            store.execute("notify_tasks", {"reason": "resume"})
    finally:
        store.close()


def run_pause(args: argparse.Namespace) -> int:
    _set_paused(True)
    print("claiming paused on every worker; running tasks go on")
    return 0


def run_resume(args: argparse.Namespace) -> int:
    _set_paused(False)
    print("claiming resumed")
    return 0
