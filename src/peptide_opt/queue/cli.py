"""``peptide-opt db upgrade`` and ``peptide-opt tasks retry|cancel ID``."""

from __future__ import annotations

import argparse
import re

from peptide_opt.errors import InputError, PeptideOptError
from peptide_opt.queue.migrations import upgrade
from peptide_opt.queue.store import DatabaseUnavailable, QueueStore
from peptide_opt.settings import Settings

_TASK_ID_PATTERN = re.compile(r"^[A-Za-z0-9-]{1,36}$")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``db`` and ``tasks`` subcommands."""
    database = subparsers.add_parser("db", help="manage the database schema")
    database_commands = database.add_subparsers(dest="db_command", metavar="COMMAND")
    database_upgrade = database_commands.add_parser(
        "upgrade",
        help="create the tables when missing and apply the schema migrations",
    )
    database_upgrade.set_defaults(handler=run_upgrade)

    tasks = subparsers.add_parser("tasks", help="operator commands on single tasks")
    task_commands = tasks.add_subparsers(dest="tasks_command", metavar="COMMAND")
    retry = task_commands.add_parser(
        "retry", help="requeue a failed or cancelled task with fresh attempts"
    )
    retry.add_argument("task_id", metavar="ID", help="the task's id")
    retry.set_defaults(handler=run_retry)
    cancel = task_commands.add_parser(
        "cancel",
        help="cancel a pending task, or ask the worker running it to stop it",
    )
    cancel.add_argument("task_id", metavar="ID", help="the task's id")
    cancel.set_defaults(handler=run_cancel)


def run_upgrade(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    applied = upgrade(settings.database_url)
    if not applied:
        print("database schema is up to date")
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    return 0


def operator_store(settings: Settings) -> QueueStore:
    """Return a store that reports a database outage at once instead of waiting."""
    return QueueStore(settings.database_url, should_give_up=lambda: True)


def _task_id(text: str) -> str:
    if not _TASK_ID_PATTERN.match(text):
        raise InputError(
            f"task id must be up to 36 letters, digits or dashes, got {text!r}"
        )
    return text


def _require_task(store: QueueStore, task_id: str) -> dict:
    rows = store.execute("get_task", {"task_id": task_id})
    if not rows:
        raise InputError(f"task {task_id} not found among peptide-opt's task types")
    return rows[0]


def run_retry(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    task_id = _task_id(args.task_id)
    store = operator_store(settings)
    try:
        task = _require_task(store, task_id)
        rows = store.execute(
            "retry_task", {"task_id": task_id, "max_attempts": settings.max_attempts}
        )
        if not rows:
            raise InputError(
                f"task {task_id} is {task['status']}; only failed or cancelled tasks "
                "can be retried"
            )
        store.execute("notify_tasks", {"reason": "retry"})
    except DatabaseUnavailable as error:
        raise PeptideOptError(str(error)) from error
    finally:
        store.close()
    print(f"task {task_id} is pending again")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    task_id = _task_id(args.task_id)
    store = operator_store(settings)
    try:
        task = _require_task(store, task_id)
        if store.execute("cancel_pending", {"task_id": task_id}):
            print(f"task {task_id} cancelled")
            return 0
        if store.execute("request_cancel", {"task_id": task_id}):
            store.execute("notify_cancel", {"task_id": task_id})
            print(f"task {task_id}: cancellation requested from its worker")
            return 0
        task = _require_task(store, task_id)
        raise InputError(
            f"task {task_id} is {task['status']}; only pending or processing tasks "
            "can be cancelled"
        )
    finally:
        store.close()
