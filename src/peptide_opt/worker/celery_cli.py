"""``peptide-opt dispatch``, and ``peptide-opt worker`` when ``EXECUTOR=celery``."""

from __future__ import annotations

import argparse
import dataclasses
import logging

from peptide_opt.errors import InputError
from peptide_opt.settings import Settings
from peptide_opt.worker.logs import configure_logging


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dispatch`` subcommand."""
    dispatch = subparsers.add_parser(
        "dispatch",
        help="send the ids of pending tasks to Celery (EXECUTOR=celery) until SIGTERM",
    )
    dispatch.add_argument(
        "--resend-after",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="send a task again when it is still pending this long after its last "
        "message, which covers messages lost with the broker (default 600)",
    )
    dispatch.add_argument(
        "--batch-size",
        type=int,
        default=500,
        metavar="N",
        help="tasks marked and sent per database round trip (default 500)",
    )
    dispatch.set_defaults(handler=run_dispatch)


def run_dispatch(args: argparse.Namespace) -> int:
    # Imported here: Celery's import costs about a second that other commands skip.
    from peptide_opt.worker.dispatch import Dispatcher, DispatchOptions
    from peptide_opt.worker.registry import handler_specs

    settings = Settings.from_env()
    if args.resend_after <= 0:
        raise InputError(f"--resend-after must be above 0, got {args.resend_after:g}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    configure_logging(
        "DEBUG" if args.debug else settings.log_level, settings.log_format, None
    )
    options = DispatchOptions(
        resend_after_s=args.resend_after, batch_size=args.batch_size
    )
    dispatcher = Dispatcher(settings, tuple(sorted(handler_specs())), options)
    return dispatcher.run()


def run_celery_worker(args: argparse.Namespace) -> int:
    """Run a Celery worker whose pool threads run tasks as the PostgreSQL worker does.

    ``args`` are those of ``peptide-opt worker``, already checked by its parser.
    """
    from peptide_opt.worker import celery_app
    from peptide_opt.worker.loop import WorkerOptions, new_worker_id

    settings = Settings.from_env()
    if args.max_workers is not None:
        settings = dataclasses.replace(settings, max_workers=args.max_workers)
    worker_id = new_worker_id()
    level = "DEBUG" if args.debug else settings.log_level
    configure_logging(level, settings.log_format, worker_id)
    if not args.debug:
        # Celery logs two lines per message, which the executor's own task events
        # already cover.
        for name in ("celery.worker.strategy", "celery.app.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    options = WorkerOptions(
        retry_delay_s=args.retry_delay,
        recycle_after_tasks=args.recycle_after,
        workdir_root=args.workdir,
    )
    celery_app.prepare_worker(settings, options, worker_id)
    argv = [
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(settings.max_workers),
        # Flower lists workers by this name; it matches the workers table's row.
        "--hostname",
        f"peptide-opt@{worker_id}",
        "--loglevel",
        level,
        # Mingle and gossip synchronise revoked task ids and logical clocks between
        # workers, which this executor does not use. Mingle also waits up to 1 s
        # for replies at every start (celery 5.7, worker/consumer/mingle.py).
        "--without-mingle",
        "--without-gossip",
    ]
    return int(celery_app.app.start(argv) or 0)
