"""The ``score`` step: local optimization of each pose and ranking by Vina affinity."""

from __future__ import annotations

import math

from peptide_opt.engines.base import DockingEngine, get_engine
from peptide_opt.errors import EngineError
from peptide_opt.pipeline.types import Pose, Receptor, Site


def score_poses(
    receptor: Receptor,
    site: Site,
    poses: list[Pose],
    cores: int,
    engine: DockingEngine | None = None,
) -> list[Pose]:
    """Optimize and score each pose; return them ranked, most negative affinity first.

    Each pose's ``affinity`` (kcal/mol) is set and ``rank`` numbers them 1..n.
    """
    engine = engine or get_engine("docking")
    engine.score(receptor, site, poses, cores=max(1, cores))
    for index, pose in enumerate(poses, start=1):
        if pose.affinity is None or not math.isfinite(pose.affinity):
            raise EngineError(
                f"docking engine {engine.name} gave pose {index} no finite affinity"
            )
    ranked = sorted(poses, key=lambda pose: pose.affinity)
    for rank, pose in enumerate(ranked, start=1):
        pose.rank = rank
    return ranked
