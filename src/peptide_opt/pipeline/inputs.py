"""The three input forms of a job, turned into one :class:`JobInputs`.

1. Files: a receptor file and a peptide (sequence or FASTA text).
2. A job folder: ``peptide.fasta``, the receptor, optionally ``optimization_config.txt``.
3. Storage: fetched into a job folder first (see :mod:`peptide_opt.storage`).

The peptide comes from ``peptide.fasta``; a config ``peptide_sequence`` that differs from
it is a warning. Command-line values override the config file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peptide_opt.config import JobConfig, build_config, parse_config_text, parse_file_name
from peptide_opt.errors import InputError
from peptide_opt.pipeline.prepare import (
    RECEPTOR_SUFFIXES,
    check_regular_file,
    normalize_peptide,
    read_peptide_file,
)

CONFIG_FILE = "optimization_config.txt"
PEPTIDE_FILE = "peptide.fasta"


@dataclasses.dataclass
class JobInputs:
    """A validated job: the receptor file, the peptide sequence and the settings."""

    receptor_path: Path
    peptide: str
    config: JobConfig
    warnings: list[str] = dataclasses.field(default_factory=list)


def load_files(
    receptor: Path, peptide: str, overrides: Mapping[str, Any] | None = None
) -> JobInputs:
    """Build a job from a receptor file and a peptide given as a sequence, FASTA text or
    the path of a FASTA file."""
    warnings: list[str] = []
    check_regular_file(receptor, f"receptor {receptor}")
    peptide_path = Path(peptide) if len(peptide) < 4096 else None
    if peptide_path is not None and (
        peptide_path.exists() or _looks_like_path(peptide)
    ):
        check_regular_file(peptide_path, f"peptide {peptide}")
        sequence = read_peptide_file(peptide_path)
    else:
        sequence = normalize_peptide(peptide, source="peptide")
    config = build_config(dict(overrides or {}), warnings)
    _check_sequence_config(sequence, config, warnings)
    return JobInputs(receptor, sequence, config, warnings)


#: File name endings of a peptide given as a file, so that a misspelled file name is
#: reported as a missing file rather than read as a sequence.
PEPTIDE_FILE_SUFFIXES = (".fasta", ".fa", ".faa", ".fas", ".seq", ".txt")


def _looks_like_path(text: str) -> bool:
    """Return whether ``text`` names a file: a folder separator or a FASTA ending."""
    if "\n" in text:
        return False
    return "/" in text or text.lower().endswith(PEPTIDE_FILE_SUFFIXES)


def load_job_folder(folder: Path, overrides: Mapping[str, Any] | None = None) -> JobInputs:
    """Build a job from a job folder (the previous implementation's input form)."""
    if not folder.is_dir():
        raise InputError(f"job folder {folder} not found")
    warnings: list[str] = []
    values: dict[str, Any] = {}
    config_path = folder / CONFIG_FILE
    if config_path.is_file():
        values.update(
            parse_config_text(config_path.read_text(errors="replace"), warnings=warnings)
        )
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    config = build_config(values, warnings)

    peptide_path = folder / PEPTIDE_FILE
    if not peptide_path.is_file():
        raise InputError(f"job folder {folder.name}: {PEPTIDE_FILE} not found")
    sequence = read_peptide_file(peptide_path)
    receptor = find_receptor(folder, config.receptor_pdb_filename)
    _check_sequence_config(sequence, config, warnings)
    return JobInputs(receptor, sequence, config, warnings)


def find_receptor(folder: Path, file_name: str | None) -> Path:
    """Return the receptor of a job folder: the named file, or the only structure file."""
    if file_name:
        path = folder / parse_file_name("receptor_pdb_filename", file_name)
        if not path.is_file():
            raise InputError(
                f"receptor_pdb_filename {file_name!r} not found in job folder {folder.name}"
            )
        return path
    candidates = sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in RECEPTOR_SUFFIXES
    )
    if len(candidates) != 1:
        found = ", ".join(path.name for path in candidates) or "none"
        raise InputError(
            f"job folder {folder.name}: expected exactly one receptor file "
            f"(*.pdb or *.cif) or receptor_pdb_filename in {CONFIG_FILE}; found {found}"
        )
    return candidates[0]


def check_stated_prefix(inputs: JobInputs, prefix: str) -> None:
    """Warn when the config's storage_prefix or receptor_storage_key disagree with the
    job's prefix; the job's prefix is used."""
    config = inputs.config
    if config.storage_prefix and config.storage_prefix.strip("/") != prefix:
        inputs.warnings.append(
            f"storage_prefix {config.storage_prefix!r} in the config differs from the "
            f"job's prefix {prefix!r}; the job's prefix is used"
        )
    expected_key = f"{prefix}/input/{inputs.receptor_path.name}"
    if config.receptor_storage_key and config.receptor_storage_key.strip("/") != expected_key:
        inputs.warnings.append(
            f"receptor_storage_key {config.receptor_storage_key!r} in the config differs "
            f"from {expected_key!r}; the job's input folder is used"
        )


def _check_sequence_config(sequence: str, config: JobConfig, warnings: list[str]) -> None:
    from peptide_opt.pipeline.design import kept_positions

    # Design controls are checked against the peptide before any step runs.
    if config.proteinmpnn_enabled:
        kept_positions(config, sequence)
    if config.peptide_sequence:
        stated = normalize_peptide(config.peptide_sequence, source="peptide_sequence")
        if stated != sequence:
            warnings.append(
                f"peptide_sequence {stated} in the config differs from the peptide "
                f"file's {sequence}; the peptide file is used"
            )
