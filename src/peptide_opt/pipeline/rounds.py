"""Iterative design rounds (``n_iterations`` > 1): refine the best design, design again.

Round 1 is the ``design`` and ``rescore`` steps. Each later round, for every pose:

1. takes the pose's best design so far, in its pose, and refines it locally in the site:
   the same threading minimization as ``rescore`` (no residue changes, so only the
   minimization acts) and the docking engine's Vina local optimization;
2. designs the peptide again with ProteinMPNN on the refined complex, with the job's
   design settings;
3. re-scores the new designs on the refined pose and chooses one by the job's
   ``selection`` rule, where the input sequence of the round is the best design so far;
4. keeps it when it beats the best so far: a lower Vina affinity for
   ``selection=rescore``, a lower ProteinMPNN ``score`` for ``selection=mpnn``.

Every affinity delta refers to the input peptide on the original pose
(``pose.affinity``), so values of different rounds compare directly.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from peptide_opt.config import JobConfig
from peptide_opt.pipeline.assemble import assemble_complex
from peptide_opt.pipeline.design import design_poses
from peptide_opt.pipeline.rescore import (
    DesignScore,
    choose_design,
    rescore_pose,
)
from peptide_opt.pipeline.types import Design, Pose, PoseDesigns, Receptor, Site

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RoundsResult:
    """The rounds of a job: the trajectory and the best design of each pose.

    ``trajectory`` has one entry per round and pose: ``round`` (1-based), ``pose`` (the
    pose's rank), ``sequence``, ``affinity`` (kcal/mol), ``score`` and ``global_score``
    of the best design so far, ``candidate`` (the sequence this round chose, or None)
    with ``candidate_affinity`` and ``candidate_score``, and ``improved`` (whether the
    candidate replaced the best). ``best`` holds each pose's best :class:`DesignScore`
    over all rounds (None for a pose without designs).
    """

    n_rounds: int
    trajectory: list[dict[str, Any]]
    best: list[DesignScore | None]


def run_rounds(
    receptor: Receptor,
    site: Site,
    poses: list[Pose],
    first_round_designs: list[PoseDesigns | None],
    first_round_scores: list[list[DesignScore]],
    config: JobConfig,
    cores: int,
    engine: Any = None,
    design_engine: Any = None,
    sidechain_engine: Any = None,
) -> RoundsResult:
    """Run rounds 2..``config.n_iterations`` after the first design and rescore round.

    Parameters
    ----------
    receptor, site, poses
        As given to :func:`~peptide_opt.pipeline.rescore.rescore_designs`.
    first_round_designs, first_round_scores
        The ``design`` step's output and the ``rescore`` step's scores, per pose.
    config
        Uses ``n_iterations``, ``selection`` and the design settings.
    engine, design_engine, sidechain_engine
        The docking, ProteinMPNN and threading engines; the default ones when None.
    """
    engine, sidechain_engine = _engines(engine, sidechain_engine)
    best = []
    for pose, designs, scores in zip(poses, first_round_designs, first_round_scores):
        chosen = choose_design(pose, designs, scores, config.selection)
        if isinstance(chosen, Design):
            # Not re-scored (selection=mpnn): thread it so that it has a pose to refine.
            only = dataclasses.replace(designs, designs=[chosen])
            chosen = rescore_pose(
                receptor, site, pose, only, config, cores, engine, sidechain_engine
            )[0]
        best.append(chosen)
    trajectory = [
        _record(1, pose, item, None, False) for pose, item in zip(poses, best)
    ]

    for number in range(2, config.n_iterations + 1):
        started = time.perf_counter()
        active = [index for index, item in enumerate(best) if item is not None]
        refined = {
            index: _refine(
                receptor,
                site,
                poses[index],
                best[index],
                config,
                cores,
                engine,
                sidechain_engine,
            )
            for index in active
        }
        complexes = [
            assemble_complex(receptor, refined[index]).text for index in active
        ]
        new_designs = design_poses(complexes, config, engine=design_engine)
        for index, designs in zip(active, new_designs):
            pose = poses[index]
            candidate = _round_candidate(
                receptor,
                site,
                pose,
                refined[index],
                designs,
                config,
                cores,
                engine,
                sidechain_engine,
            )
            improved = candidate is not None and _better(
                candidate, best[index], config.selection
            )
            if improved:
                best[index] = candidate
            trajectory.append(_record(number, pose, best[index], candidate, improved))
        for index in range(len(poses)):
            if index not in refined:
                trajectory.append(_record(number, poses[index], None, None, False))
        logger.info(
            "design_round_finished",
            extra={
                "step": "rescore",
                "round": number,
                "n_poses": len(active),
                "duration": round(time.perf_counter() - started, 3),
            },
        )
    return RoundsResult(n_rounds=config.n_iterations, trajectory=trajectory, best=best)


def _refine(
    receptor: Receptor,
    site: Site,
    pose: Pose,
    best: DesignScore,
    config: JobConfig,
    cores: int,
    engine: Any,
    sidechain_engine: Any,
) -> Pose:
    """Minimize the best design in its pose and optimize it locally with Vina."""
    shell = sidechain_engine.build_shell(receptor.pdb_text, best.peptide_pdb)
    threaded = sidechain_engine.thread(
        shell, best.peptide_pdb, best.sequence, config.ph, config.docking_seed, cores
    )
    refined = Pose(
        peptide_pdb=threaded.pdb_text,
        docking_affinity=pose.docking_affinity,
        rank=pose.rank,
        detail={
            "sequence": best.sequence,
            "refined_from": "best design",
            "minimized_in_receptor": True,
        },
    )
    engine.score(receptor, site, [refined], cores)
    return refined


def _round_candidate(
    receptor: Receptor,
    site: Site,
    pose: Pose,
    refined: Pose,
    designs: PoseDesigns,
    config: JobConfig,
    cores: int,
    engine: Any,
    sidechain_engine: Any,
) -> DesignScore | None:
    """Re-score a round's designs on the refined pose and choose one."""
    scores = rescore_pose(
        receptor, site, refined, designs, config, cores, engine, sidechain_engine
    )
    # Deltas refer to the input peptide on the original pose, as in round 1.
    scores = [_relative_to(item, pose) for item in scores]
    chosen = choose_design(refined, designs, scores, config.selection)
    return chosen if isinstance(chosen, DesignScore) else None


def _relative_to(item: DesignScore, pose: Pose) -> DesignScore:
    delta = None if pose.affinity is None else round(item.affinity - pose.affinity, 3)
    return dataclasses.replace(
        item,
        input_affinity=pose.affinity,
        affinity_delta=delta,
        pose_rank=pose.rank,
    )


def _better(candidate: DesignScore, best: DesignScore | None, selection: str) -> bool:
    if best is None:
        return True
    if selection == "mpnn":
        return candidate.score < best.score
    if candidate.affinity is None:
        return False
    return best.affinity is None or candidate.affinity < best.affinity


def _record(
    number: int,
    pose: Pose,
    best: DesignScore | None,
    candidate: DesignScore | None,
    improved: bool,
) -> dict[str, Any]:
    return {
        "round": number,
        "pose": pose.rank,
        "sequence": None if best is None else best.sequence,
        "affinity": None if best is None else best.affinity,
        "score": None if best is None else best.score,
        "global_score": None if best is None else best.global_score,
        "candidate": None if candidate is None else candidate.sequence,
        "candidate_affinity": None if candidate is None else candidate.affinity,
        "candidate_score": None if candidate is None else candidate.score,
        "improved": improved,
    }


def _engines(engine: Any, sidechain_engine: Any) -> tuple[Any, Any]:
    if engine is None:
        from peptide_opt.engines.base import get_engine

        engine = get_engine("docking")
    if sidechain_engine is None:
        from peptide_opt.engines.sidechains import SideChainEngine

        sidechain_engine = SideChainEngine()
    return engine, sidechain_engine


__all__ = ["RoundsResult", "run_rounds"]
