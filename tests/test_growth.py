"""Growth of long peptides from a placed segment, on synthetic maps.

The maps here are made by hand, so each check can state its expected value: zero
maps leave only the clash penalty, and a repulsive slab shows whether growth steers
around it.
"""

from __future__ import annotations

import numpy as np
import pytest

from peptide_opt.engines import backbone_search, growth, peptide_builder

SEQUENCE = "GNGVPNLRGDLQ"


def flat_maps(value: float = 0.0, spacing: float = 0.5, edge: float = 80.0):
    """Maps of every peptide type, ``value`` everywhere, centred on the origin."""
    n = int(edge / spacing) + 1
    types = backbone_search.PEPTIDE_XS_TYPES
    return backbone_search.GridMaps(
        origin=np.full(3, -edge / 2),
        spacing=spacing,
        values=np.full((len(types), n, n, n), value),
        type_index={name: i for i, name in enumerate(types)},
    )


@pytest.fixture(scope="module")
def chain():
    mol = peptide_builder.build_peptide(SEQUENCE)
    peptide_builder.embed(mol, 7)
    peptide_builder.set_backbone(
        mol,
        mol.GetConformer().GetId(),
        [peptide_builder.BACKBONE_STATES["ppii"]] * len(SEQUENCE),
    )
    truncated = peptide_builder.truncate_side_chains(mol)
    maps = flat_maps()
    model = backbone_search.BackboneModel(
        truncated, maps, clash_weight=50.0, clash_distance=2.8
    )
    xyz = truncated.GetConformer().GetPositions()[model.heavy]
    # Centre the chain on the maps.
    return growth.GrowthModel(model, truncated), xyz - xyz.mean(axis=0)


def test_segment_starts_cover_the_peptide():
    # 21 residues in segments of 7: the last starts at 14, and six segments keep
    # neighbouring starts at most 3 apart.
    assert growth.segment_starts(21, 7, 3) == [0, 3, 6, 8, 11, 14]
    assert growth.segment_starts(7, 7, 3) == [0]
    for n_residues in range(8, 40):
        starts = growth.segment_starts(n_residues, 7, 3)
        assert starts[0] == 0
        assert starts[-1] == n_residues - 7
        assert max(np.diff(starts)) <= 3


@pytest.mark.parametrize("toward_c", [True, False])
def test_set_torsion_moves_one_side(chain, toward_c):
    grower, xyz = chain
    residue = 5
    torsions = [grower.psi(residue, toward_c), grower.phi(residue, toward_c)]
    for torsion in torsions:
        target = np.radians(np.array([-100.0, 35.0, 170.0]))
        poses = growth.set_torsion(np.repeat(xyz[None], 3, axis=0), torsion, target)
        assert growth.dihedrals(poses, torsion.quad) == pytest.approx(target, abs=1e-9)
        still = ~torsion.moving
        assert np.abs(poses[:, still] - xyz[still]).max() < 1e-9
        # Turning keeps every bond length: compare all distances within each side.
        moved = torsion.moving
        before = np.linalg.norm(xyz[moved][:, None] - xyz[moved][None], axis=-1)
        turned = poses[0][moved]
        after = np.linalg.norm(turned[:, None] - turned[None], axis=-1)
        assert after == pytest.approx(before, abs=1e-9)
        # The moving side is the growing end: residues after (toward C) or before.
        residues = set(grower.residue_of_row[moved])
        assert all(r >= residue for r in residues) if toward_c else all(
            r <= residue for r in residues
        )


def test_edge_penalty_raises_the_faces_only():
    maps = flat_maps(edge=20.0, spacing=1.0)
    padded = growth.with_edge_penalty(maps, margin=5.0, slope=2.0)
    # The face points lie 0 Å inside: 2 kcal/mol/Å x 5 Å. The centre is 10 Å deep.
    assert padded.values[0, 0, 10, 10] == pytest.approx(10.0)
    assert padded.values[0, 10, 10, 10] == pytest.approx(0.0)
    assert padded.values[0, 3, 10, 10] == pytest.approx(4.0)
    assert maps.values.max() == 0.0


def test_growth_energy_is_the_whole_chain_energy(chain):
    # Growth adds the energy of each new residue to its parent's. Summed, that
    # must equal the energy the refinement computes for the whole chain at once.
    grower, xyz = chain
    maps = flat_maps()
    settings = growth.GrowthSettings(
        beam_width=8, samples_per_chain=8, kept_per_parent=2
    )
    energy, poses = growth.grow(
        grower, maps, xyz, 4, 7, settings, np.random.default_rng(3)
    )
    whole, _ = grower.model.energy_and_gradient(maps, poses)
    assert energy == pytest.approx(whole, abs=1e-6)
    assert list(energy) == sorted(energy)
    # The placed segment never moves.
    placed = (grower.residue_of_row >= 4) & (grower.residue_of_row <= 7)
    placed[grower.carbonyl_oxygen(7)] = False
    assert np.abs(poses[:, placed] - xyz[placed]).max() < 1e-9


def test_growth_steers_around_a_repulsive_slab(chain):
    # A slab 4 Å thick, 6 Å past the segment's far end along the chain axis, costs
    # 10 kcal/mol per atom. The four residues grown toward it, about 12 Å long when
    # extended, must bend away from it.
    grower, xyz = chain
    maps = flat_maps()
    axis = xyz[grower.model.residue_rows[-1][1]] - xyz[grower.model.residue_rows[0][1]]
    axis /= np.linalg.norm(axis)
    segment_end = xyz[grower.model.residue_rows[7][1]] @ axis
    index = np.indices(maps.values.shape[1:]).transpose(1, 2, 3, 0)
    grid = maps.origin + index * maps.spacing
    along = grid @ axis
    slab = (along > segment_end + 6.0) & (along < segment_end + 10.0)
    maps.values[:, slab] = 10.0

    settings = growth.GrowthSettings(beam_width=32, samples_per_chain=24)
    energy, poses = growth.grow(
        grower, maps, xyz, 0, 7, settings, np.random.default_rng(5)
    )
    per_atom, _ = backbone_search.atom_map_energies(maps, poses[:1], grower.model.types)
    # Atoms in the slab would add 10 kcal/mol each; a trilinear neighbour of the
    # slab adds a fraction of that.
    assert per_atom.sum() < 1.0
