"""Benchmark of the rescore step on the example jobs: time per design and affinity gain.

Runs the pipeline's steps up to ``rescore`` on 1CZY (receptor chain A of
examples/1czy/1czy_complex.pdb, peptide PQQATDD, site_chain=B) and on the 5FFG job
folder (examples/5ffg, its own config), then prints, per case:

- the time of each step, the rescore time per design and the whole job's time;
- for the design chosen by ``selection=rescore`` on each pose: the fraction of poses
  where it scores better than the input peptide (affinity_delta < 0) and the mean
  affinity_delta in kcal/mol, and the same against the input sequence relaxed the same
  way (relaxed_delta);
- the same figures for the design ``selection=mpnn`` would choose, for comparison.

``--threading-only`` times the threading alone (no docking, no Vina): the designs
ProteinMPNN makes for 1CZY's crystal pose, threaded one after the other.

Usage::

    .venv/bin/python bench/rescore.py [--case 1czy|5ffg|all] [--poses N] [--designs N]
        [--cores N] [--threading-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("1czy", "5ffg", "all"), default="all")
    parser.add_argument("--poses", type=int, default=10, help="docking poses per job")
    parser.add_argument("--designs", type=int, default=10, help="designs per pose")
    parser.add_argument("--cores", type=int, default=2, help="CPU cores to use")
    parser.add_argument(
        "--cache",
        type=Path,
        help="folder that keeps each case's scored poses and designs between runs, so "
        "that a rerun measures the rescore step only",
    )
    parser.add_argument(
        "--threading-only",
        action="store_true",
        help="time threading on the 1CZY crystal pose only (no docking, no Vina)",
    )
    args = parser.parse_args()
    if args.threading_only:
        time_threading(args.designs)
        return 0
    cases = ("1czy", "5ffg") if args.case == "all" else (args.case,)
    for case in cases:
        run_case(case, args.poses, args.designs, args.cores, args.cache)
    return 0


def case_inputs(case: str, n_poses: int, n_designs: int):
    from peptide_opt.pipeline.inputs import load_files, load_job_folder

    overrides = {
        "n_poses": n_poses,
        "num_seq_per_target": n_designs,
        "selection": "rescore",
    }
    if case == "1czy":
        overrides["site_chain"] = "B"
        return load_files(EXAMPLES / "1czy" / "1czy_complex.pdb", "PQQATDD", overrides)
    return load_job_folder(EXAMPLES / "5ffg", overrides)


def run_case(
    case: str, n_poses: int, n_designs: int, cores: int, cache: Path | None
) -> None:
    from peptide_opt.engines.base import get_engine
    from peptide_opt.pipeline.assemble import assemble_complex
    from peptide_opt.pipeline.design import design_poses
    from peptide_opt.pipeline.dock import dock_peptide
    from peptide_opt.pipeline.model import build_peptide_model
    from peptide_opt.pipeline.prepare import prepare_receptor
    from peptide_opt.pipeline.rescore import DesignScore, choose_design, rescore_designs
    from peptide_opt.pipeline.score import score_poses
    from peptide_opt.pipeline.site import find_site

    inputs = case_inputs(case, n_poses, n_designs)
    config = inputs.config
    timings: dict[str, float] = {}
    job_start = time.perf_counter()

    def timed(name, function, *args, **kwargs):
        start = time.perf_counter()
        value = function(*args, **kwargs)
        timings[name] = time.perf_counter() - start
        return value

    cached = _load_cache(cache, case, n_poses, n_designs)
    if cached is None:
        receptor = timed("prepare", prepare_receptor, inputs.receptor_path, config)
        model = timed("model", build_peptide_model, inputs.peptide, config.docking_seed)
        site = timed("site", find_site, receptor, config)
        poses = timed("dock", dock_peptide, receptor, model, site, config, cores)
        poses = timed("score", score_poses, receptor, site, poses, cores)
        complexes = timed(
            "assemble", lambda: [assemble_complex(receptor, pose) for pose in poses]
        )
        designs = timed("design", design_poses, [c.text for c in complexes], config)
        _save_cache(cache, case, n_poses, n_designs, receptor, site, poses, designs)
    else:
        receptor, site, poses, designs = cached
        print(f"  (poses and designs of {case} read from {cache})")
    scores = timed(
        "rescore",
        rescore_designs,
        receptor,
        site,
        poses,
        designs,
        config,
        cores,
        engine=get_engine("docking"),
    )
    total = time.perf_counter() - job_start

    n_rescored = sum(len(pose_scores) for pose_scores in scores)
    print(f"== {case}: peptide {inputs.peptide}, {len(poses)} poses, cores {cores}")
    for name, seconds in timings.items():
        print(f"  {name:<9} {seconds:8.1f} s")
    print(f"  total     {total:8.1f} s (steps prepare..rescore)")
    print(
        f"  rescore per design: {timings['rescore'] / max(1, n_rescored):.2f} s "
        f"({n_rescored} distinct designs)"
    )
    for selection in ("rescore", "mpnn"):
        chosen = [
            choose_design(pose, pose_designs, pose_scores, selection)
            for pose, pose_designs, pose_scores in zip(poses, designs, scores)
        ]
        by_sequence = [
            {item.sequence: item for item in pose_scores} for pose_scores in scores
        ]
        picked = [
            table[item.sequence]
            for item, table in zip(chosen, by_sequence)
            if item is not None
            and item.sequence in table
            and table[item.sequence].affinity_delta is not None
            and table[item.sequence].relaxed_delta is not None
        ]
        report(f"selection={selection}", picked)
    for pose, pose_designs, pose_scores in zip(poses, designs, scores):
        best = choose_design(pose, pose_designs, pose_scores, "rescore")
        if not isinstance(best, DesignScore) or best.affinity_delta is None:
            continue
        print(
            f"    pose {pose.rank}: input {pose.affinity:7.2f}  chosen {best.sequence} "
            f"{best.affinity:7.2f} (delta {best.affinity_delta:+.2f}, relaxed delta "
            f"{_signed(best.relaxed_delta)}, score {best.score:.3f} vs input "
            f"{pose_designs.native_score:.3f})"
        )
    sys.stdout.flush()


def _cache_path(cache: Path, case: str, n_poses: int, n_designs: int) -> Path:
    return cache / f"{case}-{n_poses}x{n_designs}.json"


def _save_cache(cache, case, n_poses, n_designs, receptor, site, poses, designs):
    if cache is None:
        return
    import dataclasses
    import json

    cache.mkdir(parents=True, exist_ok=True)
    state = {
        "receptor": dataclasses.asdict(receptor) | {"site_marker_xyz": None},
        "site": dataclasses.asdict(site),
        "poses": [dataclasses.asdict(pose) for pose in poses],
        "designs": [dataclasses.asdict(item) for item in designs],
    }
    _cache_path(cache, case, n_poses, n_designs).write_text(json.dumps(state))


def _load_cache(cache, case, n_poses, n_designs):
    if cache is None or not _cache_path(cache, case, n_poses, n_designs).is_file():
        return None
    import json

    from peptide_opt.pipeline.types import Design, Pose, PoseDesigns, Receptor, Site

    state = json.loads(_cache_path(cache, case, n_poses, n_designs).read_text())
    receptor = Receptor(**state["receptor"])
    receptor.chain_ids = tuple(receptor.chain_ids)
    site_state = state["site"]
    site = Site(
        tuple(site_state["center"]),
        tuple(site_state["size"]),
        site_state["source"],
        site_state["detail"],
    )
    poses = [Pose(**pose) for pose in state["poses"]]
    designs = []
    for item in state["designs"]:
        item["designs"] = [Design(**design) for design in item["designs"]]
        designs.append(PoseDesigns(**item))
    return receptor, site, poses, designs


def time_threading(n_designs: int) -> None:
    from peptide_opt.config import build_config
    from peptide_opt.engines.proteinmpnn import ProteinMPNNEngine
    from peptide_opt.engines.sidechains import SideChainEngine
    from peptide_opt.pipeline.assemble import assemble_complex
    from peptide_opt.pipeline.design import unique_designs
    from peptide_opt.pipeline.prepare import prepare_receptor
    from peptide_opt.pipeline.types import Pose

    sys.path.insert(0, str(ROOT))
    from tests.fixtures.rescore import CRYSTAL, crystal_peptide_pdb

    receptor = prepare_receptor(CRYSTAL, build_config({"site_chain": "B"}))
    pose = Pose(peptide_pdb=crystal_peptide_pdb(), docking_affinity=0.0, rank=1)
    complex_pdb = assemble_complex(receptor, pose).text
    # T=0.3 so that the designs differ; at the default 0.1 most samples repeat.
    designs = ProteinMPNNEngine().design(complex_pdb, "A", n_designs, 0.3, 37)
    sequences = [design.sequence for design, _ in unique_designs(designs)]
    engine = SideChainEngine()
    start = time.perf_counter()
    shell = engine.build_shell(receptor.pdb_text, pose.peptide_pdb)
    shell_seconds = time.perf_counter() - start
    seconds, cpu_seconds = [], []
    for sequence in sequences:
        start, cpu_start = time.perf_counter(), time.process_time()
        threaded = engine.thread(shell, pose.peptide_pdb, sequence)
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        print(
            f"  {sequence}  {seconds[-1]:5.2f} s (CPU {cpu_seconds[-1]:5.2f} s)  "
            f"{len(threaded.mutated_positions)} "
            f"mutations  backbone RMSD {threaded.backbone_rmsd:.2f} A  interaction "
            f"{threaded.interaction_energy:8.1f} kcal/mol"
        )
    print(
        f"== threading on 1CZY: shell {shell_seconds:.2f} s, {len(seconds)} designs, "
        f"per design median {statistics.median(seconds):.2f} s, max "
        f"{max(seconds):.2f} s; CPU time median {statistics.median(cpu_seconds):.2f} s"
    )


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def report(label: str, picked) -> None:
    if not picked:
        print(f"  {label}: no re-scored designs")
        return
    deltas = [item.affinity_delta for item in picked]
    relaxed = [item.relaxed_delta for item in picked]
    better = sum(delta < 0 for delta in deltas)
    better_relaxed = sum(delta < 0 for delta in relaxed)
    print(
        f"  {label}: better than the input on {better}/{len(deltas)} poses "
        f"({100 * better / len(deltas):.0f} %), mean delta "
        f"{statistics.mean(deltas):+.2f} kcal/mol; against the relaxed input "
        f"{better_relaxed}/{len(relaxed)} "
        f"({100 * better_relaxed / len(relaxed):.0f} %), "
        f"mean {statistics.mean(relaxed):+.2f} kcal/mol"
    )


if __name__ == "__main__":
    raise SystemExit(main())
