"""Chain the steps of one job, keep a checkpoint per step, and write the outputs.

:func:`run_job` is what the worker calls and :func:`run_pipeline` what ``peptide-opt run``
calls. Both report each finished step through ``on_step(step, progress_percent)`` and
return the result record that result.json contains (without the platform's ``results``
list). ``on_checkpoint(step, folder)`` is called after a step's checkpoint is written, so
a worker can copy it to storage.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from peptide_opt import __version__
from peptide_opt.errors import InputError
from peptide_opt.pipeline import STEPS, analyze, assemble, checkpoints, outputs
from peptide_opt.pipeline.inputs import JobInputs, check_stated_prefix, load_job_folder
from peptide_opt.pipeline.prepare import prepare_receptor
from peptide_opt.pipeline.types import PeptideModel

logger = logging.getLogger(__name__)

#: The steps this runner executes, in order (``upload`` belongs to the caller).
RUN_STEPS = tuple(step for step in STEPS if step != "upload")

#: Progress (percent) reached when each step finishes; ``upload`` brings it to 100.
STEP_PROGRESS = {
    "prepare": 5,
    "model": 8,
    "site": 10,
    "dock": 50,
    "score": 56,
    "assemble": 58,
    "design": 70,
    "rescore": 88,
    "analyze": 95,
}

StepCallback = Callable[[str, float], None]
CheckpointCallback = Callable[[str, Path], None]


def run_job(
    job_dir: Path,
    output_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    cores: int = 1,
    on_step: StepCallback | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    resume: bool = True,
    storage_prefix: str | None = None,
) -> dict[str, Any]:
    """Run the job of a job folder; resume after the last step in ``output_dir/.work``.

    ``storage_prefix`` is the task's prefix; a config that names another one gets a
    warning.
    """
    inputs = load_job_folder(job_dir, overrides)
    if storage_prefix is not None:
        check_stated_prefix(inputs, storage_prefix)
    return run_pipeline(
        inputs,
        output_dir,
        cores=cores,
        on_step=on_step,
        on_checkpoint=on_checkpoint,
        resume=resume,
    )


def run_pipeline(
    inputs: JobInputs,
    output_dir: Path,
    cores: int = 1,
    on_step: StepCallback | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    resume: bool = False,
    from_step: str | None = None,
    only_step: str | None = None,
) -> dict[str, Any] | None:
    """Run the steps on validated inputs and write the outputs, manifest.json last.

    ``resume`` reuses every finished step's checkpoint. ``from_step`` reuses the
    checkpoints before that step and runs it and all later ones; ``only_step`` runs that
    one step on the checkpoints before it and writes no outputs unless it is the last
    step. Returns the result record, or None when ``only_step`` stopped early.
    """
    for name, value in (("--from-step", from_step), ("--only-step", only_step)):
        if value is not None and value not in RUN_STEPS:
            raise InputError(f"{name} must be one of {', '.join(RUN_STEPS)}, got {value!r}")
    output_dir.mkdir(parents=True, exist_ok=True)
    # A manifest left by an earlier run would mark this run's partial outputs complete,
    # and its complexes would be listed with this run's.
    outputs.remove_previous_outputs(output_dir)
    log_mode = "a" if (from_step or only_step or resume) else "w"
    with _run_log(output_dir / "run.log", log_mode):
        run = _PipelineRun(inputs, output_dir, max(1, cores), on_step, on_checkpoint)
        result = run.execute(resume=resume, from_step=from_step, only_step=only_step)
    # The manifest comes last, once run.log is closed, so it lists every file as it
    # stays.
    if result is not None:
        outputs.write_manifest(output_dir)
    return result


class _PipelineRun:
    def __init__(
        self,
        inputs: JobInputs,
        output_dir: Path,
        cores: int,
        on_step: StepCallback | None,
        on_checkpoint: CheckpointCallback | None,
    ) -> None:
        self.inputs = inputs
        self.config = inputs.config
        self.output_dir = output_dir
        self.cores = cores
        self.on_step = on_step
        self.on_checkpoint = on_checkpoint
        self.timings: dict[str, float] = {}
        self.resumed: list[str] = []
        self.warnings: list[str] = list(inputs.warnings)
        fingerprint = checkpoints.input_fingerprint(
            inputs.receptor_path, inputs.peptide, self.config.to_dict()
        )
        self.checkpoints = checkpoints.Checkpoints(output_dir, fingerprint)
        # Step results, filled as steps run or load.
        self.receptor = None
        self.peptide_model: PeptideModel | None = None
        self.site = None
        self.poses: list = []
        self.complexes: list[assemble.AssembledComplex] = []
        self.pose_designs: list = []
        self.design_scores: list | None = None
        self.rounds: Any = None

    # -- the step loop ---------------------------------------------------------------

    def execute(
        self, resume: bool, from_step: str | None, only_step: str | None
    ) -> dict[str, Any] | None:
        total_start = time.perf_counter()
        first = from_step or only_step
        if first is not None:
            self._require_checkpoints_before(first)
            self.checkpoints.discard_from(list(RUN_STEPS[RUN_STEPS.index(first) :]))
        elif not resume:
            self.checkpoints.discard_from(list(RUN_STEPS))
        logger.info(
            "job_started peptide=%s receptor=%s cores=%d",
            self.inputs.peptide,
            self.inputs.receptor_path.name,
            self.cores,
        )
        result = None
        for name in RUN_STEPS:
            if not self._applies(name):
                continue
            if self.checkpoints.is_done(name):
                self._load(name)
                self.resumed.append(name)
                logger.info("step_resumed step=%s", name)
            else:
                result = self._run_step(name)
            if only_step == name:
                break
        if only_step is not None and only_step != RUN_STEPS[-1]:
            logger.info("step_only_finished step=%s", only_step)
            return None
        if result is None:
            result = self.checkpoints.load("analyze")["result"]
        # Timings cover the steps this run executed; resumed ones are listed apart.
        result["timings"] = dict(self.timings)
        result["resumed_steps"] = list(self.resumed)
        result["timings"]["total"] = round(time.perf_counter() - total_start, 3)
        if self.config.cleanup:
            self.checkpoints.clear()
        for message in result.get("warnings", []):
            logger.warning("job_warning %s", message)
        logger.info("job_finished duration=%.2fs", result["timings"]["total"])
        self._write_outputs(result)
        return result

    def _applies(self, name: str) -> bool:
        if name == "design":
            return self.config.proteinmpnn_enabled
        if name == "rescore":
            return self.config.proteinmpnn_enabled and self.config.selection == "rescore"
        return True

    def _require_checkpoints_before(self, step: str) -> None:
        missing = [
            name
            for name in RUN_STEPS[: RUN_STEPS.index(step)]
            if self._applies(name) and not self.checkpoints.is_done(name)
        ]
        if missing:
            raise InputError(
                f"cannot start at step {step}: no checkpoint of {', '.join(missing)} in "
                f"{self.checkpoints.root} (run the job with --cleanup False first, with "
                "the same inputs and settings)"
            )

    def _run_step(self, name: str) -> dict[str, Any] | None:
        logger.info("step_started step=%s", name)
        start = time.perf_counter()
        try:
            state = getattr(self, f"_step_{name}")()
        except Exception as error:
            # run.log is the record a user reads after a failed run.
            logger.error("step_failed step=%s error=%s", name, error)
            raise
        duration = time.perf_counter() - start
        self.timings[name] = round(duration, 3)
        folder = self.checkpoints.save(name, state)
        logger.info("step_finished step=%s duration=%.2fs", name, duration)
        if self.on_checkpoint is not None:
            self.on_checkpoint(name, folder)
        if self.on_step is not None:
            self.on_step(name, STEP_PROGRESS[name])
        return state.get("result") if name == "analyze" else None

    def _load(self, name: str) -> None:
        state = self.checkpoints.load(name)
        getattr(self, f"_load_{name}")(state)

    # -- steps: each runs, sets its results on self and returns its checkpoint state ---

    def _step_prepare(self) -> dict[str, Any]:
        self.receptor = prepare_receptor(self.inputs.receptor_path, self.config)
        return {"receptor": checkpoints.receptor_state(self.receptor)}

    def _load_prepare(self, state: dict[str, Any]) -> None:
        self.receptor = checkpoints.receptor_from_state(state["receptor"])

    def _step_model(self) -> dict[str, Any]:
        from rdkit import Chem

        from peptide_opt.pipeline.model import build_peptide_model

        self.peptide_model = build_peptide_model(self.inputs.peptide, self.config.docking_seed)
        binary = self.peptide_model.mol.ToBinary(Chem.PropertyPickleOptions.AllProps)
        return {
            "sequence": self.peptide_model.sequence,
            "mol": base64.b64encode(binary).decode("ascii"),
        }

    def _load_model(self, state: dict[str, Any]) -> None:
        from rdkit import Chem

        mol = Chem.Mol(base64.b64decode(state["mol"]))
        self.peptide_model = PeptideModel(sequence=state["sequence"], mol=mol)

    def _step_site(self) -> dict[str, Any]:
        from peptide_opt.pipeline.site import find_site

        self.site = find_site(self.receptor, self.config)
        return {"site": self.site}

    def _load_site(self, state: dict[str, Any]) -> None:
        self.site = checkpoints.site_from_state(state["site"])

    def _step_dock(self) -> dict[str, Any]:
        from peptide_opt.pipeline.dock import dock_peptide

        self.poses = dock_peptide(
            self.receptor, self.peptide_model, self.site, self.config, self.cores
        )
        if not self.poses:
            raise InputError(
                f"docking found no pose of {self.inputs.peptide} in the site "
                f"(centre {self.site.center}, size {self.site.size} Å)"
            )
        return {"poses": checkpoints.poses_state(self.poses)}

    def _load_dock(self, state: dict[str, Any]) -> None:
        self.poses = checkpoints.poses_from_state(state["poses"])

    def _step_score(self) -> dict[str, Any]:
        from peptide_opt.pipeline.score import score_poses

        self.poses = score_poses(self.receptor, self.site, self.poses, self.cores)
        return {"poses": checkpoints.poses_state(self.poses)}

    _load_score = _load_dock

    def _step_assemble(self) -> dict[str, Any]:
        self.complexes = [assemble.assemble_complex(self.receptor, pose) for pose in self.poses]
        return {"complexes": [vars(item) for item in self.complexes]}

    def _load_assemble(self, state: dict[str, Any]) -> None:
        self.complexes = [assemble.AssembledComplex(**item) for item in state["complexes"]]

    def _step_design(self) -> dict[str, Any]:
        from peptide_opt.pipeline.design import design_poses

        self.pose_designs = list(
            design_poses(
                [item.text for item in self.complexes],
                self.config,
                cores=self.cores,
                peptide=self.inputs.peptide,
            )
        )
        return {"pose_designs": checkpoints.designs_state(self.pose_designs)}

    def _load_design(self, state: dict[str, Any]) -> None:
        self.pose_designs = checkpoints.designs_from_state(state["pose_designs"])

    def _step_rescore(self) -> dict[str, Any]:
        from peptide_opt.pipeline import rescore

        self.design_scores = rescore.rescore_designs(
            self.receptor, self.site, self.poses, self.pose_designs, self.config, self.cores
        )
        state: dict[str, Any] = {"design_scores": self.design_scores}
        if self.config.n_iterations > 1:
            from peptide_opt.pipeline import rounds

            self.rounds = rounds.run_rounds(
                self.receptor,
                self.site,
                self.poses,
                self.pose_designs,
                self.design_scores,
                self.config,
                self.cores,
            )
            state["rounds"] = self.rounds
        return state

    def _load_rescore(self, state: dict[str, Any]) -> None:
        from peptide_opt.pipeline import rescore

        self.design_scores = [
            [rescore.DesignScore(**item) for item in pose_scores]
            for pose_scores in state["design_scores"]
        ]
        self.rounds = state.get("rounds")

    def _step_analyze(self) -> dict[str, Any]:
        from peptide_opt.pipeline.result import build_result

        result = build_result(self)
        return {"result": result}

    def _load_analyze(self, state: dict[str, Any]) -> None:
        pass

    # -- outputs ---------------------------------------------------------------------

    def _write_outputs(self, result: dict[str, Any]) -> None:
        directory = self.output_dir
        for record, assembled in zip(result["poses"], self.complexes or _complexes_of(result)):
            (directory / record["complex_file"]).write_text(assembled.text)
        for record in result["poses"]:
            design_pdb = record.pop("design_pdb_text", None)
            if design_pdb:
                (directory / record["design_file"]).write_text(design_pdb)
        outputs.write_designs_fasta(directory / "designs.fasta", result)
        outputs.write_result_csv(directory / "result.csv", result)
        outputs.write_result_json(directory / "result.json", result)


def _complexes_of(result: dict[str, Any]) -> list[assemble.AssembledComplex]:
    raise InputError("the assemble checkpoint is missing; run the job from --from-step assemble")


@contextlib.contextmanager
def _run_log(path: Path, mode: str) -> Iterator[None]:
    """Copy the package's log lines of this run into ``path`` (run.log)."""
    handler = logging.FileHandler(path, mode=mode, encoding="utf-8")
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    handler.setLevel(logging.INFO)
    package_logger = logging.getLogger("peptide_opt")
    previous_level = package_logger.level
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
        handler.close()


def remove_work_dir(output_dir: Path) -> None:
    """Remove a job's checkpoint folder."""
    shutil.rmtree(output_dir / checkpoints.WORK_DIR, ignore_errors=True)


__all__ = ["RUN_STEPS", "STEP_PROGRESS", "run_job", "run_pipeline", "__version__"]
