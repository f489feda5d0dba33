"""``peptide-opt submit|status|wait|download``: the command-line client of a server.

The server's URL and key come from ``--url`` and ``--key`` or from PEPTIDE_OPT_URL and
PEPTIDE_OPT_KEY.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from peptide_opt.api.fields import USER_KEYS
from peptide_opt.config import safe_file_name
from peptide_opt.client.api_client import TERMINAL_STATUSES, ApiClient
from peptide_opt.errors import InputError, PeptideOptError
from peptide_opt.pipeline.cli import KEY_HELP, SHORT_FORMS
from peptide_opt.settings import Settings

STATUSES = ("pending", "processing", "finished", "failed", "cancelled")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``submit``, ``status``, ``wait`` and ``download`` commands."""
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("server")
    group.add_argument("--url", help="server URL (default: PEPTIDE_OPT_URL or "
                       "http://127.0.0.1:8000)")
    group.add_argument("--key", help="API key (default: PEPTIDE_OPT_KEY)")
    group.add_argument("--json", action="store_true", help="print the server's JSON")

    _add_submit(subparsers, connection)

    status = subparsers.add_parser(
        "status",
        parents=[connection],
        help="show a task, or list your tasks",
        description="Show one task of the server, or without TASK_ID list your tasks.",
    )
    status.add_argument("task_id", nargs="?", help="the task's id")
    status.add_argument("--status", choices=STATUSES, help="list only tasks in this status")
    status.add_argument("--limit", type=int, default=20, help="tasks per page (default 20)")
    status.add_argument("--offset", type=int, default=0, help="tasks to skip")
    status.set_defaults(handler=run_status)

    wait = subparsers.add_parser(
        "wait",
        parents=[connection],
        help="wait until a task ends",
        description="Poll a task until it is finished, failed or cancelled. Exit code 0 "
        "when it finished, 1 otherwise.",
    )
    wait.add_argument("task_id", help="the task's id")
    wait.add_argument("--timeout", type=float, help="give up after this many seconds")
    wait.add_argument(
        "--interval", type=float, default=5.0, help="seconds between polls (default 5)"
    )
    wait.set_defaults(handler=run_wait)

    download = subparsers.add_parser(
        "download",
        parents=[connection],
        help="download a finished task's result files",
        description="Download the result files of a finished task (every file in its "
        "manifest, or only those given with --file).",
    )
    download.add_argument("task_id", help="the task's id")
    download.add_argument(
        "--output-dir", type=Path, default=None,
        help="folder for the files (default ./output/TASK_ID)",
    )
    download.add_argument(
        "--file", action="append", dest="names", metavar="NAME",
        help="download only this file (repeatable), e.g. result.csv",
    )
    download.set_defaults(handler=run_download)


def _add_submit(subparsers: argparse._SubParsersAction, parent) -> None:
    submit = subparsers.add_parser(
        "submit",
        parents=[parent],
        help="submit a task to a server",
        description="Upload a receptor and a peptide to a peptide-opt server and print "
        "the new task's id. The server validates every value before it queues the task.",
    )
    submit.add_argument("--receptor", type=Path, required=True,
                        help="receptor file (PDB or mmCIF)")
    submit.add_argument("--peptide", required=True,
                        help="peptide sequence, FASTA text or a FASTA file")
    submit.add_argument("--priority", type=int,
                        help="higher runs first, -1000 to 1000 (default 0)")
    submit.add_argument("--wait", action="store_true",
                        help="wait until the task ends, then print it")
    keys = submit.add_argument_group("job settings")
    for key in USER_KEYS:
        names = [f"--{key.replace('_', '-')}"]
        if key in SHORT_FORMS:
            names.append(SHORT_FORMS[key])
        keys.add_argument(*names, dest=key, metavar="VALUE", help=KEY_HELP.get(key))
    submit.set_defaults(handler=run_submit, config_keys=USER_KEYS)


def _client(args: argparse.Namespace) -> ApiClient:
    settings = Settings.from_env()
    return ApiClient(args.url or settings.client_url, args.key or settings.client_key)


def _peptide_text(value: str) -> str:
    """Return the peptide argument, reading it from a file when it names one."""
    path = Path(value)
    try:
        if len(value) < 4096 and path.is_file():
            return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"peptide file {value}: cannot be read ({error})") from None
    return value


def run_submit(args: argparse.Namespace) -> int:
    """Submit a task and print its id (or the task, with --json)."""
    if not args.receptor.is_file():
        raise InputError(f"receptor {args.receptor}: file not found")
    config = {
        key: getattr(args, key) for key in args.config_keys
        if getattr(args, key) is not None
    }
    file_name = safe_file_name(args.receptor.name)
    if file_name != args.receptor.name:
        print(
            f"note: receptor {args.receptor.name!r} is sent as {file_name!r}, because "
            "the server accepts only letters, digits, '.', '_', '+' and '-' in names",
            file=sys.stderr,
        )
    with _client(args) as client:
        task = client.submit(
            args.receptor, _peptide_text(args.peptide), config, args.priority,
            file_name=file_name,
        )
        for warning in task.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
        if not args.wait:
            _print(args, task, task["id"])
            return 0
        print(task["id"], file=sys.stderr)
        task = client.wait(task["id"], on_change=_report_progress)
    _print(args, task, _describe(task))
    return 0 if task["status"] == "finished" else 1


def run_status(args: argparse.Namespace) -> int:
    """Print one task, or one page of tasks."""
    with _client(args) as client:
        if args.task_id:
            task = client.task(args.task_id)
            _print(args, task, _describe(task))
            return 0
        page = client.tasks(args.status, args.limit, args.offset)
    lines = [f"{'TASK':36}  {'STATUS':10}  {'PROGRESS':>8}  {'STEP':10}  CREATED (UTC)"]
    for task in page["tasks"]:
        lines.append(
            f"{task['id']:36}  {task['status']:10}  {task['progress']:>7}%  "
            f"{task.get('current_step') or '-':10}  {_time(task.get('created_at'))}"
        )
    shown = f"{page['offset'] + 1}-{page['offset'] + len(page['tasks'])}"
    lines.append(f"{shown if page['tasks'] else 'none'} of {page['total']}")
    _print(args, page, "\n".join(lines))
    return 0


def run_wait(args: argparse.Namespace) -> int:
    """Wait for a task to end; exit 0 when it finished."""
    if args.interval <= 0:
        raise InputError(f"--interval must be positive, got {args.interval:g}")
    with _client(args) as client:
        task = client.wait(args.task_id, args.timeout, args.interval, _report_progress)
    _print(args, task, _describe(task))
    return 0 if task["status"] == "finished" else 1


def run_download(args: argparse.Namespace) -> int:
    """Download a finished task's files into --output-dir."""
    with _client(args) as client:
        task = client.task(args.task_id)
        if task["status"] != "finished":
            raise PeptideOptError(
                f"task {args.task_id} is {task['status']}; results exist once finished"
            )
        available = task.get("files") or []
        names = args.names or available
        missing = [name for name in names if name not in available]
        if missing:
            raise InputError(
                f"task {args.task_id} has no file {', '.join(missing)}; its files are "
                f"{', '.join(available) or 'none'}"
            )
        output_dir = (args.output_dir or Path("output") / task["id"]).resolve()
        for name in names:
            destination = (output_dir / name).resolve()
            # Names come from the server's manifest; none may leave the output folder.
            if not destination.is_relative_to(output_dir):
                raise PeptideOptError(f"file name {name!r} leaves the output folder")
            client.download(args.task_id, name, destination)
            if not args.json:
                print(destination)
    if args.json:
        print(json.dumps({"task": task["id"], "files": names}, indent=2))
    return 0


def _report_progress(task: dict[str, Any]) -> None:
    if task["status"] not in TERMINAL_STATUSES:
        step = task.get("current_step") or "-"
        print(f"{task['status']} {task['progress']}% {step}", file=sys.stderr)


def _describe(task: dict[str, Any]) -> str:
    lines = [
        f"task:     {task['id']}",
        f"status:   {task['status']}",
        f"progress: {task['progress']}%  step: {task.get('current_step') or '-'}",
        f"attempts: {task['attempts']}",
        f"created:  {_time(task.get('created_at'))} UTC",
    ]
    if task.get("started_at"):
        lines.append(f"started:  {_time(task['started_at'])} UTC")
    if task.get("finished_at"):
        lines.append(f"finished: {_time(task['finished_at'])} UTC")
    if task.get("error"):
        lines.append(f"error:    {task['error']}")
    timings = task.get("step_timings") or {}
    if timings:
        lines.append(
            "steps:    " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in
                                     timings.items())
        )
    if task.get("files"):
        lines.append(f"files:    {', '.join(task['files'])}")
    return "\n".join(lines)


def _time(text: str | None) -> str:
    return (text or "-").replace("T", " ").split(".")[0]


def _print(args: argparse.Namespace, document: dict[str, Any], text: str) -> None:
    print(json.dumps(document, indent=2) if args.json else text)
