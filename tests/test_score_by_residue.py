"""Scoring a peptide residue by residue, the path of peptides too large for one ligand.

Vina 1.2.7 tabulates every intramolecular atom pair of a ligand (about 12 GB for the
21-residue peptide of 5FFG), so the ``score`` step scores large peptides as a sum of
rigid residues. These tests compare that sum with Vina's own score of the whole peptide
on 1CZY's crystal peptide, which is small enough for both.
"""

from __future__ import annotations

import copy
import math

import pytest

from peptide_opt.engines import peptide_builder, vina

pytestmark = pytest.mark.slow

#: Vina's ``score()`` returns each energy rounded to 3 decimals. The residue path adds
#: 7 rounded residue energies and the whole path rounds once, so the two may differ by
#: up to 8 half-units of the last decimal (0.004 kcal/mol) before the torsional factor,
#: which only shrinks the difference.
ROUNDING_TOLERANCE = 0.004


def whole_ligand_score(grid, mol) -> list[float]:
    """Vina's score of ``mol`` set as one flexible ligand, without optimization."""
    vina._set_ligand(grid, vina.ligand_pdbqt(mol, rigid="none").text)
    return list(grid.score())


@pytest.fixture(scope="module")
def crystal_mol(crystal_pose):
    return peptide_builder.from_pdb(crystal_pose.peptide_pdb)


@pytest.fixture(scope="module")
def czy_grid(vina_engine, czy_receptor, czy_site):
    return vina_engine.grid(czy_receptor, czy_site, cores=2, seed=None)


def test_torsion_count_matches_vina(czy_grid, crystal_mol):
    # Vina's affinity is intermolecular / (1 + 0.05846 * N). For PQQATDD, Vina counts
    # N = 24.5: Meeko writes 25 torsions, and the bond from Thr5's CB to its hydroxyl
    # oxygen, a terminal heavy atom, counts half. The whole-ligand score gives it back.
    total, intermolecular = whole_ligand_score(czy_grid, crystal_mol)[:2]
    implied = (intermolecular / total - 1.0) / vina.TORSION_WEIGHT
    ligand = vina.ligand_pdbqt(crystal_mol, rigid="none")
    assert vina.vina_torsion_count(crystal_mol, ligand) == 24.5
    assert implied == pytest.approx(24.5, abs=0.05)


def test_residue_sum_equals_whole_score(czy_grid, crystal_mol):
    # The cut runs through the peptide bonds, so every atom keeps its Vina type and
    # the residues' grid energies add up to the whole peptide's.
    whole = whole_ligand_score(czy_grid, crystal_mol)[0]
    by_residue = vina.score_by_residue(czy_grid, crystal_mol)
    assert by_residue == pytest.approx(whole, abs=ROUNDING_TOLERANCE)
    assert whole < -3.0  # the crystal pose binds: -4.28 kcal/mol on these maps


def test_large_peptide_scored_by_residue(
    monkeypatch, vina_engine, czy_receptor, czy_site, crystal_pose
):
    # With the threshold at 0 MB, PQQATDD counts as too large for one ligand: the pose
    # is minimized with OpenMM and scored by residue, and its affinity is Vina's score
    # of the minimized coordinates that the pose now contains.
    monkeypatch.setattr(vina, "WHOLE_LIGAND_MEMORY_MB", 0.0)
    pose = copy.deepcopy(crystal_pose)
    vina_engine.score(czy_receptor, czy_site, [pose], cores=2)
    assert pose.detail["scoring"] == vina.SCORING_BY_RESIDUE
    # The result's warnings carry this, so a user sees that Vina did not optimize.
    assert "scored by Vina residue by residue" in pose.detail["warning"]
    assert math.isfinite(pose.affinity)
    grid = vina_engine.grid(czy_receptor, czy_site, cores=2, seed=None)
    minimized = peptide_builder.from_pdb(pose.peptide_pdb)
    whole = whole_ligand_score(grid, minimized)[0]
    assert pose.affinity == pytest.approx(whole, abs=ROUNDING_TOLERANCE)
    # Minimization keeps the docked backbone (restrained) and the sequence.
    assert peptide_builder.sequence_of(pose.peptide_pdb) == "PQQATDD"
    assert pose.affinity < -3.0


def test_score_by_residue_reproducible(
    monkeypatch, vina_engine, czy_receptor, czy_site, crystal_pose
):
    # A job run again with the same inputs must report the same affinities. The OpenMM
    # minimization is the step that could differ, through multithreaded force sums.
    # Two poses with cores=2 are minimized in two processes, one with cores=1 here.
    monkeypatch.setattr(vina, "WHOLE_LIGAND_MEMORY_MB", 0.0)
    poses = [copy.deepcopy(crystal_pose) for _ in range(3)]
    vina_engine.score(czy_receptor, czy_site, poses[:2], cores=2)
    vina_engine.score(czy_receptor, czy_site, poses[2:], cores=1)
    for pose in poses[1:]:
        assert pose.affinity == poses[0].affinity
        assert pose.peptide_pdb == poses[0].peptide_pdb


def test_small_peptide_optimized_by_vina(
    vina_engine, czy_receptor, czy_site, crystal_pose
):
    pose = copy.deepcopy(crystal_pose)
    vina_engine.score(czy_receptor, czy_site, [pose], cores=2)
    assert pose.detail["scoring"] == vina.SCORING_WHOLE
    assert pose.affinity < -4.0  # -5.12 kcal/mol after Vina's optimization
