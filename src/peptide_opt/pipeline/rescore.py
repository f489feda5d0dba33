"""Step ``rescore``: every distinct design of a pose, threaded and scored in that pose.

For each pose, each distinct designed sequence is threaded onto the docked peptide's
backbone, and its new side chains are rebuilt, repacked and minimized in the receptor
(:mod:`peptide_opt.engines.sidechains`). The result is scored by the docking engine's
``score``: the same Vina local optimization in the same box that gave the input peptide
its affinity on that pose. The input sequence goes through the same threading and
minimization too, so each design has two references:

- ``affinity_delta``: design minus the pose's affinity (the input peptide as docked and
  scored); negative means the design binds better.
- ``relaxed_delta``: design minus the input sequence after the same threading and
  minimization, which separates the effect of the sequence from that of the extra
  relaxation.

Interface contacts (:mod:`peptide_opt.pipeline.contacts`) are listed for every design
and for the input peptide of every pose.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import time
from typing import Any

from peptide_opt.config import JobConfig
from peptide_opt.engines.vina import OUTSIDE_BOX_MESSAGE
from peptide_opt.errors import EngineError, InputError
from peptide_opt.pipeline.assemble import assemble_complex
from peptide_opt.pipeline.contacts import InterfaceContacts, interface_contacts
from peptide_opt.pipeline.design import choose_best_design, unique_designs
from peptide_opt.pipeline.types import Design, Pose, PoseDesigns, Receptor, Site
from peptide_opt.processes import spawned_pool

logger = logging.getLogger(__name__)

SELECTIONS = ("rescore", "mpnn")


@dataclasses.dataclass
class DesignScore:
    """One distinct design re-scored in its pose.

    Affinities are Vina's, in kcal/mol (lower is better): ``affinity`` of the design,
    ``input_affinity`` of the input peptide on this pose (``pose.affinity``),
    ``relaxed_input_affinity`` of the input sequence after the same threading and
    minimization as the design. ``affinity_delta`` is ``affinity - input_affinity`` and
    ``relaxed_delta`` is ``affinity - relaxed_input_affinity``. ``score`` and
    ``global_score`` are ProteinMPNN's mean negative log-likelihoods of the peptide and
    of the whole complex (lower is better). ``n_samples`` counts the samples of the
    sequence. ``contacts`` and ``hydrogen_bonds`` are as in
    :class:`~peptide_opt.pipeline.contacts.InterfaceContacts`. ``mutated_positions``
    (1-based) differ from the docked peptide; ``backbone_rmsd`` (Å) is the backbone's
    shift during minimization, ``interaction_energy`` (kcal/mol) the minimized peptide's
    amber14 nonbonded energy with the receptor. ``peptide_pdb`` is the design in its
    pose (chain A, after Vina's local optimization when the engine returns
    coordinates); ``complex_pdb`` the complex in the layout of ``complex{i}.pdb``, in
    ``complex_format`` (``pdb`` or ``cif``). ``affinity`` and the values derived from
    it are None when the threaded design reaches outside the docking box, where Vina
    has no grid maps.
    """

    sequence: str
    pose_rank: int | None
    affinity: float | None
    affinity_delta: float | None
    relaxed_input_affinity: float | None
    relaxed_delta: float | None
    input_affinity: float | None
    score: float
    global_score: float
    seq_recovery: float
    n_samples: int
    sample: int
    contacts: list[str]
    hydrogen_bonds: list[dict[str, Any]]
    mutated_positions: list[int]
    backbone_rmsd: float
    interaction_energy: float
    peptide_pdb: str
    complex_pdb: str
    complex_format: str = "pdb"


def rescore_designs(
    receptor: Receptor,
    site: Site,
    poses: list[Pose],
    pose_designs: list[PoseDesigns | None],
    config: JobConfig,
    cores: int,
    engine: Any = None,
    sidechain_engine: Any = None,
) -> list[list[DesignScore]]:
    """Thread, relax and Vina-score every distinct design of every pose.

    Parameters
    ----------
    receptor, site
        The prepared receptor and the docking box the poses were scored in.
    poses
        The scored poses, in rank order; ``pose.affinity`` (kcal/mol) is the reference.
    pose_designs
        ProteinMPNN's output per pose (None for a pose without designs).
    config
        Uses ``ph`` (hydrogens of the threaded peptide) and ``docking_seed``.
    cores
        CPU threads for OpenMM and Vina.
    engine
        The docking engine whose ``score`` is applied; the registered one by default.

    Returns
    -------
    list of list of DesignScore
        Per pose, in rank order; per distinct design, best ProteinMPNN ``score`` first.
    """
    if len(pose_designs) != len(poses):
        raise EngineError(
            f"{len(pose_designs)} design sets for {len(poses)} poses; expected one "
            "per pose"
        )
    engine = engine or _docking_engine()
    sidechain_engine = sidechain_engine or _sidechain_engine()
    results = []
    with spawned_pool(cores) as pool:
        for pose, designs in zip(poses, pose_designs):
            started = time.perf_counter()
            scores = rescore_pose(
                receptor,
                site,
                pose,
                designs,
                config,
                cores,
                engine,
                sidechain_engine,
                pool,
            )
            results.append(scores)
            logger.info(
                "rescore_pose_finished pose=%s n_designs=%d duration=%.2fs",
                pose.rank,
                len(scores),
                time.perf_counter() - started,
            )
    return results


def rescore_pose(
    receptor: Receptor,
    site: Site,
    pose: Pose,
    designs: PoseDesigns | None,
    config: JobConfig,
    cores: int,
    engine: Any,
    sidechain_engine: Any,
    pool: concurrent.futures.Executor | None = None,
) -> list[DesignScore]:
    """Re-score the distinct designs of one pose (see :func:`rescore_designs`).

    ``pool`` runs the threading of the designs in parallel when given.
    """
    if designs is None or not designs.designs:
        return []
    unique = unique_designs(designs)
    shell = sidechain_engine.build_shell(receptor.pdb_text, pose.peptide_pdb)
    sequences = list(
        dict.fromkeys([designs.native_sequence] + [d.sequence for d, _ in unique])
    )
    # One OpenMM thread per design: a design's system is too small to gain from more,
    # and a fixed thread count keeps the result independent of ``cores``.
    arguments = [
        (shell, pose.peptide_pdb, sequence, config.ph, config.docking_seed, 1)
        for sequence in sequences
    ]
    if pool is None:
        items = [sidechain_engine.thread(*args) for args in arguments]
    else:
        futures = [pool.submit(sidechain_engine.thread, *args) for args in arguments]
        items = [future.result() for future in futures]
    threaded = dict(zip(sequences, items))
    scored = {
        sequence: Pose(
            peptide_pdb=item.pdb_text,
            docking_affinity=math.nan,
            rank=pose.rank,
            # The threading engine minimized the design in the receptor already.
            detail={"sequence": sequence, "minimized_in_receptor": True},
        )
        for sequence, item in threaded.items()
    }
    _score_poses(engine, receptor, site, list(scored.values()), cores)
    relaxed_input = _affinity(scored[designs.native_sequence], designs.native_sequence)

    results = []
    for design, count in unique:
        design_pose = scored[design.sequence]
        affinity = _affinity(design_pose, design.sequence)
        contacts = interface_contacts(receptor.pdb_text, design_pose.peptide_pdb)
        assembled = assemble_complex(receptor, design_pose)
        item = threaded[design.sequence]
        results.append(
            DesignScore(
                sequence=design.sequence,
                pose_rank=pose.rank,
                affinity=affinity,
                affinity_delta=_difference(affinity, pose.affinity),
                relaxed_input_affinity=relaxed_input,
                relaxed_delta=_difference(affinity, relaxed_input),
                input_affinity=pose.affinity,
                score=design.score,
                global_score=design.global_score,
                seq_recovery=design.seq_recovery,
                n_samples=count,
                sample=design.sample,
                contacts=contacts.residues,
                hydrogen_bonds=contacts.hydrogen_bonds,
                mutated_positions=item.mutated_positions,
                backbone_rmsd=round(item.backbone_rmsd, 3),
                interaction_energy=round(item.interaction_energy, 3),
                peptide_pdb=design_pose.peptide_pdb,
                complex_pdb=assembled.text,
                complex_format=assembled.format,
            )
        )
    return results


def input_contacts(receptor: Receptor, poses: list[Pose]) -> list[InterfaceContacts]:
    """Return the interface contacts of the input peptide on each pose, in order."""
    return [interface_contacts(receptor.pdb_text, pose.peptide_pdb) for pose in poses]


def choose_design(
    pose: Pose,
    pose_designs: PoseDesigns | None,
    design_scores: list[DesignScore] | None,
    selection: str,
) -> DesignScore | Design | None:
    """Choose the best design of a pose.

    ``selection="mpnn"`` takes the lowest ProteinMPNN ``score``. ``selection="rescore"``
    takes the best (lowest) Vina affinity among the designs whose ``score`` is below
    the input sequence's on this pose (``pose_designs.native_score``). When no design
    is below it, the lowest ``score`` wins. Ties go to the lower ``score``, then the
    earlier sample. The :class:`DesignScore` of the chosen sequence is returned when it
    was re-scored, else its :class:`Design`, and None when the pose has no designs.
    """
    if selection not in SELECTIONS:
        raise InputError(f"selection must be 'rescore' or 'mpnn', got {selection!r}")
    if pose_designs is None or not pose_designs.designs:
        return None
    scores = {item.sequence: item for item in design_scores or []}
    lowest = choose_best_design(pose_designs)
    if selection == "rescore" and scores:
        below = [
            item
            for item in scores.values()
            if item.score < pose_designs.native_score and item.affinity is not None
        ]
        if below:
            return min(below, key=lambda item: (item.affinity, item.score, item.sample))
    return scores.get(lowest.sequence, lowest)


def _affinity(pose: Pose, sequence: str) -> float | None:
    """Return the pose's Vina affinity, or None when the pose was not scored."""
    if pose.affinity is None:
        return None
    if not math.isfinite(pose.affinity):
        raise EngineError(
            f"the docking engine returned affinity {pose.affinity} for design "
            f"{sequence} on pose {pose.rank}"
        )
    return float(pose.affinity)


def _difference(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None:
        return None
    return round(value - reference, 3)


def _score_poses(
    engine: Any, receptor: Receptor, site: Site, poses: list[Pose], cores: int
) -> None:
    """Score the poses in one call, or one at a time when Vina rejects one of them.

    Vina rejects a ligand with atoms outside its grid box. Such poses keep ``affinity``
    None, and any other engine error is raised.
    """
    try:
        # One call for the whole pose set, so the engine prepares receptor and box once.
        engine.score(receptor, site, poses, cores)
        return
    except EngineError as error:
        if OUTSIDE_BOX_MESSAGE not in str(error):
            raise
    for pose in poses:
        pose.affinity = None
        try:
            engine.score(receptor, site, [pose], cores)
        except EngineError as error:
            if OUTSIDE_BOX_MESSAGE not in str(error):
                raise
            logger.warning(
                "rescore_outside_box",
                extra={
                    "step": "rescore",
                    "pose": pose.rank,
                    "sequence": pose.detail.get("sequence"),
                },
            )


def _docking_engine() -> Any:
    from peptide_opt.engines.base import get_engine

    return get_engine("docking")


def _sidechain_engine() -> Any:
    from peptide_opt.engines.sidechains import SideChainEngine

    return SideChainEngine()
