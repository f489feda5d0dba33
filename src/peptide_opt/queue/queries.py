"""The named SQL blocks of ``sql/queries.sql``."""

from __future__ import annotations

import functools
import re
from importlib import resources

_NAME_LINE = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)


@functools.cache
def load_queries() -> dict[str, str]:
    """Return every block of ``sql/queries.sql`` by its name."""
    text = (resources.files("peptide_opt.queue") / "sql" / "queries.sql").read_text(
        "utf-8"
    )
    parts = _NAME_LINE.split(text)
    # parts[0] is the file's header comment; then name, body, name, body, ...
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2])}


def query(name: str) -> str:
    """Return the SQL block called ``name``."""
    return load_queries()[name]
