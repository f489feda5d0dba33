"""Task handlers: which function runs each task type.

Handlers come from the entry-point group ``peptide_opt.task_handlers`` (the product
declares ``peptide_optimization`` there) and from ``PEPTIDE_OPT_EXTRA_HANDLERS``, a
comma-separated list of ``module:attribute`` entries, each naming a mapping of task
types to handlers, or ``task_type=module:attribute`` entries naming one handler. The
variable lets tests and benchmarks add handlers that worker subprocesses find.
Every task type but ``peptide_optimization`` must start with ``peptide_opt.``, so
that a handler can never take a task type of the platform's other tools.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from peptide_opt.errors import InputError

ENTRY_POINT_GROUP = "peptide_opt.task_handlers"
EXTRA_HANDLERS_VARIABLE = "PEPTIDE_OPT_EXTRA_HANDLERS"
PRODUCT_TASK_TYPE = "peptide_optimization"
EXTRA_TASK_TYPE_PREFIX = "peptide_opt."
MAX_TASK_TYPE_LENGTH = 50  # tasks.task_type is VARCHAR(50)

Handler = Callable[..., Any]


def handler_specs(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return ``{task_type: "module:attribute"}`` for every registered handler.

    Entries of a mapping named in ``PEPTIDE_OPT_EXTRA_HANDLERS`` get the spec
    ``module:attribute[task_type]``.
    """
    env = os.environ if environ is None else environ
    specs = {
        entry.name: entry.value
        for entry in metadata.entry_points(group=ENTRY_POINT_GROUP)
    }
    for item in env.get(EXTRA_HANDLERS_VARIABLE, "").split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            task_type, _, target = item.partition("=")
            specs[task_type.strip()] = target.strip()
            continue
        mapping = _import_target(item)
        if not isinstance(mapping, Mapping):
            raise InputError(
                f"{EXTRA_HANDLERS_VARIABLE} entry {item!r} must name a mapping of "
                "task types to handlers, or be written task_type=module:attribute"
            )
        for task_type in mapping:
            specs[task_type] = f"{item}[{task_type}]"

    for task_type in specs:
        _check_task_type(task_type)
    return specs


def load_handler(spec: str) -> Handler:
    """Import the handler that ``spec`` names (see :func:`handler_specs`)."""
    target, _, key = spec.partition("[")
    handler = _import_target(target)
    if key:
        handler = handler[key.rstrip("]")]
    if not callable(handler):
        raise InputError(f"task handler {spec!r} is not callable")
    return handler


def _import_target(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise InputError(f"task handler {target!r} must be written module:attribute")
    try:
        value: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise InputError(f"task handler module {module_name!r} not found") from error
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise InputError(
                f"task handler {target!r}: {module_name} has no {attribute!r}"
            ) from None
    return value


def _check_task_type(task_type: str) -> None:
    if task_type == PRODUCT_TASK_TYPE:
        return
    if not task_type.startswith(EXTRA_TASK_TYPE_PREFIX):
        raise InputError(
            f"task type {task_type!r} must start with {EXTRA_TASK_TYPE_PREFIX!r}"
        )
    if len(task_type) > MAX_TASK_TYPE_LENGTH:
        raise InputError(
            f"task type {task_type!r} is {len(task_type)} characters long, over the "
            f"limit of {MAX_TASK_TYPE_LENGTH}"
        )
