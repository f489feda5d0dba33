"""Chain the steps of one job and write its outputs.

:func:`run_job` is what the command line and the worker call. It reports each finished
step through ``on_step(step, progress_percent)`` and returns the result record that
result.json holds (without the platform's ``results`` list).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from peptide_opt import __version__
from peptide_opt.errors import InputError
from peptide_opt.pipeline import analyze, assemble, outputs
from peptide_opt.pipeline.inputs import JobInputs, load_job_folder
from peptide_opt.pipeline.prepare import prepare_receptor
from peptide_opt.pipeline.types import PoseDesigns

logger = logging.getLogger(__name__)

#: Progress (percent) reached when each step finishes; ``upload`` brings it to 100.
STEP_PROGRESS = {
    "prepare": 5,
    "model": 8,
    "site": 10,
    "dock": 55,
    "score": 62,
    "assemble": 64,
    "design": 85,
    "rescore": 85,
    "analyze": 90,
}

StepCallback = Callable[[str, float], None]


def run_job(
    job_dir: Path,
    output_dir: Path,
    overrides: Mapping[str, Any] | None = None,
    cores: int = 1,
    on_step: StepCallback | None = None,
) -> dict[str, Any]:
    """Run the job of a job folder and write its outputs to ``output_dir``."""
    inputs = load_job_folder(job_dir, overrides)
    return run_pipeline(inputs, output_dir, cores=cores, on_step=on_step)


def run_pipeline(
    inputs: JobInputs,
    output_dir: Path,
    cores: int = 1,
    on_step: StepCallback | None = None,
) -> dict[str, Any]:
    """Run every step on validated inputs; write the outputs, manifest.json last."""
    output_dir.mkdir(parents=True, exist_ok=True)
    # A manifest left by an earlier run would mark this run's partial outputs complete.
    (output_dir / outputs.MANIFEST_NAME).unlink(missing_ok=True)
    with _run_log(output_dir / "run.log"):
        run = _PipelineRun(inputs, output_dir, max(1, cores), on_step)
        return run.execute()


class _PipelineRun:
    def __init__(
        self,
        inputs: JobInputs,
        output_dir: Path,
        cores: int,
        on_step: StepCallback | None,
    ) -> None:
        self.inputs = inputs
        self.config = inputs.config
        self.output_dir = output_dir
        self.cores = cores
        self.on_step = on_step
        self.timings: dict[str, float] = {}
        self.warnings: list[str] = list(inputs.warnings)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        logger.info("step_started step=%s", name)
        start = time.perf_counter()
        yield
        duration = time.perf_counter() - start
        self.timings[name] = round(duration, 3)
        logger.info("step_finished step=%s duration=%.2fs", name, duration)
        if self.on_step is not None:
            self.on_step(name, STEP_PROGRESS.get(name, 0))

    def execute(self) -> dict[str, Any]:
        from peptide_opt.pipeline.dock import dock_peptide
        from peptide_opt.pipeline.model import build_peptide_model
        from peptide_opt.pipeline.score import score_poses
        from peptide_opt.pipeline.site import find_site

        config = self.config
        total_start = time.perf_counter()
        logger.info(
            "job_started peptide=%s receptor=%s cores=%d",
            self.inputs.peptide,
            self.inputs.receptor_path.name,
            self.cores,
        )
        with self.step("prepare"):
            receptor = prepare_receptor(self.inputs.receptor_path, config)
            self.warnings.extend(receptor.warnings)
        with self.step("model"):
            peptide = build_peptide_model(self.inputs.peptide, config.docking_seed)
        with self.step("site"):
            site = find_site(receptor, config)
        with self.step("dock"):
            poses = dock_peptide(receptor, peptide, site, config, self.cores)
        if not poses:
            raise InputError(
                f"docking found no pose of {self.inputs.peptide} in the site "
                f"(centre {site.center}, size {site.size} Å)"
            )
        with self.step("score"):
            poses = score_poses(receptor, site, poses, self.cores)
        with self.step("assemble"):
            complexes = [assemble.assemble_complex(receptor, pose) for pose in poses]
            for assembled in complexes:
                for warning in assembled.warnings:
                    if warning not in self.warnings:
                        self.warnings.append(warning)
        pose_designs: list[PoseDesigns | None] = [None] * len(poses)
        if config.proteinmpnn_enabled:
            from peptide_opt.pipeline.design import design_poses

            with self.step("design"):
                pose_designs = list(
                    design_poses([c.text for c in complexes], config)
                )
        else:
            self.warnings.append(
                "proteinmpnn_enabled is False: the design step was skipped and each pose "
                "reports the input peptide"
            )
        with self.step("analyze"):
            result = self.build_result(receptor, site, poses, complexes, pose_designs)
        result["timings"]["total"] = round(time.perf_counter() - total_start, 3)
        self.write_outputs(result, complexes)
        logger.info("job_finished duration=%.2fs", result["timings"]["total"])
        return result

    def build_result(self, receptor, site, poses, complexes, pose_designs) -> dict[str, Any]:
        from peptide_opt.engines.base import get_engine
        from peptide_opt.pipeline.design import choose_best_design, unique_designs

        sequence = self.inputs.peptide
        input_properties = analyze.peptide_properties(sequence)
        properties_cache: dict[str, dict[str, Any]] = {sequence: input_properties}

        def properties(seq: str) -> dict[str, Any]:
            if seq not in properties_cache:
                properties_cache[seq] = analyze.peptide_properties(seq)
            return properties_cache[seq]

        pose_records = []
        for pose, assembled, designs in zip(poses, complexes, pose_designs):
            suffix = "pdb" if assembled.format == "pdb" else "cif"
            record: dict[str, Any] = {
                "rank": pose.rank,
                "affinity": pose.affinity,
                "docking_affinity": pose.docking_affinity,
                "complex_file": f"complex{pose.rank}.{suffix}",
                "detail": pose.detail,
            }
            if designs is None:
                record["native_score"] = None
                record["native_global_score"] = None
                record["designs"] = []
                record["best_design"] = {
                    "sequence": sequence,
                    "score": None,
                    "global_score": None,
                    "properties": input_properties,
                }
            else:
                record["native_score"] = designs.native_score
                record["native_global_score"] = designs.native_global_score
                record["designs"] = [
                    {
                        "sequence": design.sequence,
                        "score": design.score,
                        "global_score": design.global_score,
                        "seq_recovery": design.seq_recovery,
                        "n_samples": count,
                        "properties": properties(design.sequence),
                    }
                    for design, count in unique_designs(designs)
                ]
                best = choose_best_design(designs)
                record["best_design"] = {
                    "sequence": best.sequence,
                    "score": best.score,
                    "global_score": best.global_score,
                    "seq_recovery": best.seq_recovery,
                    "properties": properties(best.sequence),
                }
            pose_records.append(record)

        docking_engine = get_engine("docking")
        engines = {"docking": {"name": docking_engine.name, "version": docking_engine.version}}
        if self.config.proteinmpnn_enabled:
            design_engine = get_engine("design")
            engines["design"] = {"name": design_engine.name, "version": design_engine.version}
        return {
            "peptide_opt_version": __version__,
            "input": {
                "sequence": sequence,
                "receptor_file": self.inputs.receptor_path.name,
                "receptor_chains": list(receptor.chain_ids),
                "properties": input_properties,
            },
            "site": site.to_dict(),
            "chain_map": complexes[0].chain_map if complexes else {},
            "poses": pose_records,
            "engines": engines,
            "parameters": self.config.to_dict(),
            "cores": self.cores,
            "timings": dict(self.timings),
            "warnings": list(self.warnings),
        }

    def write_outputs(self, result: dict[str, Any], complexes) -> None:
        directory = self.output_dir
        for record, assembled in zip(result["poses"], complexes):
            (directory / record["complex_file"]).write_text(assembled.text)
        outputs.write_designs_fasta(directory / "designs.fasta", result)
        outputs.write_result_csv(directory / "result.csv", result)
        outputs.write_result_json(directory / "result.json", result)
        _flush_run_log()
        outputs.write_manifest(directory)


def _flush_run_log() -> None:
    for handler in logging.getLogger("peptide_opt").handlers:
        handler.flush()


@contextlib.contextmanager
def _run_log(path: Path) -> Iterator[None]:
    """Copy the package's log lines of this run into ``path`` (run.log)."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
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
