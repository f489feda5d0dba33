"""Docking accuracy and time on 1CZY (TRAF2 with the peptide PQQATDD).

Run: ``.venv/bin/python bench/docking_accuracy.py [--cores 2] [--poses 10] [--seed 37]``

Cases:

* **bound**: receptor = chain A of ``examples/1czy/1czy_complex.pdb``, ``site_chain=B``
  (the crystal peptide marks the box and is removed).
* **unbound**: ``examples/1czy/1czz_unbound.pdb`` superposed on chain A of the complex
  by CA atoms, docked in the bound case's box given as site_center and site_size.

Figures: backbone RMSD (N, CA, C, O; no superposition, crystal frame) of the top-1 pose
and the best of all poses against chain B, and the wall time and peak memory of the
model, site, dock and score steps. Receptors come from the pipeline's ``prepare`` step.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import gemmi
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from peptide_opt.config import build_config
from peptide_opt.engines.vina import VinaDockingEngine
from peptide_opt.pipeline.dock import dock_peptide
from peptide_opt.pipeline.model import build_peptide_model
from peptide_opt.pipeline.prepare import prepare_receptor
from peptide_opt.pipeline.score import score_poses
from peptide_opt.pipeline.site import find_site

COMPLEX = ROOT / "examples" / "1czy" / "1czy_complex.pdb"
UNBOUND = ROOT / "examples" / "1czy" / "1czz_unbound.pdb"
SEQUENCE = "PQQATDD"
BACKBONE = ("N", "CA", "C", "O")


def peptide_backbone(structure: gemmi.Structure, chain: str) -> np.ndarray:
    rows = []
    for residue in structure[0][chain]:
        for name in BACKBONE:
            rows.append(residue[name][0].pos.tolist())
    return np.array(rows)


def pose_backbone(pdb_text: str) -> np.ndarray:
    atoms = {}
    for line in pdb_text.splitlines():
        if line.startswith("ATOM"):
            atoms[(int(line[22:26]), line[12:16].strip())] = (
                float(line[30:38]),
                float(line[38:46]),
                float(line[46:54]),
            )
    numbers = sorted({number for number, _ in atoms})
    return np.array([atoms[(n, name)] for n in numbers for name in BACKBONE])


def rmsd(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((first - second) ** 2, axis=1))))


def superpose_unbound(bound: gemmi.Structure, unbound: gemmi.Structure) -> None:
    """Move the unbound structure onto chain A of the complex by CA atoms, in place."""
    reference = {
        r.seqid.num: r["CA"][0].pos for r in bound[0]["A"] if r.find_atom("CA", "*")
    }
    chain = unbound[0][0]
    fixed, moving = [], []
    for residue in chain:
        atom = residue.find_atom("CA", "*")
        if atom is not None and residue.seqid.num in reference:
            fixed.append(reference[residue.seqid.num])
            moving.append(atom.pos)
    result = gemmi.superpose_positions(fixed, moving)
    unbound[0].transform_pos_and_adp(result.transform)
    print(f"unbound superposition: {result.count} CA atoms, RMSD {result.rmsd:.2f} Å")


def run_case(name, receptor, config, crystal, cores, engine) -> None:
    started = time.perf_counter()
    peptide = build_peptide_model(SEQUENCE, seed=config.docking_seed)
    site = find_site(receptor, config)
    sited = time.perf_counter()
    poses = dock_peptide(receptor, peptide, site, config, cores, engine=engine)
    docked = time.perf_counter()
    ranked = score_poses(receptor, site, poses, cores, engine=engine)
    scored = time.perf_counter()
    deviations = [rmsd(pose_backbone(p.peptide_pdb), crystal) for p in ranked]
    print(f"== {name}")
    print(
        f"site: center {np.round(site.center, 2).tolist()} size "
        f"{np.round(site.size, 2).tolist()} ({site.source})"
    )
    for pose, deviation in zip(ranked, deviations):
        print(
            f"  rank {pose.rank:2d}  affinity {pose.affinity:7.3f}  docking "
            f"{pose.docking_affinity:7.3f}  backbone RMSD {deviation:5.2f} Å  "
            f"{pose.detail.get('backbone_template')}"
        )
    print(f"top-1 backbone RMSD: {deviations[0]:.2f} Å")
    print(f"best of {len(ranked)} backbone RMSD: {min(deviations):.2f} Å")
    print(
        f"time: model+site {sited - started:.1f} s, dock {docked - sited:.1f} s, score "
        f"{scored - docked:.1f} s, total {scored - started:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--poses", type=int, default=10)
    parser.add_argument("--seed", type=int, default=37)
    parser.add_argument("--skip-unbound", action="store_true")
    args = parser.parse_args()

    bound = gemmi.read_structure(str(COMPLEX))
    bound.setup_entities()
    crystal = peptide_backbone(bound, "B")
    engine = VinaDockingEngine()

    config = build_config(
        {"site_chain": "B", "n_poses": args.poses, "docking_seed": args.seed}
    )
    receptor = prepare_receptor(COMPLEX, config)
    run_case("1CZY bound, site_chain=B", receptor, config, crystal, args.cores, engine)
    bound_site = find_site(receptor, config)

    if not args.skip_unbound:
        unbound = gemmi.read_structure(str(UNBOUND))
        unbound.setup_entities()
        superpose_unbound(bound, unbound)
        config = build_config(
            {
                "site_center": ",".join(f"{v:.3f}" for v in bound_site.center),
                "site_size": ",".join(f"{v:.3f}" for v in bound_site.size),
                "n_poses": args.poses,
                "docking_seed": args.seed,
            }
        )
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "1czz_superposed.pdb"
            unbound.write_pdb(str(path))
            receptor = prepare_receptor(path, config)
        run_case(
            "1CZZ unbound, bound box", receptor, config, crystal, args.cores, engine
        )

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: {peak:.0f} MB")


if __name__ == "__main__":
    main()
