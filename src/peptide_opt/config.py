"""Job configuration: the keys of ``optimization_config.txt`` and their validation.

The command line, the worker and the HTTP API all build a :class:`JobConfig` through
:func:`build_config`, so every input path applies the same limits and messages.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from peptide_opt.errors import InputError

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
CHAIN_ID_PATTERN = re.compile(r"^[A-Za-z0-9]{1,4}$")
FILE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$")
MAX_SEED = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class JobConfig:
    """Validated settings of one job; the defaults are the documented ones."""

    n_poses: int = 10
    num_seq_per_target: int = 10
    proteinmpnn_seed: int = 37
    n_iterations: int = 1
    cleanup: bool = True
    proteinmpnn_enabled: bool = True
    receptor_pdb_filename: str | None = None
    peptide_sequence: str | None = None
    storage_prefix: str | None = None
    receptor_storage_key: str | None = None
    receptor_chains: tuple[str, ...] | None = None
    site_chain: str | None = None
    site_center: tuple[float, float, float] | None = None
    site_size: tuple[float, float, float] | None = None
    site_margin: float = 8.0
    ph: float = 7.4
    docking_seed: int = 37
    sampling_temperature: float = 0.1
    fixed_positions: str | None = None
    keep_motif: str | None = None
    omit_amino_acids: str | None = None
    aa_bias: tuple[tuple[str, float], ...] | None = None
    selection: str = "rescore"

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready values (tuples become lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in dataclasses.asdict(self).items()
        }


# ---------------------------------------------------------------------------
# Value parsers. Each takes the key and its text and returns the typed value, or raises
# InputError naming the key, the limit and the value.


def _parse_int(key: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise InputError(f"{key} must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise InputError(f"{key} must be between {low} and {high}, got {value}")
    return value


def _parse_float(key: str, text: str, low: float, high: float) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise InputError(f"{key} must be a number, got {text!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise InputError(f"{key} must be between {low:g} and {high:g}, got {text.strip()}")
    return value


def _parse_bool(key: str, text: str) -> bool:
    word = text.strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise InputError(f"{key} must be True or False, got {text!r}")


def _parse_vector(
    key: str, text: str, low: float = -1e4, high: float = 1e4
) -> tuple[float, float, float]:
    parts = [part for part in re.split(r"[,\s]+", text.strip()) if part]
    if len(parts) != 3:
        raise InputError(f"{key} must be three numbers x,y,z in Å, got {text!r}")
    values = tuple(_parse_float(key, part, low, high) for part in parts)
    return values  # type: ignore[return-value]


def parse_chain_id(key: str, text: str) -> str:
    """Return a chain ID after checking that it is 1–4 letters or digits."""
    chain_id = text.strip()
    if not CHAIN_ID_PATTERN.match(chain_id):
        raise InputError(
            f"{key} must be a chain ID of 1 to 4 letters or digits, got {text!r}"
        )
    return chain_id


def _parse_chain_list(key: str, text: str) -> tuple[str, ...]:
    parts = [part for part in re.split(r"[,\s]+", text.strip()) if part]
    if not parts:
        raise InputError(f"{key} must list at least one chain ID, got {text!r}")
    return tuple(parse_chain_id(key, part) for part in parts)


def parse_file_name(key: str, text: str) -> str:
    """Return a plain file name; path separators, ``..`` and control characters fail."""
    name = text.strip()
    if "/" in name or "\\" in name or ".." in name:
        raise InputError(
            f"{key} must be a plain file name without path separators or '..', "
            f"got {text!r}"
        )
    if not FILE_NAME_PATTERN.match(name):
        raise InputError(
            f"{key} must be 1-255 letters, digits, '.', '_', '+' or '-' starting with a "
            f"letter or digit, got {text!r}"
        )
    return name


def safe_file_name(name: str) -> str:
    """Return ``name`` with every character that :func:`parse_file_name` rejects
    replaced by ``_``, and ``..`` by ``_.``, so that the result is accepted."""
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", name)[:255]
    while ".." in safe:
        safe = safe.replace("..", "_.")
    if not safe[:1].isalnum():
        safe = ("f" + safe)[:255]
    return safe


def _parse_letters(key: str, text: str) -> str:
    letters = re.sub(r"[\s,]+", "", text).upper()
    for position, letter in enumerate(letters, start=1):
        if letter not in AMINO_ACIDS:
            raise InputError(
                f"{key}: {letter!r} at position {position} is not one of the 20 "
                f"standard amino acids ({AMINO_ACIDS})"
            )
    return letters


def _parse_omit(key: str, text: str) -> str:
    letters = "".join(sorted(set(_parse_letters(key, text))))
    if len(letters) == len(AMINO_ACIDS):
        raise InputError(f"{key} excludes all 20 amino acids; at least one must remain")
    return letters or None  # type: ignore[return-value]


def _parse_positions(key: str, text: str) -> str:
    """Check the syntax of ``8-10,15``; the peptide's length is checked later."""
    cleaned = re.sub(r"\s+", "", text)
    if not cleaned:
        return None  # type: ignore[return-value]
    for part in cleaned.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise InputError(
                f"{key} must be 1-based positions or ranges such as '8-10,15', "
                f"got {text!r}"
            )
        start = int(match.group(1))
        end = int(match.group(2) or start)
        if start < 1 or end < start:
            raise InputError(f"{key}: range {part!r} must satisfy 1 <= start <= end")
    return cleaned


def _parse_bias(key: str, text: str) -> tuple[tuple[str, float], ...]:
    pairs = []
    for part in [part for part in re.split(r"[,\s]+", text.strip()) if part]:
        letter, sep, number = part.partition(":")
        if not sep:
            raise InputError(
                f"{key} must be pairs such as 'W:1.5,P:-1', got {part!r} in {text!r}"
            )
        letter = _parse_letters(key, letter)
        if len(letter) != 1:
            raise InputError(f"{key}: {part!r} must name exactly one amino acid")
        pairs.append((letter, _parse_float(key, number, -10.0, 10.0)))
    return tuple(pairs) or None  # type: ignore[return-value]


def _parse_selection(key: str, text: str) -> str:
    word = text.strip().lower()
    if word not in ("rescore", "mpnn"):
        raise InputError(f"{key} must be 'rescore' or 'mpnn', got {text!r}")
    return word


def _parse_text(key: str, text: str) -> str:
    if len(text) > 1024:
        raise InputError(f"{key} is longer than 1024 characters ({len(text)})")
    return text.strip()


def _site_size(key: str, text: str) -> tuple[float, float, float]:
    return _parse_vector(key, text, 5.0, 40.0)


Parser = Callable[[str, str], Any]

#: Every key a job may set, with the parser that validates it.
PARSERS: dict[str, Parser] = {
    "n_poses": lambda k, t: _parse_int(k, t, 1, 50),
    "num_seq_per_target": lambda k, t: _parse_int(k, t, 1, 100),
    "proteinmpnn_seed": lambda k, t: _parse_int(k, t, 0, MAX_SEED),
    "n_iterations": lambda k, t: _parse_int(k, t, 1, 10),
    "cleanup": _parse_bool,
    "proteinmpnn_enabled": _parse_bool,
    "receptor_pdb_filename": parse_file_name,
    "peptide_sequence": _parse_text,
    "storage_prefix": _parse_text,
    "receptor_storage_key": _parse_text,
    "receptor_chains": _parse_chain_list,
    "site_chain": parse_chain_id,
    "site_center": _parse_vector,
    "site_size": _site_size,
    "site_margin": lambda k, t: _parse_float(k, t, 0.0, 20.0),
    "ph": lambda k, t: _parse_float(k, t, 0.0, 14.0),
    "docking_seed": lambda k, t: _parse_int(k, t, 0, MAX_SEED),
    "sampling_temperature": lambda k, t: _parse_float(k, t, 0.01, 1.0),
    "fixed_positions": _parse_positions,
    "keep_motif": lambda k, t: _parse_letters(k, t) or None,
    "omit_amino_acids": _parse_omit,
    "aa_bias": _parse_bias,
    "selection": _parse_selection,
}

#: Keys the platform writes that this worker accepts and does not use.
IGNORED_KEYS = {
    "cores": "cores is ignored: the worker sets its own core count",
    "n_rosetta_runs": "n_rosetta_runs is ignored: this pipeline runs no Rosetta step",
}

CONFIG_KEYS = tuple(PARSERS)


def parse_config_text(
    text: str,
    source: str = "optimization_config.txt",
    warnings: list[str] | None = None,
) -> dict[str, str]:
    """Parse ``key=value`` lines; ``#`` starts a comment, blank lines are skipped.

    A key given twice keeps its last value, with a message added to ``warnings``.
    """
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{source} line {number}: expected key=value, got {line!r}")
        key = key.strip()
        if key in values and warnings is not None:
            warnings.append(
                f"{source} line {number}: {key} is given again; the last value "
                f"{value.strip()!r} is used"
            )
        values[key] = value.strip()
    return values


def build_config(
    values: Mapping[str, Any], warnings: list[str] | None = None
) -> JobConfig:
    """Validate raw values (text, numbers or booleans) into a :class:`JobConfig`.

    Unknown and ignored keys add a message to ``warnings``; empty values keep the
    default. Raises :class:`InputError` on the first invalid value.
    """
    if warnings is None:
        warnings = []
    fields: dict[str, Any] = {}
    for key, raw in values.items():
        if raw is None:
            continue
        if key in IGNORED_KEYS:
            warnings.append(IGNORED_KEYS[key])
            continue
        if key not in PARSERS:
            warnings.append(f"unknown config key {key!r} ignored")
            continue
        text = _as_text(raw)
        if text.strip() == "":
            continue
        fields[key] = PARSERS[key](key, text)
    fields = {key: value for key, value in fields.items() if value is not None}
    config = JobConfig(**fields)
    if config.site_chain and config.receptor_chains and (
        config.site_chain in config.receptor_chains
    ):
        raise InputError(
            f"site_chain {config.site_chain!r} is also listed in receptor_chains "
            f"{','.join(config.receptor_chains)}; the site chain is removed from the "
            "receptor"
        )
    if (config.site_center is None) != (config.site_size is None):
        raise InputError("site_center and site_size must be given together")
    return config


def merge_config(base: JobConfig, overrides: Mapping[str, Any]) -> JobConfig:
    """Return ``base`` with ``overrides`` (already validated values) applied."""
    changes = {key: value for key, value in overrides.items() if value is not None}
    return dataclasses.replace(base, **changes)


def _as_text(raw: Any) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bool):
        return "True" if raw else "False"
    if isinstance(raw, (list, tuple)):
        return ",".join(_as_text(item) for item in raw)
    return str(raw)
