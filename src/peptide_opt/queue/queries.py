"""The named SQL blocks of the ``sql/*.sql`` files."""

from __future__ import annotations

import functools
import re
from importlib import resources

_NAME_LINE = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@functools.cache
def load_queries() -> dict[str, str]:
    """Return every block of the ``sql/*.sql`` files by its name.

    ``queries.sql`` contains the worker's and the operator commands' statements,
    ``celery.sql`` those of the Celery executor.
    """
    folder = resources.files("peptide_opt.queue") / "sql"
    blocks: dict[str, str] = {}
    for entry in sorted(folder.iterdir(), key=lambda entry: entry.name):
        if not entry.name.endswith(".sql"):
            continue
        parts = _NAME_LINE.split(entry.read_text("utf-8"))
        # parts[0] is the file's header comment; then name, body, name, body, ...
        for name, body in zip(parts[1::2], parts[2::2]):
            if name in blocks:
                raise ValueError(f"SQL block {name!r} is defined twice ({entry.name})")
            blocks[name] = body.strip()
    return blocks


def query(name: str) -> str:
    """Return the SQL block called ``name``."""
    return load_queries()[name]
