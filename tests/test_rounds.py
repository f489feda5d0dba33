"""Iterative design rounds on the 1CZY crystal pose with the real engines."""

from __future__ import annotations

import dataclasses
import math

import pytest

from peptide_opt.config import build_config
from peptide_opt.pipeline.rescore import DesignScore, choose_design, rescore_designs
from peptide_opt.pipeline.rounds import run_rounds

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def czy_rounds(czy_receptor, czy_site, crystal_pose, vina_engine, mpnn_engine):
    from peptide_opt.pipeline.assemble import assemble_complex
    from peptide_opt.pipeline.design import design_poses

    config = build_config(
        {
            "site_chain": "B",
            "num_seq_per_target": 3,
            "n_iterations": 3,
            "selection": "rescore",
        }
    )
    pose = dataclasses.replace(crystal_pose)
    vina_engine.score(czy_receptor, czy_site, [pose], 1)
    designs = design_poses(
        [assemble_complex(czy_receptor, pose).text], config, engine=mpnn_engine
    )
    scores = rescore_designs(
        czy_receptor, czy_site, [pose], designs, config, 1, engine=vina_engine
    )
    result = run_rounds(
        czy_receptor,
        czy_site,
        [pose],
        designs,
        scores,
        config,
        1,
        engine=vina_engine,
        design_engine=mpnn_engine,
    )
    return pose, designs, scores, result


def test_rounds_trajectory_shape(czy_rounds):
    _, _, _, result = czy_rounds
    # Three rounds of one pose: one trajectory entry per round.
    assert result.n_rounds == 3
    assert [entry["round"] for entry in result.trajectory] == [1, 2, 3]
    assert all(entry["pose"] == 1 for entry in result.trajectory)
    assert result.trajectory[0]["candidate"] is None
    assert isinstance(result.best[0], DesignScore)


def test_rounds_start_from_first_choice(czy_rounds):
    pose, designs, scores, result = czy_rounds
    first = choose_design(pose, designs[0], scores[0], "rescore")
    assert result.trajectory[0]["sequence"] == first.sequence
    assert result.trajectory[0]["affinity"] == first.affinity


def test_rounds_best_never_worsens(czy_rounds):
    _, _, _, result = czy_rounds
    affinities = [entry["affinity"] for entry in result.trajectory]
    # With selection=rescore the best so far is kept by Vina affinity (kcal/mol).
    assert all(later <= earlier for earlier, later in zip(affinities, affinities[1:]))
    assert result.best[0].affinity == affinities[-1]


def test_rounds_improvement_flags(czy_rounds):
    _, _, _, result = czy_rounds
    for previous, entry in zip(result.trajectory, result.trajectory[1:]):
        if entry["improved"]:
            assert entry["sequence"] == entry["candidate"]
            assert entry["candidate_affinity"] < previous["affinity"]
        else:
            assert entry["sequence"] == previous["sequence"]


def test_rounds_delta_refers_to_original_pose(czy_rounds):
    pose, _, _, result = czy_rounds
    best = result.best[0]
    assert math.isfinite(best.affinity)
    assert best.affinity_delta == pytest.approx(best.affinity - pose.affinity, abs=1e-3)
