"""Interface contacts: residues within 4 Å and hydrogen bonds, checked independently."""

from __future__ import annotations

import numpy as np
import pytest

from peptide_opt.pipeline import contacts
from peptide_opt.pipeline.contacts import interface_contacts
from tests.fixtures.rescore import CRYSTAL, crystal_peptide_pdb


def _atom_lines(chain: str) -> list[str]:
    return [
        line
        for line in CRYSTAL.read_text().splitlines()
        if line.startswith("ATOM") and line[21] == chain
    ]


def _coordinates(lines: list[str]) -> np.ndarray:
    return np.array([[float(line[c : c + 8]) for c in (30, 38, 46)] for line in lines])


def _pdb_line(serial, name, residue, chain, number, xyz, element) -> str:
    atom_name = name if len(name) == 4 else f" {name:<3}"
    x, y, z = xyz
    return (
        f"ATOM  {serial:5d} {atom_name} {residue:>3} {chain}{number:4d}    "
        f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00          {element:>2}"
    )


@pytest.fixture(scope="module")
def crystal_contacts():
    receptor = "\n".join(_atom_lines("A")) + "\nEND\n"
    peptide = "\n".join(_atom_lines("B")) + "\nEND\n"
    return interface_contacts(receptor, peptide)


def test_contact_residues_match_numpy(crystal_contacts):
    # Independent check: every receptor residue of chain A with a heavy atom within
    # 4 Å of a chain B heavy atom, from the raw PDB columns.
    receptor_lines = _atom_lines("A")
    distances = np.linalg.norm(
        _coordinates(receptor_lines)[:, None, :]
        - _coordinates(_atom_lines("B"))[None, :, :],
        axis=-1,
    )
    near = np.flatnonzero(distances.min(axis=1) <= 4.0)
    expected = []
    for index in near:
        line = receptor_lines[index]
        label = f"A:{int(line[22:26])}:{line[17:20]}"
        if label not in expected:
            expected.append(label)
    assert crystal_contacts.residues == expected


def test_contact_residues_crystal_values(crystal_contacts):
    # 1CZY: the TRAF2 groove residues that line PQQATDD (computed once with the numpy
    # check above and kept here as reference values).
    assert len(crystal_contacts.residues) == 15
    assert crystal_contacts.residues[0] == "A:60:ARG"
    assert "A:62:TYR" in crystal_contacts.residues
    assert "A:135:GLY" in crystal_contacts.residues


def test_hydrogen_bonds_without_hydrogens(crystal_contacts):
    # The crystal has no hydrogens, so only the 3.5 Å donor-acceptor distance applies.
    bonds = crystal_contacts.hydrogen_bonds
    assert all(bond["angle"] is None for bond in bonds)
    assert all(bond["distance"] <= 3.5 for bond in bonds)
    pairs = {
        (
            b["peptide_residue"],
            b["peptide_atom"],
            b["receptor_residue"],
            b["receptor_atom"],
        )
        for b in bonds
    }
    # Backbone-backbone pairs of the beta-strand-like binding mode, both directions.
    assert ("B:170:GLN", "N", "A:135:GLY", "O") in pairs
    assert ("B:170:GLN", "O", "A:135:GLY", "N") in pairs
    # Asp174 OD1 accepts from Arg60 and Tyr62 (the TRAF2 specificity contacts).
    assert ("B:174:ASP", "OD1", "A:60:ARG", "NH2") in pairs
    assert ("B:174:ASP", "OD1", "A:62:TYR", "OH") in pairs
    assert len(bonds) == 12


def test_hydrogen_bond_distance_matches_coordinates(crystal_contacts):
    bond = next(
        b
        for b in crystal_contacts.hydrogen_bonds
        if b["peptide_atom"] == "N" and b["receptor_residue"] == "A:135:GLY"
    )
    donor = next(
        line
        for line in _atom_lines("B")
        if int(line[22:26]) == 170 and line[12:16] == " N  "
    )
    acceptor = next(
        line
        for line in _atom_lines("A")
        if int(line[22:26]) == 135 and line[12:16] == " O  "
    )
    expected = np.linalg.norm(_coordinates([donor])[0] - _coordinates([acceptor])[0])
    assert bond["distance"] == pytest.approx(expected, abs=1e-3)
    assert bond["donor"] == "peptide"


def _donor_acceptor_pair(distance: float, angle_deg: float) -> tuple[str, str]:
    """Return a peptide N-H donor and a receptor O acceptor at a chosen geometry.

    The donor N is at the origin with its H along +x (1.01 Å); the acceptor O lies at
    ``distance`` Å from N, ``angle_deg`` away from the N-H direction.
    """
    theta = np.radians(angle_deg)
    acceptor = distance * np.array([np.cos(theta), np.sin(theta), 0.0])
    peptide = "\n".join(
        [
            _pdb_line(1, "N", "GLY", "A", 1, (0.0, 0.0, 0.0), "N"),
            _pdb_line(2, "H", "GLY", "A", 1, (1.01, 0.0, 0.0), "H"),
            _pdb_line(3, "CA", "GLY", "A", 1, (-0.8, -1.2, 0.0), "C"),
        ]
    )
    receptor = "\n".join(
        [
            _pdb_line(1, "O", "ALA", "B", 9, tuple(acceptor), "O"),
            _pdb_line(2, "C", "ALA", "B", 9, tuple(acceptor + [1.23, 0.0, 0.0]), "C"),
        ]
    )
    return receptor + "\nEND\n", peptide + "\nEND\n"


@pytest.mark.parametrize(
    ("distance", "angle", "expected"),
    [
        (2.9, 0.0, 1),  # linear, short: a hydrogen bond
        (3.5, 29.0, 1),  # at the distance limit, inside the 30° cone
        (3.6, 0.0, 0),  # beyond 3.5 Å
        (2.9, 35.0, 0),  # outside the 30° H-D-A cone
    ],
)
def test_hydrogen_bond_criterion_cases(distance, angle, expected):
    receptor, peptide = _donor_acceptor_pair(distance, angle)
    bonds = interface_contacts(receptor, peptide).hydrogen_bonds
    assert len(bonds) == expected
    if expected:
        assert bonds[0]["angle"] == pytest.approx(angle, abs=0.2)
        assert bonds[0]["donor"] == "peptide"
        assert bonds[0]["receptor_residue"] == "B:9:ALA"


def test_histidine_nitrogen_acceptor_rule():
    # A histidine ring N with a hydrogen donates; without one it accepts.
    peptide = "\n".join(
        [
            _pdb_line(1, "NE2", "HIS", "A", 1, (0.0, 0.0, 0.0), "N"),
            _pdb_line(2, "HE2", "HIS", "A", 1, (1.01, 0.0, 0.0), "H"),
            _pdb_line(3, "ND1", "HIS", "A", 1, (0.0, 2.2, 0.0), "N"),
        ]
    )
    receptor = "\n".join(
        [
            _pdb_line(1, "OG", "SER", "B", 5, (2.9, 0.0, 0.0), "O"),
            _pdb_line(2, "N", "GLY", "B", 6, (0.0, 5.1, 0.0), "N"),
            _pdb_line(3, "H", "GLY", "B", 6, (0.0, 4.09, 0.0), "H"),
        ]
    )
    bonds = interface_contacts(receptor + "\nEND\n", peptide + "\nEND\n").hydrogen_bonds
    roles = {(b["peptide_atom"], b["donor"]) for b in bonds}
    assert ("NE2", "peptide") in roles
    assert ("ND1", "receptor") in roles
    assert len(bonds) == 2


def test_far_peptide_has_no_contacts():
    receptor = _pdb_line(1, "CA", "ALA", "B", 1, (0.0, 0.0, 0.0), "C") + "\nEND\n"
    peptide = _pdb_line(1, "CA", "GLY", "A", 1, (10.0, 0.0, 0.0), "C") + "\nEND\n"
    result = interface_contacts(receptor, peptide)
    assert result.residues == []
    assert result.hydrogen_bonds == []


def test_contacts_with_hydrogens_use_angles(czy_receptor):
    # The prepared receptor and the protonated crystal peptide both carry hydrogens, so
    # every reported bond has an H-D-A angle within the 30° limit.
    result = interface_contacts(czy_receptor.pdb_text, crystal_peptide_pdb())
    assert result.hydrogen_bonds
    assert all(bond["angle"] is not None for bond in result.hydrogen_bonds)
    assert all(bond["angle"] <= contacts.HBOND_ANGLE for bond in result.hydrogen_bonds)
    # Contacts use heavy atoms only, so they equal the crystal's (numbers 1..7 aside).
    assert len(result.residues) == 15
