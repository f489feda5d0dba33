"""The ``model`` step: a 3D model of the peptide from its sequence."""

from __future__ import annotations

from peptide_opt.config import AMINO_ACIDS
from peptide_opt.engines import peptide_builder
from peptide_opt.errors import InputError
from peptide_opt.pipeline.types import PeptideModel

MIN_PEPTIDE_LENGTH = 2
MAX_PEPTIDE_LENGTH = 50


def build_peptide_model(sequence: str, seed: int) -> PeptideModel:
    """Build the protonated peptide with hydrogens and one ETKDG conformer.

    Parameters
    ----------
    sequence
        One-letter codes of the 20 standard amino acids, 2-50 residues.
    seed
        Random seed of the RDKit embedding; the same seed gives the same coordinates.
    """
    sequence = check_sequence(sequence)
    mol = peptide_builder.build_peptide(sequence)
    peptide_builder.embed(mol, seed)
    return PeptideModel(sequence=sequence, mol=mol)


def check_sequence(sequence: str) -> str:
    """Return the sequence in upper case; raise :class:`InputError` if it is invalid."""
    cleaned = sequence.strip().upper()
    if not MIN_PEPTIDE_LENGTH <= len(cleaned) <= MAX_PEPTIDE_LENGTH:
        raise InputError(
            f"peptide length must be between {MIN_PEPTIDE_LENGTH} and "
            f"{MAX_PEPTIDE_LENGTH} residues, got {len(cleaned)}"
        )
    for position, letter in enumerate(cleaned, start=1):
        if letter not in AMINO_ACIDS:
            raise InputError(
                f"peptide residue {letter!r} at position {position} is not one of the "
                f"20 standard amino acids ({AMINO_ACIDS})"
            )
    return cleaned
