"""Side-chain placement on a fixed peptide backbone by steric fit to the receptor.

A docked backbone comes with side chains in the rotamers of its template conformer,
which often run into the receptor. :func:`pack_side_chains` picks, residue by residue,
the staggered rotamer (chi angles from -60, 60 and 180 degrees) with the smallest
overlap with receptor heavy atoms and the rest of the peptide. The result is a start
for AutoDock Vina's local optimization, which then moves every torsion freely.
"""

from __future__ import annotations

import itertools

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdMolTransforms
from scipy.spatial import cKDTree

#: Chi dihedrals of each residue as PDB atom names (IUPAC-IUB 1970 definitions).
CHI_ATOMS: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "ARG": (
        ("N", "CA", "CB", "CG"),
        ("CA", "CB", "CG", "CD"),
        ("CB", "CG", "CD", "NE"),
        ("CG", "CD", "NE", "CZ"),
    ),
    "ASN": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "OD1")),
    "ASP": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "OD1")),
    "CYS": (("N", "CA", "CB", "SG"),),
    "GLN": (
        ("N", "CA", "CB", "CG"),
        ("CA", "CB", "CG", "CD"),
        ("CB", "CG", "CD", "OE1"),
    ),
    "GLU": (
        ("N", "CA", "CB", "CG"),
        ("CA", "CB", "CG", "CD"),
        ("CB", "CG", "CD", "OE1"),
    ),
    "HIS": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "ND1")),
    "ILE": (("N", "CA", "CB", "CG1"), ("CA", "CB", "CG1", "CD1")),
    "LEU": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "LYS": (
        ("N", "CA", "CB", "CG"),
        ("CA", "CB", "CG", "CD"),
        ("CB", "CG", "CD", "CE"),
        ("CG", "CD", "CE", "NZ"),
    ),
    "MET": (
        ("N", "CA", "CB", "CG"),
        ("CA", "CB", "CG", "SD"),
        ("CB", "CG", "SD", "CE"),
    ),
    "PHE": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "SER": (("N", "CA", "CB", "OG"),),
    "THR": (("N", "CA", "CB", "OG1"),),
    "TRP": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "TYR": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "VAL": (("N", "CA", "CB", "CG1"),),
}

#: Staggered values (degrees) tried for chi1 and chi2; chi3 tries the same three,
#: chi4 stays extended (180), which keeps Lys and Arg at 27 rotamers.
STAGGERED = (-60.0, 180.0, 60.0)

#: Heavy atoms closer than this (Å) overlap; the penalty grows with the square of the
#: overlap. 3.3 Å is about the sum of two carbon radii (1.9 Å) less 0.5 Å of contact.
CONTACT_DISTANCE = 3.3

N_PASSES = 2

#: Penalty (Å^2 per Å) of a side-chain atom outside the docking box.
OUTSIDE_WEIGHT = 100.0


def pack_side_chains(
    mol: Chem.Mol,
    receptor_xyz: np.ndarray,
    box: tuple[np.ndarray, np.ndarray] | None = None,
    conf_id: int = -1,
) -> float:
    """Set each side chain of ``mol`` to its best-fitting staggered rotamer, in place.

    Parameters
    ----------
    mol
        Peptide with PDB residue information; its backbone stays where it is.
    receptor_xyz
        Receptor heavy-atom coordinates (n, 3) in Å.
    box
        Lower and upper corners (Å) of the docking box. Atoms outside it add
        ``OUTSIDE_WEIGHT`` per Å, because Vina rejects a ligand that leaves its grid.
    conf_id
        Conformer to change.

    Returns
    -------
    float
        The remaining overlap penalty (Å^2), summed over side-chain heavy atoms.
    """
    conformer = mol.GetConformer(conf_id)
    receptor_tree = cKDTree(receptor_xyz)
    residues = _residue_atoms(mol)
    heavy = np.array([a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1])
    topological = Chem.GetDistanceMatrix(mol)
    total = 0.0
    for _ in range(N_PASSES):
        total = 0.0
        for names in residues:
            chis = CHI_ATOMS.get(names["_resname"])
            if not chis:
                continue
            moving = _side_chain_heavy_atoms(mol, names)
            others = np.setdiff1d(heavy, moving)
            # Peptide atoms three or fewer bonds from a moving atom are bonded
            # neighbours, not contacts.
            near = topological[np.ix_(moving, others)].min(axis=0) <= 3
            others = others[~near]
            best_penalty, best_angles = np.inf, None
            for angles in _rotamers(len(chis)):
                for chi, angle in zip(chis, angles):
                    indices = [names[atom] for atom in chi]
                    rdMolTransforms.SetDihedralDeg(conformer, *indices, angle)
                penalty = _overlap(conformer, moving, others, receptor_tree, box)
                if penalty < best_penalty:
                    best_penalty, best_angles = penalty, angles
            for chi, angle in zip(chis, best_angles):
                rdMolTransforms.SetDihedralDeg(
                    conformer, *[names[a] for a in chi], angle
                )
            total += best_penalty
    return total


def _rotamers(n_chi: int):
    values = [STAGGERED, STAGGERED, STAGGERED, (180.0,)][:n_chi]
    return itertools.product(*values)


def _residue_atoms(mol: Chem.Mol) -> list[dict[str, int | str]]:
    by_number: dict[int, dict[str, int | str]] = {}
    for atom in mol.GetAtoms():
        info = atom.GetPDBResidueInfo()
        entry = by_number.setdefault(info.GetResidueNumber(), {})
        entry["_resname"] = info.GetResidueName()
        entry[info.GetName().strip()] = atom.GetIdx()
    return [by_number[number] for number in sorted(by_number)]


def _side_chain_heavy_atoms(mol: Chem.Mol, names: dict[str, int | str]) -> np.ndarray:
    fixed = {"N", "CA", "C", "O", "OXT", "CB", "_resname"}
    return np.array(
        [
            index
            for name, index in names.items()
            if name not in fixed and mol.GetAtomWithIdx(int(index)).GetAtomicNum() > 1
        ],
        dtype=int,
    )


def _overlap(
    conformer: Chem.Conformer,
    moving: np.ndarray,
    others: np.ndarray,
    receptor_tree: cKDTree,
    box: tuple[np.ndarray, np.ndarray] | None,
) -> float:
    xyz = conformer.GetPositions()
    moving_xyz = xyz[moving]
    penalty = 0.0
    if box is not None:
        outside = np.clip(box[0] - moving_xyz, 0, None) + np.clip(
            moving_xyz - box[1], 0, None
        )
        penalty += OUTSIDE_WEIGHT * float(outside.sum())
    for neighbours, point in zip(
        receptor_tree.query_ball_point(moving_xyz, CONTACT_DISTANCE), moving_xyz
    ):
        if neighbours:
            distance = np.linalg.norm(receptor_tree.data[neighbours] - point, axis=1)
            penalty += float(np.sum((CONTACT_DISTANCE - distance) ** 2))
    if len(others):
        distance = np.linalg.norm(
            moving_xyz[:, None, :] - xyz[others][None, :, :], axis=2
        )
        penalty += float(np.sum(np.clip(CONTACT_DISTANCE - distance, 0.0, None) ** 2))
    return penalty
