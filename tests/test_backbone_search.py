"""Tests of the flexible-backbone refinement on Vina's maps, with 1CZY's receptor.

The poses come from the crystal peptide (chain B of 1CZY, PQQATDD), cut back to CB.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from vina import Vina

from peptide_opt.config import build_config
from peptide_opt.engines import backbone_search, peptide_builder
from peptide_opt.engines.vina import GRID_SPACING, ligand_pdbqt, receptor_pdbqt
from peptide_opt.pipeline.site import find_site
from tests.fixtures.docking import CZY_COMPLEX

pytestmark = pytest.mark.slow


def crystal_peptide():
    lines = []
    for line in CZY_COMPLEX.read_text().splitlines():
        if line.startswith("ATOM") and line[21] == "B":
            # Chain B numbers PQQATDD 169-175; the builder numbers residues from 1.
            number = int(line[22:26]) - 168
            lines.append(f"{line[:21]}A{number:4d}{line[26:]}")
    return peptide_builder.from_pdb("\n".join(lines) + "\nEND\n")


@pytest.fixture(scope="module")
def exported(czy_site_receptor):
    """An even-voxel Vina grid with the truncated crystal peptide set, and its maps."""
    site = find_site(czy_site_receptor, build_config({"site_chain": "B"}))
    truncated = peptide_builder.truncate_side_chains(crystal_peptide())
    grid = Vina(sf_name="vina", cpu=2, seed=0, no_refine=True, verbosity=0)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "receptor.pdbqt")
        with open(path, "w") as handle:
            handle.write(receptor_pdbqt(czy_site_receptor.pdb_text))
        grid.set_receptor(path)
    grid.compute_vina_maps(
        center=list(site.center),
        box_size=list(site.size),
        spacing=GRID_SPACING,
        force_even_voxels=True,
    )
    grid.set_ligand_from_string(ligand_pdbqt(truncated, rigid="all").text)
    maps = backbone_search.read_grid_maps(grid)
    model = backbone_search.BackboneModel(truncated, maps)
    xyz = truncated.GetConformer().GetPositions()[model.heavy]
    return grid, maps, model, xyz, truncated


def test_map_energy_equals_vina_score(exported):
    # The crystal pose has no clash between its own atoms, so the model's energy is
    # the map sum alone, which for a rigid ligand is Vina's intermolecular energy.
    # Vina rounds to 0.001 kcal/mol; trilinear interpolation is the same in both.
    grid, maps, model, xyz, _ = exported
    energy, _ = model.energy_and_gradient(maps, xyz[None])
    vina_energy = grid.score()[1]
    assert energy[0] == pytest.approx(vina_energy, abs=0.01)


def test_gradient_matches_finite_differences(exported):
    _, maps, model, xyz, _ = exported
    _, gradient = model.energy_and_gradient(maps, xyz[None])
    step = 1e-5
    for atom in (0, len(xyz) // 2, len(xyz) - 1):
        for axis in range(3):
            moved = xyz.copy()
            moved[atom, axis] += step
            plus, _ = model.energy_and_gradient(maps, moved[None])
            moved[atom, axis] -= 2 * step
            minus, _ = model.energy_and_gradient(maps, moved[None])
            numeric = (plus[0] - minus[0]) / (2 * step)
            assert gradient[0, atom, axis] == pytest.approx(numeric, abs=1e-3)


def test_relax_lowers_energy_and_keeps_bonds(exported):
    _, maps, model, xyz, truncated = exported
    start, _ = model.energy_and_gradient(maps, xyz[None])
    energy, relaxed = backbone_search.relax(model, maps, xyz[None], n_steps=50)
    assert energy[0] < start[0]
    # Every move is a rotation about a bond or a rigid motion, so bond lengths stay
    # those of the start to floating-point precision.
    row = {index: i for i, index in enumerate(model.heavy)}
    for bond in truncated.GetBonds():
        first, second = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        if first not in row or second not in row:
            continue
        before = np.linalg.norm(xyz[row[first]] - xyz[row[second]])
        after = np.linalg.norm(relaxed[0, row[first]] - relaxed[0, row[second]])
        assert after == pytest.approx(before, abs=1e-9)


def test_refine_same_seed_same_result(exported):
    _, maps, model, xyz, _ = exported
    settings = backbone_search.RefinementSettings(n_rounds=3, n_relax_steps=5)
    runs = [
        backbone_search.refine(
            model, maps, xyz[None], settings, np.random.default_rng(seed)
        )
        for seed in (5, 5, 6)
    ]
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_backbone_dihedrals_match_builder(exported):
    _, _, model, xyz, truncated = exported
    measured = backbone_search.backbone_dihedrals(model, xyz)
    expected = peptide_builder.backbone_dihedrals(truncated)
    # The builder leaves the first phi and the last psi undefined (NaN); the
    # refinement measures the last psi to OXT instead.
    for (phi, psi), (phi_expected, psi_expected) in zip(measured[1:], expected[1:]):
        assert phi == pytest.approx(phi_expected, abs=1e-6)
    for (_, psi), (_, psi_expected) in zip(measured[:-1], expected[:-1]):
        assert psi == pytest.approx(psi_expected, abs=1e-6)


def test_xs_types_of_truncated_peptide(exported):
    truncated = exported[4]
    types = backbone_search.xs_types(truncated)
    # PQQATDD cut to CB keeps proline's ring; its charged N-terminus is a donor,
    # and no nitrogen of the peptide is an acceptor.
    assert set(types) == {"C_H", "C_P", "N_D", "O_A"}
