"""The values that pass between pipeline steps."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Receptor:
    """A prepared receptor: protein chains and nearby metal ions, hydrogens added.

    ``pdb_text`` is the prepared structure in PDB format with the input's chain IDs.
    ``site_marker_xyz`` (n, 3), in Å, holds the heavy-atom coordinates of the chain or
    ligand that marked the site before it was removed, or None.
    """

    pdb_text: str
    chain_ids: tuple[str, ...]
    site_marker_xyz: np.ndarray | None = None
    ph: float = 7.4
    warnings: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class PeptideModel:
    """A 3D model of the peptide built from its sequence.

    ``mol`` is an RDKit molecule with explicit hydrogens, PDB residue information on every
    atom (residue names, numbers 1..n, chain A) and at least one conformer.
    """

    sequence: str
    mol: Any


@dataclasses.dataclass(frozen=True)
class Site:
    """The docking box: centre and edge lengths in Å, and how it was chosen.

    ``source`` is ``"site_center"`` (given by the user), ``"site_chain"`` (the box around
    a chain plus a margin) or ``"pocket"`` (detected).
    """

    center: tuple[float, float, float]
    size: tuple[float, float, float]
    source: str
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "center": [round(value, 3) for value in self.center],
            "size": [round(value, 3) for value in self.size],
            "source": self.source,
            **self.detail,
        }


@dataclasses.dataclass
class Pose:
    """One docked pose of the input peptide.

    ``peptide_pdb`` is the peptide in its docked position as PDB text: chain A, residues
    numbered 1..n, standard residue and atom names, hydrogens included.
    ``affinity`` is the Vina affinity in kcal/mol after local optimization in the
    receptor (the ``score`` step); ``docking_affinity`` the value the search reported.
    """

    peptide_pdb: str
    docking_affinity: float
    affinity: float | None = None
    rank: int | None = None
    detail: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Design:
    """One sequence ProteinMPNN sampled for a pose.

    ``score`` is the mean negative log-likelihood over the designed chain (the peptide),
    ``global_score`` the same over the whole complex; lower is better for both.
    """

    sequence: str
    score: float
    global_score: float
    seq_recovery: float
    sample: int
    temperature: float


@dataclasses.dataclass
class PoseDesigns:
    """ProteinMPNN's output for one pose: the input sequence's scores and the samples."""

    native_sequence: str
    native_score: float
    native_global_score: float
    designs: list[Design]
    fasta_text: str = ""
