"""``peptide-opt run``: run one job on this machine, without the task system."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peptide_opt.config import PARSERS
from peptide_opt.errors import InputError
from peptide_opt.logs import configure_logging
from peptide_opt.pipeline import STEPS
from peptide_opt.settings import available_cores

logger = logging.getLogger(__name__)

#: Short option names for the most used keys.
SHORT_FORMS = {
    "n_poses": "--poses",
    "num_seq_per_target": "--designs",
    "proteinmpnn_seed": "--seed",
}

#: Help text per config key (the value's meaning and unit).
KEY_HELP = {
    "n_poses": "docking poses to keep, 1-50 (default 10)",
    "num_seq_per_target": "ProteinMPNN designs per pose, 1-100 (default 10)",
    "proteinmpnn_seed": "ProteinMPNN random seed (default 37)",
    "n_iterations": "design rounds, 1-10 (default 1)",
    "cleanup": "remove intermediate results when the job ends, True or False",
    "proteinmpnn_enabled": "run the design step, True or False (default True)",
    "receptor_pdb_filename": "receptor file name inside the job folder",
    "peptide_sequence": "peptide sequence as the config file states it (checked only)",
    "storage_prefix": "storage prefix as the config file states it (checked only)",
    "receptor_storage_key": "receptor key as the config file states it (checked only)",
    "receptor_chains": "receptor chains, e.g. A or A,B (default: all protein chains "
    "but --site-chain)",
    "site_chain": "chain that marks the site; it is removed from the receptor",
    "site_center": "site box centre x,y,z in Å (write --site-center=-21.7,12.1,27.3 "
    "when x is negative)",
    "site_size": "site box edges x,y,z in Å, each 5-40",
    "site_margin": "margin around --site-chain in Å, 0-20 (default 8)",
    "ph": "pH for receptor hydrogens, 0-14 (default 7.4)",
    "docking_seed": "docking random seed, >= 0 (default 37)",
    "sampling_temperature": "ProteinMPNN sampling temperature, 0.01-1.0 (default 0.1)",
    "fixed_positions": "1-based peptide positions every design keeps, e.g. 8-10,15",
    "keep_motif": "motif every design keeps wherever it occurs, e.g. RGD",
    "omit_amino_acids": "amino acids no design may use, e.g. C",
    "aa_bias": "per-amino-acid sampling bias, e.g. W:1.5,P:-1",
    "selection": "how a pose's best design is chosen: rescore or mpnn",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help="run one job on this machine",
        description="Run the whole pipeline on one job and write result.csv, "
        "result.json, the complexes and manifest.json. Exit code 0 on success, 2 on "
        "bad input, 1 on failure.",
    )
    source = parser.add_argument_group("input (one of the three forms)")
    source.add_argument("--receptor", type=Path, help="receptor file (PDB or mmCIF)")
    source.add_argument(
        "--peptide", help="peptide sequence, FASTA text or a FASTA file (with --receptor)"
    )
    source.add_argument(
        "--input-dir",
        type=Path,
        help="job folder with peptide.fasta, the receptor and optimization_config.txt",
    )
    source.add_argument(
        "--storage-prefix",
        help="job prefix in the configured storage (STORAGE_BACKEND); results are "
        "written back under PREFIX/output/",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("output"),
        help="folder for the results (default ./output)",
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=None,
        help="CPU cores to use (default: all available to this process)",
    )
    parser.add_argument(
        "--from-step",
        choices=[step for step in STEPS if step != "upload"],
        help="rerun from this step on the checkpoints of a kept job (an earlier run "
        "into the same --output-dir with --cleanup False)",
    )
    parser.add_argument(
        "--only-step",
        choices=[step for step in STEPS if step != "upload"],
        help="run only this step on the checkpoints of a kept job",
    )
    keys = parser.add_argument_group("job settings (override optimization_config.txt)")
    for key in PARSERS:
        if key == "storage_prefix":
            continue  # the --storage-prefix input form above
        names = [f"--{key.replace('_', '-')}"]
        if key in SHORT_FORMS:
            names.append(SHORT_FORMS[key])
        keys.add_argument(*names, dest=key, metavar="VALUE", help=KEY_HELP.get(key))
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Run the job the arguments describe; return the exit code."""
    configure_logging(debug=args.debug)
    overrides = {
        key: getattr(args, key)
        for key in PARSERS
        if key != "storage_prefix" and getattr(args, key) is not None
    }
    if args.cores is not None and args.cores < 1:
        raise InputError(f"--cores must be at least 1, got {args.cores}")
    cores = args.cores or available_cores()
    forms = [
        args.receptor is not None or args.peptide is not None,
        args.input_dir is not None,
        args.storage_prefix is not None,
    ]
    if sum(forms) != 1:
        raise InputError(
            "give exactly one input form: --receptor FILE --peptide SEQUENCE, "
            "--input-dir DIR, or --storage-prefix PREFIX"
        )
    _check_output_dir(args.output_dir)
    progress = _Progress()
    if args.storage_prefix is not None:
        result = _run_from_storage(args.storage_prefix, args.output_dir, overrides, cores, progress)
    else:
        inputs = _load_inputs(args, overrides)
        from peptide_opt.pipeline.runner import run_pipeline

        result = run_pipeline(
            inputs,
            args.output_dir,
            cores=cores,
            on_step=progress.step,
            from_step=args.from_step,
            only_step=args.only_step,
        )
    progress.close()
    if result is None:
        print(f"Step {args.only_step} finished; its checkpoint is in {args.output_dir}/.work/")
        return 0
    _print_summary(result, args.output_dir)
    return 0


def _load_inputs(args: argparse.Namespace, overrides: dict[str, Any]):
    from peptide_opt.pipeline.inputs import load_files, load_job_folder

    if args.input_dir is not None:
        return load_job_folder(args.input_dir, overrides)
    if args.receptor is None or args.peptide is None:
        raise InputError("--receptor and --peptide must be given together")
    return load_files(args.receptor, args.peptide, overrides)


def _run_from_storage(
    prefix: str, output_dir: Path, overrides: dict[str, Any], cores: int, progress
) -> dict[str, Any]:
    from peptide_opt.pipeline.inputs import check_stated_prefix, load_job_folder
    from peptide_opt.pipeline.runner import run_pipeline
    from peptide_opt.settings import Settings
    from peptide_opt.storage import (
        fetch_job_inputs_sync,
        resolve_job_prefix,
        upload_outputs_sync,
    )

    settings = Settings.from_env()
    prefix = resolve_job_prefix(prefix)
    with tempfile.TemporaryDirectory(prefix="peptide-opt-job-") as temporary:
        job_dir = fetch_job_inputs_sync(settings, prefix, Path(temporary))
        inputs = load_job_folder(Path(job_dir), overrides)
        check_stated_prefix(inputs, prefix)
        result = run_pipeline(inputs, output_dir, cores=cores, on_step=progress.step)
    started = time.perf_counter()
    upload_outputs_sync(settings, prefix, output_dir)
    progress.step("upload", 100)
    logger.info("step_finished step=upload duration=%.2fs", time.perf_counter() - started)
    return result


class _Progress:
    """Show one line per finished step: a progress bar on a terminal, log lines otherwise."""

    def __init__(self) -> None:
        self.bar = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                transient=False,
            )
            self.bar.start()
            self.task = self.bar.add_task("prepare", total=100)

    def step(self, name: str, percent: float) -> None:
        if self.bar is not None:
            following = STEPS[STEPS.index(name) + 1] if name in STEPS[:-1] else "done"
            self.bar.update(self.task, completed=percent, description=following)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=100, description="done")
            self.bar.stop()


def _check_output_dir(path: Path) -> None:
    """Create the output folder, or raise InputError when it cannot be one."""
    if path.exists() and not path.is_dir():
        raise InputError(f"output folder {path}: a file of that name exists")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(
            f"output folder {path}: cannot be created ({error.strerror})"
        ) from None


def _print_summary(result: dict[str, Any], output_dir: Path) -> None:
    print(f"Results in {output_dir}/ (result.csv, result.json, complexes)")
    print(f"{'rank':>4}  {'affinity':>9}  {'best design':<{max(11, len(result['input']['sequence']))}}  score")
    for pose in result["poses"]:
        best = pose["best_design"]
        score = "-" if best.get("score") is None else f"{best['score']:.4f}"
        print(
            f"{pose['rank']:>4}  {pose['affinity']:>9.3f}  "
            f"{best['sequence']:<{max(11, len(best['sequence']))}}  {score}"
        )
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
