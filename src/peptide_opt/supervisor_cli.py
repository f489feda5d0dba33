"""The ``peptide-opt up`` command: the API and N workers as local processes."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys

from peptide_opt.errors import InputError, PeptideOptError
from peptide_opt.settings import Settings, available_cores
from peptide_opt.worker.logs import configure_logging
from peptide_opt.worker.supervisor import (
    RestartPolicy,
    Supervisor,
    build_child_specs,
    log_event,
    run_once,
)

# Above this many local workers a machine is better served by containers or Kubernetes,
# and a typo (``--workers 1000``) would otherwise start a thousand processes.
MAX_LOCAL_WORKERS = 256

# Extra seconds after SHUTDOWN_GRACE: a worker uses the grace period for its running
# tasks and then needs a moment to release them to pending before it exits.
_STOP_MARGIN_S = 30.0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``up`` subcommand."""
    parser = subparsers.add_parser(
        "up",
        help="run the API and N workers as local processes",
        description="Run migrations, then start the API and N workers as child "
        "processes (and the Celery dispatcher when EXECUTOR=celery), restart any that "
        "exit, and stop them all on Ctrl-C or SIGTERM.",
    )
    add_arguments(parser)
    parser.set_defaults(handler=run_up)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``up`` to ``parser``."""
    parser.add_argument(
        "--workers",
        type=_positive_int("--workers", MAX_LOCAL_WORKERS),
        default=1,
        metavar="N",
        help=f"number of worker processes, 1 to {MAX_LOCAL_WORKERS} (default 1)",
    )
    parser.add_argument(
        "--cores",
        type=_positive_int("--cores", 4096),
        default=None,
        metavar="N",
        help="cores to divide between the workers; each gets WORKER_CORES = N / workers, "
        "at least 1 (default: the cores this process may use)",
    )
    parser.add_argument(
        "--no-api", action="store_true", help="start only the workers, not the API"
    )
    parser.add_argument(
        "--skip-migrate",
        action="store_true",
        help="do not run 'peptide-opt db upgrade' before starting",
    )
    parser.add_argument(
        "--stop-timeout",
        type=_non_negative_float("--stop-timeout"),
        default=None,
        metavar="SECONDS",
        help="seconds between SIGTERM and SIGKILL on shutdown "
        f"(default: SHUTDOWN_GRACE + {_STOP_MARGIN_S:g})",
    )
    parser.add_argument(
        "--restart-delay",
        type=_non_negative_float("--restart-delay"),
        default=1.0,
        metavar="SECONDS",
        help="delay before the first restart of a process that exited; it doubles with "
        "each further exit in a row (default 1)",
    )
    parser.add_argument(
        "--max-restart-delay",
        type=_non_negative_float("--max-restart-delay"),
        default=60.0,
        metavar="SECONDS",
        help="maximum delay between restarts (default 60)",
    )
    parser.add_argument(
        "--api-command",
        metavar="COMMAND",
        help="command line that starts the API (default: peptide-opt serve)",
    )
    parser.add_argument(
        "--worker-command",
        metavar="COMMAND",
        help="command line that starts one worker (default: peptide-opt worker)",
    )
    parser.add_argument(
        "--dispatch-command",
        metavar="COMMAND",
        help="command line that sends new tasks to Celery, started only when "
        "EXECUTOR=celery (default: peptide-opt dispatch)",
    )
    parser.add_argument(
        "--migrate-command",
        metavar="COMMAND",
        help="command line that applies the migrations (default: peptide-opt db upgrade)",
    )


def run_up(args: argparse.Namespace) -> int:
    """Run migrations, then supervise the API and workers until stopped."""
    settings = Settings.from_env()
    _configure_logging(settings)
    env = dict(os.environ)

    if not args.skip_migrate:
        argv = _command(args.migrate_command, "db", "upgrade")
        returncode = run_once("migrate", argv, env)
        if returncode != 0:
            log_event("migrate_failed", logging.ERROR, returncode=returncode)
            return returncode

    total_cores = args.cores or available_cores()
    if args.workers > total_cores:
        log_event(
            "workers_exceed_cores",
            logging.WARNING,
            n_workers=args.workers,
            total_cores=total_cores,
        )
    specs = build_child_specs(
        n_workers=args.workers,
        total_cores=total_cores,
        api_argv=None if args.no_api else _command(args.api_command, "serve"),
        worker_argv=_command(args.worker_command, "worker"),
        base_env=env,
        # In Celery mode the workers take tasks from the broker, and only the
        # dispatcher moves the platform's new rows there.
        dispatcher_argv=(
            _command(args.dispatch_command, "dispatch")
            if settings.executor == "celery"
            else None
        ),
    )
    stop_timeout_s = args.stop_timeout
    if stop_timeout_s is None:
        stop_timeout_s = settings.shutdown_grace_s + _STOP_MARGIN_S
    policy = RestartPolicy(
        initial_delay_s=args.restart_delay,
        max_delay_s=max(args.restart_delay, args.max_restart_delay),
    )
    return Supervisor(specs, stop_timeout_s=stop_timeout_s, policy=policy).run()


def main(argv: list[str] | None = None) -> int:
    """Run ``up`` on its own, as ``python -m peptide_opt.supervisor_cli``."""
    parser = argparse.ArgumentParser(prog="peptide-opt up")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_up(args)
    except PeptideOptError as error:
        print(f"peptide-opt: error: {error}", file=sys.stderr)
        return error.exit_code


def _command(text: str | None, *subcommand: str) -> list[str]:
    # The same interpreter as this process, so that `up` from a virtualenv starts the
    # virtualenv's peptide-opt whether or not its bin/ folder is on PATH.
    if text is None:
        return [sys.executable, "-m", "peptide_opt.cli", *subcommand]
    argv = shlex.split(text)
    if not argv:
        raise InputError(f"the command for 'peptide-opt {' '.join(subcommand)}' is empty")
    return argv


def _positive_int(option: str, maximum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(
                f"{option} must be an integer from 1 to {maximum}, got {text!r}"
            )
        return value

    return parse


def _non_negative_float(option: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not value >= 0.0 or value == float("inf"):
            raise argparse.ArgumentTypeError(
                f"{option} must be a number of seconds >= 0, got {text!r}"
            )
        return value

    return parse


def _configure_logging(settings: Settings) -> None:
    # Leave logging alone when the caller (the top-level CLI or a test) configured it.
    if logging.getLogger().handlers:
        return
    if settings.log_level not in logging.getLevelNamesMapping():
        raise InputError(
            "LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, "
            f"got {settings.log_level!r}"
        )
    configure_logging(settings.log_level, settings.log_format, worker_id=None)


if __name__ == "__main__":
    sys.exit(main())
