"""Designing poses in several processes gives exactly the designs of one process."""

import pytest

from peptide_opt.config import build_config
from peptide_opt.pipeline.design import design_poses
from tests.fixtures.design import move_peptide

pytestmark = pytest.mark.slow


def test_two_processes_match_one(crystal_complex_pdb):
    # Two different poses: the crystal one and the peptide shifted by 1.5 Å.
    complexes = [crystal_complex_pdb, move_peptide(crystal_complex_pdb, (1.5, 0.0, 0.0))]
    config = build_config({"num_seq_per_target": "3", "proteinmpnn_seed": "11"})

    serial = design_poses(complexes, config, cores=1)
    parallel = design_poses(complexes, config, cores=2)

    for one, other in zip(serial, parallel):
        assert [d.sequence for d in one.designs] == [d.sequence for d in other.designs]
        assert [d.score for d in one.designs] == [d.score for d in other.designs]
        assert one.native_global_score == other.native_global_score
