"""Peptide molecules built with RDKit: protonation, PDB atom names, backbone conformers.

The molecule comes from :func:`rdkit.Chem.MolFromSequence`, which sets PDB residue
information (names, numbers 1..n, chain A) on every heavy atom. Ionizable groups take
their dominant state near pH 7: NH3+ at the N-terminus (NH2+ for proline), COO- at the
C-terminus and on Asp and Glu, NH3+ on Lys, the guanidinium cation on Arg. His, Cys
and Tyr stay neutral. Hydrogens get PDB version 3 names (H, HA, HB2, HB3, HG21, ...),
as PDBFixer writes them.

Backbone conformers are made by setting the phi and psi dihedrals of an embedded
structure, so the ensemble can hold exact secondary-structure states (beta strand,
polyproline II, alpha helix) next to random mixtures of Ramachandran basins.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolTransforms
from rdkit.Geometry import Point3D

from peptide_opt.errors import EngineError, InputError

#: Backbone dihedrals (phi, psi) in degrees of the named states.
BACKBONE_STATES: dict[str, tuple[float, float]] = {
    "beta": (-120.0, 130.0),
    "ppii": (-75.0, 145.0),
    "alpha": (-57.0, -47.0),
}

#: Ramachandran basins of random conformers: (phi, psi) centre in degrees and weight.
#: Peptides bound to proteins are mostly extended, so beta and polyproline II take 80%;
#: alpha-R (15%) and alpha-L (5%) allow turns and helical stretches.
RAMACHANDRAN_BASINS: tuple[tuple[float, float, float], ...] = (
    (-120.0, 130.0, 0.40),
    (-70.0, 145.0, 0.40),
    (-65.0, -40.0, 0.15),
    (60.0, 40.0, 0.05),
)

#: Standard deviation in degrees of phi and psi around a basin centre.
BASIN_SPREAD_DEG = 15.0

#: Minimum distance (Å) between heavy atoms four or more bonds apart in a conformer.
CLASH_DISTANCE = 2.6

MAX_BUILD_ATTEMPTS = 50

#: Side-chain oxygens that carry the carboxylate charge.
CARBOXYLATE_OXYGENS = frozenset({("ASP", "OD2"), ("GLU", "OE2")})


@dataclasses.dataclass(frozen=True)
class BackboneAtoms:
    """Atom indices of one residue's backbone atoms N, CA, C and O."""

    n: int
    ca: int
    c: int
    o: int


def build_peptide(sequence: str) -> Chem.Mol:
    """Build the protonated peptide with hydrogens and PDB names, without coordinates.

    Parameters
    ----------
    sequence
        One-letter codes of the 20 standard amino acids.

    Returns
    -------
    rdkit.Chem.Mol
        The peptide with explicit hydrogens; every atom carries PDB residue information.
    """
    mol = Chem.MolFromSequence(sequence)
    if mol is None:
        raise InputError(f"peptide sequence {sequence!r} could not be built by RDKit")
    mol = Chem.RWMol(mol)
    _ionize(mol, len(sequence))
    mol = mol.GetMol()
    Chem.SanitizeMol(mol)
    mol = Chem.AddHs(mol, addResidueInfo=True)
    _name_hydrogens(mol)
    return mol


def _ionize(mol: Chem.RWMol, n_residues: int) -> None:
    """Set the formal charges of the ionizable groups (states near pH 7)."""
    for atom in mol.GetAtoms():
        info = atom.GetPDBResidueInfo()
        name = info.GetName().strip()
        residue = info.GetResidueName()
        number = info.GetResidueNumber()
        if name == "N" and number == 1:
            atom.SetFormalCharge(1)
        elif (residue, name) in CARBOXYLATE_OXYGENS or (
            name == "OXT" and number == n_residues
        ):
            atom.SetFormalCharge(-1)
        elif (residue, name) == ("LYS", "NZ"):
            atom.SetFormalCharge(1)
        elif residue == "ARG" and name in ("NH1", "NH2"):
            # The guanidinium charge goes on the nitrogen that RDKit drew double-bonded.
            for bond in atom.GetBonds():
                if bond.GetBondType() == Chem.BondType.DOUBLE:
                    atom.SetFormalCharge(1)
        atom.SetNoImplicit(False)
    _check_carboxylates(mol)


def _check_carboxylates(mol: Chem.RWMol) -> None:
    """Make sure each charged carboxylate oxygen is the single-bonded one."""
    for atom in mol.GetAtoms():
        if atom.GetFormalCharge() != -1:
            continue
        bond = atom.GetBonds()[0]
        if bond.GetBondType() == Chem.BondType.DOUBLE:
            # MolFromSequence drew this oxygen as C=O: move the charge to its partner.
            carbon = bond.GetOtherAtom(atom)
            partner = next(
                other
                for other in carbon.GetNeighbors()
                if other.GetAtomicNum() == 8 and other.GetIdx() != atom.GetIdx()
            )
            atom.SetFormalCharge(0)
            partner.SetFormalCharge(-1)


def _name_hydrogens(mol: Chem.Mol) -> None:
    """Give hydrogens PDB version 3 names derived from their parent atom's name.

    The parent name minus its element letter gives the suffix (CB -> HB, NE2 -> HE2).
    Methylene groups number their hydrogens 2, 3 (HB2, HB3), other groups with several
    hydrogens 1, 2, 3 (HG21, HZ1). The N-terminal NH3+ uses H1, H2, H3, a backbone
    amide hydrogen is H.
    """
    for parent in mol.GetAtoms():
        if parent.GetAtomicNum() == 1:
            continue
        hydrogens = [n for n in parent.GetNeighbors() if n.GetAtomicNum() == 1]
        if not hydrogens:
            continue
        parent_info = parent.GetPDBResidueInfo()
        parent_name = parent_info.GetName().strip()
        if parent_name == "N":
            names = ["H"] if len(hydrogens) == 1 else [f"H{i}" for i in (1, 2, 3)]
        else:
            stem = "H" + parent_name[1:]
            if len(hydrogens) == 1:
                names = [stem]
            elif parent.GetAtomicNum() == 6 and len(hydrogens) == 2:
                names = [f"{stem}2", f"{stem}3"]
            else:
                names = [f"{stem}{i}" for i in range(1, len(hydrogens) + 1)]
        for hydrogen, name in zip(hydrogens, names):
            info = Chem.AtomPDBResidueInfo(
                name if len(name) == 4 else f" {name:<3}",
                residueName=parent_info.GetResidueName(),
                residueNumber=parent_info.GetResidueNumber(),
                chainId=parent_info.GetChainId(),
                isHeteroAtom=False,
            )
            hydrogen.SetMonomerInfo(info)


def backbone_atoms(mol: Chem.Mol) -> list[BackboneAtoms]:
    """Return the N, CA, C, O atom indices of each residue, in sequence order."""
    by_residue: dict[int, dict[str, int]] = {}
    for atom in mol.GetAtoms():
        info = atom.GetPDBResidueInfo()
        name = info.GetName().strip()
        if name in ("N", "CA", "C", "O"):
            by_residue.setdefault(info.GetResidueNumber(), {})[name] = atom.GetIdx()
    return [
        BackboneAtoms(**{k.lower(): v for k, v in by_residue[number].items()})
        for number in sorted(by_residue)
    ]


def embed(mol: Chem.Mol, seed: int) -> int:
    """Embed one ETKDG conformer with random seed ``seed``; return its conformer ID."""
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    # Random starting coordinates embed long chains far more reliably than the
    # default eigenvector start (a 21-residue peptide fails without them).
    params.useRandomCoords = True
    conf_id = AllChem.EmbedMolecule(mol, params)
    if conf_id < 0:
        raise EngineError(
            f"RDKit could not embed the peptide ({mol.GetNumAtoms()} atoms) with seed "
            f"{seed}"
        )
    _relax_prolines(mol, conf_id)
    _set_backbone_bond_lengths(mol, conf_id)
    return conf_id


#: Range (degrees) to which :func:`_relax_prolines` restrains each proline's phi. In
#: protein structures, the ring of L-proline keeps phi near -65.
PROLINE_PHI_RANGE = (-70.0, -60.0)
#: MMFF force constant (kcal/mol/rad²) of that phi restraint, and the iteration cap.
PROLINE_PHI_FORCE = 500.0
PROLINE_RELAX_ITERATIONS = 300


def _relax_prolines(mol: Chem.Mol, conf_id: int) -> None:
    """Minimize the conformer with MMFF94, each proline's phi held near -65 degrees.

    ETKDG embeds the pyrrolidine ring with phi anywhere from -165 to +40 degrees (20
    prolines of 5 seeds). The backbone states set every phi except proline's. In the
    5FFG peptide, a proline phi near 0 put two carbonyl oxygens 1.9 Å apart in every
    backbone, so the docking search had no conformer left. A proline at the N-terminus
    has no phi and needs no change.
    """
    residues = backbone_atoms(mol)
    restraints = [
        (residues[index - 1].c, residue.n, residue.ca, residue.c)
        for index, residue in enumerate(residues)
        if index > 0
        and mol.GetAtomWithIdx(residue.ca).GetPDBResidueInfo().GetResidueName() == "PRO"
    ]
    if not restraints:
        return
    properties = AllChem.MMFFGetMoleculeProperties(mol)
    field = AllChem.MMFFGetMoleculeForceField(mol, properties, confId=conf_id)
    if field is None:
        raise EngineError("MMFF94 parameters are missing for the peptide (RDKit)")
    low, high = PROLINE_PHI_RANGE
    for atoms in restraints:
        field.MMFFAddTorsionConstraint(*atoms, False, low, high, PROLINE_PHI_FORCE)
    field.Minimize(maxIts=PROLINE_RELAX_ITERATIONS)


#: Backbone bond lengths (Å) of proteins (Engh and Huber, 1991). ETKDG's embedding
#: leaves them 0.05-0.1 Å off: C-N 1.37-1.45, N-CA 1.41-1.51, C=O up to 1.30 for the
#: 21-residue peptide of 5FFG, seed 37.
PEPTIDE_BOND = 1.329
N_CA_BOND = 1.458
CA_C_BOND = 1.525
C_O_BOND = 1.231


def _set_backbone_bond_lengths(mol: Chem.Mol, conf_id: int) -> None:
    """Set every backbone bond of the conformer to its length in proteins.

    Each change moves the atoms on one side of the bond. Bonds in a ring (proline's
    N-CA) cannot move that way and keep their embedded length.
    """
    conformer = mol.GetConformer(conf_id)
    residues = backbone_atoms(mol)
    bonds = []
    for index, residue in enumerate(residues):
        bonds.append((residue.n, residue.ca, N_CA_BOND))
        bonds.append((residue.ca, residue.c, CA_C_BOND))
        bonds.append((residue.c, residue.o, C_O_BOND))
        if index + 1 < len(residues):
            bonds.append((residue.c, residues[index + 1].n, PEPTIDE_BOND))
    for first, second, length in bonds:
        if mol.GetBondBetweenAtoms(first, second).IsInRing():
            continue
        rdMolTransforms.SetBondLength(conformer, first, second, length)


def set_backbone(
    mol: Chem.Mol, conf_id: int, phi_psi: list[tuple[float, float]]
) -> None:
    """Set each residue's phi and psi (degrees) and every omega to 180 (trans).

    The first residue has no phi, so its entry's phi is unused; the last residue's psi
    is measured to OXT. Proline's phi is fixed by its ring and is left as embedded.
    """
    conformer = mol.GetConformer(conf_id)
    residues = backbone_atoms(mol)
    oxt = next(
        atom.GetIdx()
        for atom in mol.GetAtoms()
        if atom.GetPDBResidueInfo().GetName().strip() == "OXT"
    )
    for index, residue in enumerate(residues):
        phi, psi = phi_psi[index]
        if index > 0:
            previous = residues[index - 1]
            rdMolTransforms.SetDihedralDeg(
                conformer, previous.ca, previous.c, residue.n, residue.ca, 180.0
            )
            if not mol.GetAtomWithIdx(residue.n).IsInRing():
                rdMolTransforms.SetDihedralDeg(
                    conformer, previous.c, residue.n, residue.ca, residue.c, phi
                )
        # The C-terminal OXT takes the place of the next residue's N.
        following_n = residues[index + 1].n if index < len(residues) - 1 else oxt
        rdMolTransforms.SetDihedralDeg(
            conformer, residue.n, residue.ca, residue.c, following_n, psi
        )


def backbone_dihedrals(mol: Chem.Mol, conf_id: int = -1) -> list[tuple[float, float]]:
    """Return each residue's (phi, psi) in degrees; NaN where undefined."""
    conformer = mol.GetConformer(conf_id)
    residues = backbone_atoms(mol)
    angles = []
    for index, residue in enumerate(residues):
        phi = psi = float("nan")
        if index > 0:
            previous = residues[index - 1]
            phi = rdMolTransforms.GetDihedralDeg(
                conformer, previous.c, residue.n, residue.ca, residue.c
            )
        if index < len(residues) - 1:
            psi = rdMolTransforms.GetDihedralDeg(
                conformer, residue.n, residue.ca, residue.c, residues[index + 1].n
            )
        angles.append((phi, psi))
    return angles


#: Atoms that stay rigid when the backbone torsions are frozen: the backbone, CB, and
#: the proline ring. A clash among them cannot be resolved by the docking search.
RIGID_ATOM_NAMES = frozenset({"N", "CA", "C", "O", "OXT", "CB"})


def rigid_heavy_atoms(mol: Chem.Mol) -> np.ndarray:
    """Return the indices of the heavy atoms that stay rigid with a frozen backbone."""
    indices = []
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() == 1:
            continue
        info = atom.GetPDBResidueInfo()
        if info.GetName().strip() in RIGID_ATOM_NAMES or info.GetResidueName() == "PRO":
            indices.append(atom.GetIdx())
    return np.array(indices)


def has_clash(
    mol: Chem.Mol,
    conf_id: int,
    atoms: np.ndarray,
    min_distance: float = CLASH_DISTANCE,
) -> bool:
    """Return True when two ``atoms`` four or more bonds apart are closer than
    ``min_distance`` (Å)."""
    xyz = mol.GetConformer(conf_id).GetPositions()[atoms]
    topological = Chem.GetDistanceMatrix(mol)[np.ix_(atoms, atoms)]
    distance = np.linalg.norm(xyz[:, None, :] - xyz[None, :, :], axis=-1)
    close = (distance < min_distance) & (topological >= 4)
    return bool(close.any())


def sample_basins(
    n_residues: int, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Draw each residue's (phi, psi) in degrees from :data:`RAMACHANDRAN_BASINS`."""
    weights = np.array([basin[2] for basin in RAMACHANDRAN_BASINS])
    choices = rng.choice(
        len(RAMACHANDRAN_BASINS), size=n_residues, p=weights / weights.sum()
    )
    angles = []
    for choice in choices:
        phi, psi, _ = RAMACHANDRAN_BASINS[choice]
        noise = rng.normal(0.0, BASIN_SPREAD_DEG, size=2)
        angles.append((phi + noise[0], psi + noise[1]))
    return angles


def with_backbone(
    mol: Chem.Mol,
    phi_psi: list[tuple[float, float]],
    min_distance: float = CLASH_DISTANCE,
) -> Chem.Mol | None:
    """Return a copy of ``mol`` whose first conformer has the given backbone.

    Returns None when two rigid atoms (:func:`rigid_heavy_atoms`) come closer than
    ``min_distance`` (Å). Side chains beyond CB keep their embedded geometry and may
    clash; the docking search moves them, so they are not checked.
    """
    copy = Chem.Mol(mol, confId=mol.GetConformer().GetId())
    conf_id = copy.GetConformer().GetId()
    set_backbone(copy, conf_id, phi_psi)
    if has_clash(copy, conf_id, rigid_heavy_atoms(copy), min_distance):
        return None
    return copy


def backbone_ensemble(
    mol: Chem.Mol, n_random: int, rng: np.random.Generator
) -> list[tuple[str, Chem.Mol]]:
    """Return labelled copies of ``mol`` with the named and ``n_random`` backbones.

    Parameters
    ----------
    mol
        The peptide with one embedded conformer.
    n_random
        Number of conformers whose residues each draw a Ramachandran basin.
    rng
        Source of the random backbones; a seeded generator gives the same ensemble.

    Returns
    -------
    list of (str, rdkit.Chem.Mol)
        Labels ``beta``, ``ppii``, ``alpha``, ``random-1`` ... and the molecules, each
        with one conformer. A random backbone that clashes is drawn again, at most 50
        times per conformer.
    """
    n_residues = len(backbone_atoms(mol))
    ensemble = []
    for label, angles in BACKBONE_STATES.items():
        conformer = with_backbone(mol, [angles] * n_residues)
        if conformer is not None:
            ensemble.append((label, conformer))
    for number in range(1, n_random + 1):
        for _ in range(MAX_BUILD_ATTEMPTS):
            conformer = with_backbone(mol, sample_basins(n_residues, rng))
            if conformer is not None:
                ensemble.append((f"random-{number}", conformer))
                break
    return ensemble


def to_pdb(mol: Chem.Mol, conf_id: int = -1) -> str:
    """Return the conformer as PDB text: ATOM records grouped by residue, TER, END.

    Within a residue the heavy atoms come first in builder order, then the hydrogens.
    """
    xyz = mol.GetConformer(conf_id).GetPositions()

    def order(atom: Chem.Atom) -> tuple[int, int, int]:
        info = atom.GetPDBResidueInfo()
        return info.GetResidueNumber(), atom.GetAtomicNum() == 1, atom.GetIdx()

    lines = []
    last = None
    for serial, atom in enumerate(sorted(mol.GetAtoms(), key=order), start=1):
        info = atom.GetPDBResidueInfo()
        name = info.GetName().strip()
        field = name if len(name) == 4 else f" {name:<3}"
        x, y, z = xyz[atom.GetIdx()]
        last = info
        lines.append(
            f"ATOM  {serial:5d} {field} {info.GetResidueName():>3} "
            f"{info.GetChainId() or 'A'}{info.GetResidueNumber():4d}    "
            f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00          {atom.GetSymbol():>2}"
        )
    if last is not None:
        lines.append(
            f"TER   {len(lines) + 1:5d}      {last.GetResidueName():>3} "
            f"{last.GetChainId() or 'A'}{last.GetResidueNumber():4d}"
        )
    lines.append("END")
    return "\n".join(lines) + "\n"


def rebuild_hydrogens(mol: Chem.Mol) -> Chem.Mol:
    """Return ``mol`` with every hydrogen placed anew from its heavy-atom coordinates.

    The atom order is the one :func:`build_peptide` produces for the same sequence.
    """
    heavy = Chem.RemoveHs(mol)
    rebuilt = Chem.AddHs(heavy, addCoords=True, addResidueInfo=True)
    _name_hydrogens(rebuilt)
    return rebuilt


THREE_TO_ONE = {
    "ALA": "A",
    "ARG": "R",
    "ASN": "N",
    "ASP": "D",
    "CYS": "C",
    "GLN": "Q",
    "GLU": "E",
    "GLY": "G",
    "HIS": "H",
    "ILE": "I",
    "LEU": "L",
    "LYS": "K",
    "MET": "M",
    "PHE": "F",
    "PRO": "P",
    "SER": "S",
    "THR": "T",
    "TRP": "W",
    "TYR": "Y",
    "VAL": "V",
}


def sequence_of(pdb_text: str) -> str:
    """Return the one-letter sequence of a peptide's PDB text, by residue number."""
    return _read_pdb(pdb_text)[0]


def _read_pdb(
    pdb_text: str,
) -> tuple[str, dict[tuple[int, str], tuple[float, float, float]]]:
    """Return the sequence and the coordinates by (residue number, atom name)."""
    coordinates: dict[tuple[int, str], tuple[float, float, float]] = {}
    residues: dict[int, str] = {}
    for line in pdb_text.splitlines():
        if not line.startswith(("ATOM  ", "HETATM")):
            continue
        number = int(line[22:26])
        residues[number] = line[17:20].strip()
        coordinates[(number, line[12:16].strip())] = (
            float(line[30:38]),
            float(line[38:46]),
            float(line[46:54]),
        )
    try:
        sequence = "".join(THREE_TO_ONE[residues[n]] for n in sorted(residues))
    except KeyError as error:
        raise InputError(
            f"peptide PDB has a non-standard residue {error.args[0]}"
        ) from None
    return sequence, coordinates


def from_pdb(pdb_text: str) -> Chem.Mol:
    """Rebuild a peptide from PDB text written by :func:`to_pdb` (or any PDB of it).

    The sequence comes from the residue names, heavy-atom coordinates from the matching
    residue number and atom name, and hydrogens are placed anew.
    """
    sequence, coordinates = _read_pdb(pdb_text)
    heavy = Chem.RemoveHs(build_peptide(sequence))
    conformer = Chem.Conformer(heavy.GetNumAtoms())
    for atom in heavy.GetAtoms():
        info = atom.GetPDBResidueInfo()
        key = (info.GetResidueNumber(), info.GetName().strip())
        if key not in coordinates:
            raise InputError(
                f"peptide PDB lacks atom {key[1]} of residue {key[0]} "
                f"({info.GetResidueName()})"
            )
        conformer.SetAtomPosition(atom.GetIdx(), Point3D(*coordinates[key]))
    heavy.AddConformer(conformer, assignId=True)
    return rebuild_hydrogens(heavy)


#: Residues that keep their side chain in :func:`truncate_side_chains`: glycine has
#: none beyond CA and proline's ring is part of the backbone.
KEPT_SIDE_CHAINS = frozenset({"GLY", "PRO"})


def truncate_side_chains(mol: Chem.Mol) -> Chem.Mol:
    """Return the peptide with every side chain cut back to CB (an alanine scan).

    Glycine and proline are kept. The backbone coordinates of ``mol``'s first
    conformer are kept, and hydrogens are placed anew. Side-chain charges go with the
    side chains; the terminal charges stay.
    """
    editable = Chem.RWMol(Chem.RemoveHs(mol))
    doomed = []
    for atom in editable.GetAtoms():
        info = atom.GetPDBResidueInfo()
        if info.GetResidueName() in KEPT_SIDE_CHAINS:
            continue
        if info.GetName().strip() not in RIGID_ATOM_NAMES:
            doomed.append(atom.GetIdx())
        else:
            info.SetResidueName("ALA")
    for index in sorted(doomed, reverse=True):
        editable.RemoveAtom(index)
    truncated = editable.GetMol()
    for atom in truncated.GetAtoms():
        atom.SetNoImplicit(False)
        atom.SetNumExplicitHs(0)
    Chem.SanitizeMol(truncated)
    truncated = Chem.AddHs(truncated, addCoords=True, addResidueInfo=True)
    _name_hydrogens(truncated)
    return truncated
