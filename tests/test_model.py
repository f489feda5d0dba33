"""Tests of the peptide builder and the ``model`` step."""

from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem

from peptide_opt.engines import peptide_builder
from peptide_opt.errors import InputError
from peptide_opt.pipeline.model import build_peptide_model


def atom_names(mol, residue_number):
    return {
        atom.GetPDBResidueInfo().GetName().strip()
        for atom in mol.GetAtoms()
        if atom.GetPDBResidueInfo().GetResidueNumber() == residue_number
    }


def test_model_charges_at_neutral_ph():
    # PQQATDD: NH3+ (proline NH2+) at the N-terminus, COO- on both Asp and the
    # C-terminus: +1 - 3 = -2.
    model = build_peptide_model("PQQATDD", seed=37)
    assert Chem.GetFormalCharge(model.mol) == -2


def test_model_charges_of_basic_residues():
    # N-terminus +1, Lys +1, Arg +1, C-terminus -1; His stays neutral.
    model = build_peptide_model("GKRHG", seed=1)
    assert Chem.GetFormalCharge(model.mol) == 2


def test_model_hydrogen_names():
    mol = build_peptide_model("PQQATDD", seed=37).mol
    assert {"H1", "H2", "HA", "HB2", "HB3", "HG2", "HG3", "HD2", "HD3"} <= atom_names(
        mol, 1
    )
    assert {"H", "HE21", "HE22"} <= atom_names(mol, 2)
    assert {"HB1", "HB2", "HB3"} <= atom_names(mol, 4)
    assert {"HG1", "HG21", "HG22", "HG23"} <= atom_names(mol, 5)
    assert "OXT" in atom_names(mol, 7)


def test_model_pdb_text_layout():
    mol = build_peptide_model("PQQATDD", seed=37).mol
    lines = [
        line
        for line in peptide_builder.to_pdb(mol).splitlines()
        if line.startswith("ATOM")
    ]
    assert len(lines) == mol.GetNumAtoms()
    assert {line[21] for line in lines} == {"A"}
    numbers = [int(line[22:26]) for line in lines]
    assert numbers == sorted(numbers)
    assert sorted(set(numbers)) == list(range(1, 8))
    assert lines[0][12:16] == " N  "
    assert lines[0][17:20] == "PRO"


def test_model_same_seed_same_coordinates():
    first = build_peptide_model("PQQATDD", seed=5).mol.GetConformer().GetPositions()
    second = build_peptide_model("PQQATDD", seed=5).mol.GetConformer().GetPositions()
    np.testing.assert_array_equal(first, second)


def test_pdb_round_trip_keeps_heavy_atoms():
    mol = build_peptide_model("GNGVPNLRGD", seed=3).mol
    rebuilt = peptide_builder.from_pdb(peptide_builder.to_pdb(mol))
    heavy = [atom.GetIdx() for atom in mol.GetAtoms() if atom.GetAtomicNum() > 1]
    assert rebuilt.GetNumAtoms() == mol.GetNumAtoms()
    # PDB coordinates carry three decimals: at most 0.0005 Å of rounding.
    np.testing.assert_allclose(
        rebuilt.GetConformer().GetPositions()[heavy],
        mol.GetConformer().GetPositions()[heavy],
        atol=6e-4,
    )


def test_backbone_states_set_exactly():
    mol = build_peptide_model("AQQATDA", seed=2).mol
    ensemble = dict(peptide_builder.backbone_ensemble(mol, 0, np.random.default_rng(0)))
    for label in ("beta", "ppii", "alpha"):
        angles = peptide_builder.backbone_dihedrals(ensemble[label])
        phi, psi = peptide_builder.BACKBONE_STATES[label]
        # Residue 1 has no phi and residue 7 no psi to the next residue.
        for residue_phi, residue_psi in angles[1:-1]:
            assert residue_phi == pytest.approx(phi, abs=0.01)
            assert residue_psi == pytest.approx(psi, abs=0.01)


def test_backbone_ensemble_is_seeded():
    mol = build_peptide_model("PQQATDD", seed=37).mol
    first = peptide_builder.backbone_ensemble(mol, 4, np.random.default_rng(11))
    second = peptide_builder.backbone_ensemble(mol, 4, np.random.default_rng(11))
    assert [label for label, _ in first] == ["beta", "ppii", "alpha"] + [
        f"random-{i}" for i in range(1, 5)
    ]
    for (_, a), (_, b) in zip(first, second):
        np.testing.assert_array_equal(
            a.GetConformer().GetPositions(), b.GetConformer().GetPositions()
        )


def test_truncation_keeps_glycine_and_proline():
    mol = build_peptide_model("PQGD", seed=1).mol
    truncated = peptide_builder.truncate_side_chains(mol)
    residues = [
        truncated.GetAtomWithIdx(i).GetPDBResidueInfo().GetResidueName()
        for i in range(truncated.GetNumAtoms())
    ]
    assert set(residues) == {"PRO", "ALA", "GLY"}
    assert "CG" not in atom_names(truncated, 2)
    assert "CG" in atom_names(truncated, 1)


@pytest.mark.parametrize(
    ("sequence", "message"),
    [
        ("P", "peptide length must be between 2 and 50 residues, got 1"),
        ("A" * 51, "peptide length must be between 2 and 50 residues, got 51"),
        ("PQXAT", "peptide residue 'X' at position 3 is not one of the 20 standard"),
    ],
)
def test_model_rejects_bad_sequence(sequence, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        build_peptide_model(sequence, seed=1)


def test_model_backbone_bond_lengths():
    # The builder sets the backbone bonds to their lengths in proteins (Engh and
    # Huber): C-N 1.329, N-CA 1.458, CA-C 1.525 and C=O 1.231 Å. Proline's N-CA is in
    # its ring and keeps the embedded length. 0.001 Å is the rounding of the lengths.
    mol = build_peptide_model("GNGVPNLRGDLQVLGQRVGRT", seed=37).mol
    xyz = mol.GetConformer().GetPositions()
    residues = peptide_builder.backbone_atoms(mol)

    def length(first: int, second: int) -> float:
        return float(np.linalg.norm(xyz[first] - xyz[second]))

    for index, residue in enumerate(residues):
        name = mol.GetAtomWithIdx(residue.ca).GetPDBResidueInfo().GetResidueName()
        if name != "PRO":
            assert length(residue.n, residue.ca) == pytest.approx(1.458, abs=0.001)
        assert length(residue.ca, residue.c) == pytest.approx(1.525, abs=0.001)
        assert length(residue.c, residue.o) == pytest.approx(1.231, abs=0.001)
        if index > 0:
            previous = residues[index - 1]
            assert length(previous.c, residue.n) == pytest.approx(1.329, abs=0.001)


def test_model_proline_phi_and_backbone_ensemble():
    # ETKDG embedded PRO5 of the 5FFG peptide with phi = +9 degrees (seed 37), which
    # left every backbone of the docking ensemble with two carbonyl oxygens 1.9 Å
    # apart. The builder restrains proline's phi to -70..-60 during an MMFF
    # minimization, and 5 degrees on each side allow for the restraint's give.
    from rdkit.Chem import rdMolTransforms

    mol = build_peptide_model("GNGVPNLRGDLQVLGQRVGRT", seed=37).mol
    residues = peptide_builder.backbone_atoms(mol)
    phi = rdMolTransforms.GetDihedralDeg(
        mol.GetConformer(), residues[3].c, residues[4].n, residues[4].ca, residues[4].c
    )
    assert -75.0 <= phi <= -55.0
    # 3 named states and 9 random backbones, each free of clashes.
    ensemble = peptide_builder.backbone_ensemble(mol, 9, np.random.default_rng(37))
    assert len(ensemble) >= 10
