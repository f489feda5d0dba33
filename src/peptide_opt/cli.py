"""The ``peptide-opt`` command line.

Each area of the package adds its own subcommands: a module listed in
:data:`COMMAND_MODULES` defines ``register(subparsers)``, which adds its parsers and sets
``handler`` (a function taking the parsed arguments and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from peptide_opt import __version__
from peptide_opt.errors import PeptideOptError

COMMAND_MODULES = (
    "peptide_opt.pipeline.cli",
    "peptide_opt.queue.cli",
    "peptide_opt.worker.cli",
    "peptide_opt.worker.celery_cli",
    "peptide_opt.api.cli",
    "peptide_opt.client.cli",
    "peptide_opt.supervisor_cli",
)

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with the subcommands of every area installed."""
    parser = argparse.ArgumentParser(
        prog="peptide-opt",
        description="Dock a peptide into a receptor, redesign it with ProteinMPNN and "
        "report the best designs; run the task queue, workers and HTTP API around it.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug log lines"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            # An area that is not installed adds no commands; any other missing
            # import inside an existing module is a real error.
            if error.name is None or not name.startswith(error.name):
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code (0, 1 failure, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except PeptideOptError as error:
        if args.debug:
            logger.exception("command failed")
        print(f"peptide-opt: error: {_describe(error)}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("peptide-opt: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the last resort for an unexpected bug
        if args.debug:
            raise
        print(
            f"peptide-opt: internal error: {type(error).__name__}: {error} "
            "(run peptide-opt --debug COMMAND ... for the traceback)",
            file=sys.stderr,
        )
        return 1


def _describe(error: BaseException) -> str:
    """Join an error's message with the messages of its causes."""
    parts = [str(error)]
    cause = error.__cause__
    while cause is not None:
        text = str(cause)
        if text and text not in parts:
            parts.append(text)
        cause = cause.__cause__
    return ": ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
