"""The engine interfaces the pipeline calls, and the registry that finds engines.

An engine is an object with a ``name`` and a ``version`` and the methods of one of the
protocols below. The built-in engines are registered here by name. A package can add its
own through the entry-point group ``peptide_opt.engines``: the entry point's name is
``<kind>.<engine name>`` (for example ``docking.my-docker``) and it loads a zero-argument
factory that returns the engine.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from peptide_opt.errors import InputError
from peptide_opt.pipeline.types import Design, PeptideModel, PoseDesigns, Pose, Receptor, Site


@runtime_checkable
class DockingEngine(Protocol):
    """Docks a peptide model into a receptor site and scores poses."""

    name: str
    version: str

    def dock(
        self,
        receptor: Receptor,
        peptide: PeptideModel,
        site: Site,
        n_poses: int,
        seed: int,
        cores: int,
    ) -> list[Pose]:
        """Return up to ``n_poses`` distinct poses, best first by the search's score."""

    def score(self, receptor: Receptor, site: Site, poses: list[Pose], cores: int) -> None:
        """Optimize each pose locally in the receptor and set its ``affinity`` (kcal/mol)."""


@runtime_checkable
class DesignEngine(Protocol):
    """Designs the sequence of one chain of a complex with the rest held fixed."""

    name: str
    version: str

    def design(
        self,
        complex_pdb: str,
        designed_chain: str,
        n_sequences: int,
        temperature: float,
        seed: int,
        fixed_positions: list[int] | None = None,
        omit_amino_acids: str = "",
        aa_bias: dict[str, float] | None = None,
    ) -> PoseDesigns:
        """Return the native sequence's scores and ``n_sequences`` sampled designs."""


#: kind -> engine name -> "module:factory"
BUILTIN_ENGINES: dict[str, dict[str, str]] = {
    "docking": {"vina": "peptide_opt.engines.vina:VinaDockingEngine"},
    "design": {"proteinmpnn": "peptide_opt.engines.proteinmpnn:ProteinMPNNEngine"},
}

DEFAULT_ENGINES = {"docking": "vina", "design": "proteinmpnn"}

_instances: dict[tuple[str, str], Any] = {}


def get_engine(kind: str, name: str | None = None) -> Any:
    """Return the engine ``name`` of ``kind`` (``docking`` or ``design``), made once per process."""
    name = name or DEFAULT_ENGINES[kind]
    key = (kind, name)
    if key not in _instances:
        _instances[key] = _load_factory(kind, name)()
    return _instances[key]


def _load_factory(kind: str, name: str) -> Any:
    target = BUILTIN_ENGINES.get(kind, {}).get(name)
    if target is not None:
        module_name, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module_name), attribute)
    for entry in entry_points(group="peptide_opt.engines"):
        if entry.name == f"{kind}.{name}":
            return entry.load()
    known = sorted(BUILTIN_ENGINES.get(kind, {}))
    raise InputError(f"unknown {kind} engine {name!r}; known engines: {', '.join(known)}")


__all__ = ["DockingEngine", "DesignEngine", "Design", "get_engine"]
