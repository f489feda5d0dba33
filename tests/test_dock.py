"""Tests of the ``dock`` and ``score`` steps with AutoDock Vina on 1CZY.

The receptor is 1CZY chain A from the prepare step; chain B (PQQATDD) marks the site.
"""

from __future__ import annotations

import numpy as np
import pytest

from peptide_opt.config import build_config
from peptide_opt.engines.vina import SearchSettings, VinaDockingEngine, receptor_pdbqt
from peptide_opt.pipeline.dock import dock_peptide
from peptide_opt.pipeline.model import build_peptide_model
from peptide_opt.pipeline.score import score_poses
from peptide_opt.pipeline.site import find_site

pytestmark = pytest.mark.slow

#: Best-of-10 backbone RMSD bound (Å). bench/docking_accuracy.py measured 2.28 Å
#: with docking_seed 37 on this receptor. 0.5 Å allows for floating-point
#: differences between machines. The same search without the flexible-backbone
#: refinement gave 2.92 Å, and a broken search gives poses 6-14 Å off, so neither
#: passes.
#: NOTE: the rigid stage is chaotic: one more map voxel along one axis moved the best
#: docked pose from 2.67 to 4.81 Å. A machine whose arithmetic differs may fail this
#: bound with a working search.
BEST_OF_10_RMSD_BOUND = 2.8


def backbone(pdb_text: str) -> np.ndarray:
    atoms = {}
    for line in pdb_text.splitlines():
        if line.startswith("ATOM"):
            atoms[(int(line[22:26]), line[12:16].strip())] = [
                float(line[30:38]),
                float(line[38:46]),
                float(line[46:54]),
            ]
    return np.array(
        [atoms[(n, name)] for n in range(1, 8) for name in ("N", "CA", "C", "O")]
    )


@pytest.fixture(scope="module")
def czy_scored(czy_site_receptor):
    config = build_config({"site_chain": "B", "n_poses": 10, "docking_seed": 37})
    engine = VinaDockingEngine()
    peptide = build_peptide_model("PQQATDD", seed=37)
    site = find_site(czy_site_receptor, config)
    poses = dock_peptide(
        czy_site_receptor, peptide, site, config, cores=2, engine=engine
    )
    docked = [(pose.peptide_pdb, pose.docking_affinity) for pose in poses]
    ranked = score_poses(czy_site_receptor, site, poses, cores=2, engine=engine)
    return docked, ranked


def test_dock_returns_ten_poses(czy_scored):
    docked, ranked = czy_scored
    assert len(docked) == 10
    assert [pose.rank for pose in ranked] == list(range(1, 11))


def test_score_affinities_negative_and_sorted(czy_scored):
    _, ranked = czy_scored
    affinities = [pose.affinity for pose in ranked]
    assert all(affinity < 0 for affinity in affinities)
    assert affinities == sorted(affinities)


def test_dock_best_of_ten_near_crystal(czy_scored, czy_crystal_backbone):
    _, ranked = czy_scored
    deviations = [
        float(
            np.sqrt(
                np.mean(
                    np.sum((backbone(p.peptide_pdb) - czy_crystal_backbone) ** 2, 1)
                )
            )
        )
        for p in ranked
    ]
    assert min(deviations) < BEST_OF_10_RMSD_BOUND


def test_pose_pdb_has_standard_names(czy_scored):
    _, ranked = czy_scored
    lines = [
        line for line in ranked[0].peptide_pdb.splitlines() if line.startswith("ATOM")
    ]
    assert {line[21] for line in lines} == {"A"}
    assert sorted({int(line[22:26]) for line in lines}) == list(range(1, 8))
    names = {(int(line[22:26]), line[12:16].strip()) for line in lines}
    for number in range(1, 8):
        for name in ("N", "CA", "C", "O"):
            assert (number, name) in names
    assert (7, "OXT") in names
    assert (2, "HE21") in names
    assert any(line[76:78].strip() == "H" for line in lines)


def test_dock_same_seed_same_poses(czy_site_receptor):
    # A small search (one random backbone, three poses) keeps the test short. One
    # engine docks with seed 11, then 12, then 11 again: the cached Vina object of
    # seed 12 must not leak into the second seed-11 run.
    site = find_site(czy_site_receptor, build_config({"site_chain": "B"}))
    peptide = build_peptide_model("PQQATDD", seed=11)
    engine = VinaDockingEngine(SearchSettings(n_random_backbones=1))
    runs = []
    for seed in (11, 12, 11):
        config = build_config({"site_chain": "B", "n_poses": 3, "docking_seed": seed})
        poses = dock_peptide(
            czy_site_receptor, peptide, site, config, cores=2, engine=engine
        )
        runs.append([(pose.peptide_pdb, pose.docking_affinity) for pose in poses])
    assert len(runs[0]) == 3
    assert runs[0] == runs[2]
    assert runs[0] != runs[1]


def test_receptor_pdbqt_types(czy_site_receptor):
    text = receptor_pdbqt(czy_site_receptor.pdb_text)
    types = {
        line[77:79].strip() for line in text.splitlines() if line.startswith("ATOM")
    }
    # Protein atoms in AutoDock 4 types: polar hydrogens (HD) stay, non-polar ones are
    # merged into their carbons.
    assert {"C", "A", "N", "OA", "HD"} <= types
    assert "H" not in types


def test_dock_box_too_small_for_side_chains(czy_site_receptor):
    # A 12 Å box on the 1CZY site fits a CB-truncated backbone of PQQATDD but not its
    # side chains, so no placement is kept. The error then says why and what to
    # change, instead of a bare "no pose".
    from peptide_opt.errors import EngineError

    site = find_site(czy_site_receptor, build_config({"site_chain": "B"}))
    small = build_config(
        {
            "site_center": ",".join(f"{value:.3f}" for value in site.center),
            "site_size": "12,12,12",
        }
    )
    engine = VinaDockingEngine(
        SearchSettings(
            n_random_backbones=2, exhaustiveness=2, max_evals=3000, n_refined_starts=0
        )
    )
    with pytest.raises(EngineError) as raised:
        dock_peptide(
            czy_site_receptor,
            build_peptide_model("PQQATDD", seed=37),
            find_site(czy_site_receptor, small),
            small,
            cores=2,
            engine=engine,
        )
    assert "keeps its side chains inside the docking box" in str(raised.value)
    assert "Give site_center and site_size" in str(raised.value)


def test_segment_growth_on_1czy(czy_site_receptor, czy_crystal_backbone):
    # PQQATDD forced onto the long-peptide path: segments of 5 residues (starts 0
    # and 2) are docked, grown by 2 residues to the whole peptide and refined. A
    # small search keeps the test short; the figures it must reach are stated below.
    from peptide_opt.engines.growth import GrowthSettings

    config = build_config({"site_chain": "B", "n_poses": 5, "docking_seed": 37})
    site = find_site(czy_site_receptor, config)
    engine = VinaDockingEngine(
        SearchSettings(
            n_random_backbones=3,
            max_rigid_length=5,
            segment_length=5,
            segment_stride=2,
            n_grown_segments=6,
            n_grown_refined=8,
            growth_settings=GrowthSettings(beam_width=16, samples_per_chain=16),
        )
    )
    peptide = build_peptide_model("PQQATDD", seed=37)
    poses = dock_peptide(
        czy_site_receptor, peptide, site, config, cores=2, engine=engine
    )
    assert 1 <= len(poses) <= 5
    assert all(p.detail["backbone_template"].startswith("segment ") for p in poses)
    affinities = [pose.docking_affinity for pose in poses]
    assert affinities == sorted(affinities)
    # The rigid-backbone search gives -7 to -9 kcal/mol on this site (CB-truncated,
    # rigid). A grown chain that clashed with the receptor would score above 0.
    assert affinities[0] < -4.0
    # Every atom lies inside the box, or the score step's Vina would reject it.
    low = np.array(site.center) - np.array(site.size) / 2
    high = np.array(site.center) + np.array(site.size) / 2
    for pose in poses:
        xyz = np.array(
            [
                [float(line[30:38]), float(line[38:46]), float(line[46:54])]
                for line in pose.peptide_pdb.splitlines()
                if line.startswith(("ATOM", "HETATM"))
            ]
        )
        assert np.all(xyz >= low) and np.all(xyz <= high)
    deviations = [backbone(p.peptide_pdb) - czy_crystal_backbone for p in poses]
    rmsd = min(float(np.sqrt(np.sum(d**2, axis=1).mean())) for d in deviations)
    # Measured: 3.16 Å best of 5, affinities -9.6 to -6.8 kcal/mol. A search that
    # places the peptide anywhere on the site ends 6-14 Å off (see the bound above).
    assert rmsd < 4.5
