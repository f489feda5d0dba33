"""Interface contacts of a peptide and the receptor: nearby residues, hydrogen bonds.

A receptor residue is in contact when one of its heavy atoms lies within
:data:`CONTACT_DISTANCE` (4 Å) of a peptide heavy atom. Residues are labelled
``chain:number:name`` with the receptor's own chain IDs and numbers, for example
``A:123:TYR`` (an insertion code follows the number: ``A:52A:GLY``).

Hydrogen bonds are counted between nitrogen and oxygen atoms of the peptide and the
receptor (sulfur is left out). The criterion is the one of GROMACS ``gmx hbond``: the
donor-acceptor distance is at most :data:`HBOND_DISTANCE` (3.5 Å) and the angle
hydrogen-donor-acceptor is at most :data:`HBOND_ANGLE` (30°) for one of the donor's
hydrogens. When a structure has hydrogens, a donor is an N or O atom with a hydrogen
within :data:`BONDED_H_DISTANCE` Å, and an acceptor is any O atom or a histidine ring
nitrogen without a hydrogen. When a structure has no hydrogens, donors and acceptors
come from the residue tables below and only the distance is checked (``angle`` is
None in the result).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gemmi
import numpy as np

from peptide_opt.errors import EngineError

CONTACT_DISTANCE = 4.0
HBOND_DISTANCE = 3.5
HBOND_ANGLE = 30.0
#: A hydrogen this close (Å) to an N or O atom is bonded to it (N-H 1.01, O-H 0.96 Å).
BONDED_H_DISTANCE = 1.25

#: Donor atoms of the standard residues, used when a structure has no hydrogens. The
#: backbone N of every residue but proline is a donor too.
DONOR_ATOMS: dict[str, frozenset[str]] = {
    "ARG": frozenset({"NE", "NH1", "NH2"}),
    "ASN": frozenset({"ND2"}),
    "GLN": frozenset({"NE2"}),
    "HIS": frozenset({"ND1", "NE2"}),
    "LYS": frozenset({"NZ"}),
    "SER": frozenset({"OG"}),
    "THR": frozenset({"OG1"}),
    "TRP": frozenset({"NE1"}),
    "TYR": frozenset({"OH"}),
}
#: Nitrogen acceptors: the histidine ring nitrogens that carry no hydrogen.
NITROGEN_ACCEPTORS: dict[str, frozenset[str]] = {"HIS": frozenset({"ND1", "NE2"})}


@dataclasses.dataclass
class InterfaceContacts:
    """The receptor residues in contact with a peptide, and their hydrogen bonds.

    ``residues`` lists ``chain:number:name`` labels in the receptor's order.
    ``hydrogen_bonds`` contains one dict per bond: ``donor`` (``"peptide"`` or
    ``"receptor"``), ``peptide_residue``, ``peptide_atom``, ``receptor_residue``,
    ``receptor_atom``, ``distance`` (donor-acceptor, Å) and ``angle`` (H-D-A, degrees,
    or None without hydrogens).
    """

    residues: list[str]
    hydrogen_bonds: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"residues": list(self.residues), "hydrogen_bonds": self.hydrogen_bonds}


@dataclasses.dataclass
class _Atoms:
    """Atom table of one structure: coordinates (n, 3) in Å and per-atom labels."""

    xyz: np.ndarray
    elements: np.ndarray
    names: list[str]
    residue_names: list[str]
    residue_labels: list[str]
    residue_index: np.ndarray


def interface_contacts(receptor_pdb: str, peptide_pdb: str) -> InterfaceContacts:
    """Find the receptor residues within 4 Å of the peptide and the hydrogen bonds.

    Parameters
    ----------
    receptor_pdb, peptide_pdb
        PDB text of the receptor and of the peptide in its pose, in the same frame.
    """
    peptide = _atom_table(peptide_pdb, "peptide")
    # Only receptor atoms near the peptide can take part. A hydrogen of a donor within
    # 3.5 Å of the peptide lies within 3.5 + 1.25 Å of it.
    receptor = _subset(
        _atom_table(receptor_pdb, "receptor"),
        peptide.xyz,
        max(CONTACT_DISTANCE, HBOND_DISTANCE + BONDED_H_DISTANCE) + 0.5,
    )
    residues = contact_residues(receptor, peptide)
    bonds = hydrogen_bonds(peptide, receptor, peptide_donates=True)
    bonds += hydrogen_bonds(receptor, peptide, peptide_donates=False)
    bonds.sort(
        key=lambda b: (b["peptide_residue"], b["peptide_atom"], b["receptor_residue"])
    )
    return InterfaceContacts(residues=residues, hydrogen_bonds=bonds)


def contact_residues(receptor: _Atoms, peptide: _Atoms) -> list[str]:
    """Return the labels of receptor residues with a heavy atom within 4 Å of the
    peptide's heavy atoms, in the receptor's order."""
    receptor_heavy = np.flatnonzero(receptor.elements != "H")
    peptide_xyz = peptide.xyz[peptide.elements != "H"]
    near = _within(receptor.xyz[receptor_heavy], peptide_xyz, CONTACT_DISTANCE)
    residue_indices = sorted(set(receptor.residue_index[receptor_heavy[near]].tolist()))
    labels = []
    for index in residue_indices:
        atom = int(np.flatnonzero(receptor.residue_index == index)[0])
        labels.append(receptor.residue_labels[atom])
    return labels


def hydrogen_bonds(
    donors: _Atoms, acceptors: _Atoms, peptide_donates: bool
) -> list[dict[str, Any]]:
    """Return the bonds from one structure's donors to the other's acceptors."""
    donor_indices, donor_hydrogens = _donors(donors)
    acceptor_indices = _acceptors(acceptors)
    if not donor_indices or not acceptor_indices:
        return []
    donor_xyz = donors.xyz[donor_indices]
    acceptor_xyz = acceptors.xyz[acceptor_indices]
    distances = np.linalg.norm(
        donor_xyz[:, None, :] - acceptor_xyz[None, :, :], axis=-1
    )
    bonds = []
    for i, j in zip(*np.nonzero(distances <= HBOND_DISTANCE)):
        donor = donor_indices[i]
        acceptor = acceptor_indices[j]
        angle = _best_angle(donors, donor, donor_hydrogens[i], acceptors.xyz[acceptor])
        if angle is not None and angle > HBOND_ANGLE:
            continue
        peptide_side, receptor_side = (
            (donors, acceptors) if peptide_donates else (acceptors, donors)
        )
        peptide_atom, receptor_atom = (
            (donor, acceptor) if peptide_donates else (acceptor, donor)
        )
        bonds.append(
            {
                "donor": "peptide" if peptide_donates else "receptor",
                "peptide_residue": peptide_side.residue_labels[peptide_atom],
                "peptide_atom": peptide_side.names[peptide_atom],
                "receptor_residue": receptor_side.residue_labels[receptor_atom],
                "receptor_atom": receptor_side.names[receptor_atom],
                "distance": round(float(distances[i, j]), 3),
                "angle": None if angle is None else round(angle, 1),
            }
        )
    return bonds


def _best_angle(
    atoms: _Atoms, donor: int, hydrogens: list[int], acceptor_xyz: np.ndarray
) -> float | None:
    """Return the smallest H-D-A angle (degrees) over the donor's hydrogens."""
    if not hydrogens:
        return None
    to_acceptor = acceptor_xyz - atoms.xyz[donor]
    to_acceptor /= np.linalg.norm(to_acceptor)
    to_hydrogens = atoms.xyz[hydrogens] - atoms.xyz[donor]
    to_hydrogens /= np.linalg.norm(to_hydrogens, axis=1)[:, None]
    cosines = np.clip(to_hydrogens @ to_acceptor, -1.0, 1.0)
    return float(np.degrees(np.arccos(cosines.max())))


def _donors(atoms: _Atoms) -> tuple[list[int], list[list[int]]]:
    """Return the donor atoms and, for each, its bonded hydrogens (empty without H)."""
    polar = np.flatnonzero(np.isin(atoms.elements, ("N", "O")))
    hydrogens = np.flatnonzero(atoms.elements == "H")
    indices: list[int] = []
    bonded: list[list[int]] = []
    if hydrogens.size:
        distances = np.linalg.norm(
            atoms.xyz[polar][:, None, :] - atoms.xyz[hydrogens][None, :, :], axis=-1
        )
        for row, atom in enumerate(polar):
            attached = hydrogens[distances[row] <= BONDED_H_DISTANCE].tolist()
            if attached:
                indices.append(int(atom))
                bonded.append(attached)
        return indices, bonded
    for atom in polar:
        name = atoms.names[atom]
        residue = atoms.residue_names[atom]
        backbone_donor = name == "N" and residue != "PRO"
        if backbone_donor or name in DONOR_ATOMS.get(residue, ()):
            indices.append(int(atom))
            bonded.append([])
    return indices, bonded


def _acceptors(atoms: _Atoms) -> list[int]:
    has_hydrogens = bool(np.any(atoms.elements == "H"))
    protonated: set[int] = set()
    if has_hydrogens:
        donor_indices, _ = _donors(atoms)
        protonated = set(donor_indices)
    acceptors = []
    for atom in np.flatnonzero(np.isin(atoms.elements, ("N", "O"))).tolist():
        if atoms.elements[atom] == "O":
            acceptors.append(atom)
        elif atoms.names[atom] in NITROGEN_ACCEPTORS.get(atoms.residue_names[atom], ()):
            if atom not in protonated:
                acceptors.append(atom)
    return acceptors


def _within(xyz: np.ndarray, other: np.ndarray, cutoff: float) -> np.ndarray:
    """Return the indices of ``xyz`` rows within ``cutoff`` Å of a row of ``other``."""
    if xyz.size == 0 or other.size == 0:
        return np.zeros(0, dtype=int)
    low = other.min(axis=0) - cutoff
    high = other.max(axis=0) + cutoff
    candidates = np.flatnonzero(np.all((xyz >= low) & (xyz <= high), axis=1))
    near = [
        int(index)
        for index in candidates
        if np.min(np.sum((other - xyz[index]) ** 2, axis=1)) <= cutoff**2
    ]
    return np.asarray(near, dtype=int)


def _subset(atoms: _Atoms, other_xyz: np.ndarray, cutoff: float) -> _Atoms:
    """Return the atoms within ``cutoff`` Å of any point of ``other_xyz``."""
    kept = _within(atoms.xyz, other_xyz, cutoff)
    return _Atoms(
        xyz=atoms.xyz[kept],
        elements=atoms.elements[kept],
        names=[atoms.names[i] for i in kept],
        residue_names=[atoms.residue_names[i] for i in kept],
        residue_labels=[atoms.residue_labels[i] for i in kept],
        residue_index=atoms.residue_index[kept],
    )


def _atom_table(pdb_text: str, label: str) -> _Atoms:
    try:
        structure = gemmi.read_pdb_string(pdb_text)
    except (RuntimeError, ValueError) as error:
        raise EngineError(f"{label}: cannot be read as PDB ({error})") from error
    xyz, elements, names, residue_names, labels, residue_index = [], [], [], [], [], []
    number = 0
    for chain in structure[0]:
        for residue in chain:
            label_text = f"{chain.name}:{str(residue.seqid).strip()}:{residue.name}"
            for atom in residue:
                element = atom.element.name.upper()
                xyz.append(atom.pos.tolist())
                elements.append("H" if element == "D" else element)
                names.append(atom.name)
                residue_names.append(residue.name)
                labels.append(label_text)
                residue_index.append(number)
            number += 1
    if not xyz:
        raise EngineError(f"{label}: contains no atoms")
    return _Atoms(
        xyz=np.asarray(xyz, dtype=float),
        elements=np.asarray(elements),
        names=names,
        residue_names=residue_names,
        residue_labels=labels,
        residue_index=np.asarray(residue_index),
    )
