"""The ``dock`` step: poses of the peptide in the docking box."""

from __future__ import annotations

from peptide_opt.config import JobConfig
from peptide_opt.engines.base import DockingEngine, get_engine
from peptide_opt.errors import EngineError
from peptide_opt.pipeline.types import PeptideModel, Pose, Receptor, Site


def dock_peptide(
    receptor: Receptor,
    peptide: PeptideModel,
    site: Site,
    config: JobConfig,
    cores: int,
    engine: DockingEngine | None = None,
) -> list[Pose]:
    """Dock ``peptide`` with ``config.n_poses`` and ``config.docking_seed``; best first.

    ``engine`` defaults to the registered docking engine (AutoDock Vina).
    """
    engine = engine or get_engine("docking")
    poses = engine.dock(
        receptor,
        peptide,
        site,
        n_poses=config.n_poses,
        seed=config.docking_seed,
        cores=max(1, cores),
    )
    if not poses:
        raise EngineError(f"docking engine {engine.name} returned no pose")
    for pose in poses:
        pose.detail.setdefault("engine", f"{engine.name} {engine.version}")
    return poses
