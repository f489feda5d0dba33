"""Step checkpoints: each finished step's results, kept until the job ends.

A local run keeps them in ``OUTPUT_DIR/.work/<step>/``; a worker mirrors that folder to
``PREFIX/work/<step>/`` in storage, so a retried task resumes after its last finished step.
Each step folder holds ``state.json`` and, written last, ``done``. ``.work/job.json``
records a fingerprint of the inputs and settings; checkpoints of another fingerprint are
discarded, so a changed input never reuses stale results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from peptide_opt.pipeline.types import Design, Pose, PoseDesigns, Receptor, Site

WORK_DIR = ".work"
DONE_MARKER = "done"
STATE_FILE = "state.json"


def input_fingerprint(receptor_path: Path, peptide: str, parameters: dict[str, Any]) -> str:
    """Return a SHA-256 over the receptor file, the peptide and the settings."""
    digest = hashlib.sha256()
    with receptor_path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    # Settings that do not change a step's results stay out of the fingerprint.
    relevant = {k: v for k, v in parameters.items() if k not in ("cleanup",)}
    digest.update(peptide.encode())
    digest.update(json.dumps(relevant, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class Checkpoints:
    """The checkpoint folder of one job."""

    def __init__(self, output_dir: Path, fingerprint: str) -> None:
        self.root = output_dir / WORK_DIR
        self.fingerprint = fingerprint
        self.root.mkdir(parents=True, exist_ok=True)
        job_file = self.root / "job.json"
        recorded = None
        if job_file.is_file():
            try:
                recorded = json.loads(job_file.read_text()).get("fingerprint")
            except (OSError, ValueError):
                recorded = None
        if recorded != fingerprint:
            self.clear()
            self.root.mkdir(parents=True, exist_ok=True)
            _write_atomic(job_file, json.dumps({"fingerprint": fingerprint}) + "\n")

    def step_dir(self, step: str) -> Path:
        return self.root / step

    def is_done(self, step: str) -> bool:
        return (self.step_dir(step) / DONE_MARKER).is_file()

    def save(self, step: str, state: dict[str, Any]) -> Path:
        """Write a step's state, then its ``done`` marker; return the step folder."""
        folder = self.step_dir(step)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        _write_atomic(folder / STATE_FILE, json.dumps(state, default=_to_json) + "\n")
        (folder / DONE_MARKER).write_text("")
        return folder

    def load(self, step: str) -> dict[str, Any]:
        return json.loads((self.step_dir(step) / STATE_FILE).read_text())

    def discard_from(self, steps: list[str]) -> None:
        """Remove the checkpoints of ``steps`` (a step and every later one)."""
        for step in steps:
            folder = self.step_dir(step)
            if folder.exists():
                shutil.rmtree(folder)

    def clear(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)


# ---------------------------------------------------------------------------
# Conversions between step results and JSON-ready state.


def receptor_state(receptor: Receptor) -> dict[str, Any]:
    state = dataclasses.asdict(receptor)
    if receptor.site_marker_xyz is not None:
        state["site_marker_xyz"] = receptor.site_marker_xyz.tolist()
    return state


def receptor_from_state(state: dict[str, Any]) -> Receptor:
    import numpy as np

    marker = state.get("site_marker_xyz")
    return Receptor(
        pdb_text=state["pdb_text"],
        chain_ids=tuple(state["chain_ids"]),
        site_marker_xyz=None if marker is None else np.asarray(marker, dtype=float),
        ph=state["ph"],
        warnings=list(state["warnings"]),
    )


def site_from_state(state: dict[str, Any]) -> Site:
    return Site(
        center=tuple(state["center"]),
        size=tuple(state["size"]),
        source=state["source"],
        detail=state.get("detail", {}),
    )


def poses_state(poses: list[Pose]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(pose) for pose in poses]


def poses_from_state(states: list[dict[str, Any]]) -> list[Pose]:
    return [Pose(**state) for state in states]


def designs_state(pose_designs: list[PoseDesigns | None]) -> list[dict[str, Any] | None]:
    return [None if item is None else dataclasses.asdict(item) for item in pose_designs]


def designs_from_state(states: list[dict[str, Any] | None]) -> list[PoseDesigns | None]:
    result: list[PoseDesigns | None] = []
    for state in states:
        if state is None:
            result.append(None)
            continue
        designs = [Design(**design) for design in state["designs"]]
        result.append(PoseDesigns(**{**state, "designs": designs}))
    return result


def _to_json(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} cannot be stored in a checkpoint")


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
