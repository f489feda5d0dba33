"""Time and memory of setting one peptide as a Vina ligand.

Run: ``.venv/bin/python bench/vina_ligand_cost.py [SEQUENCE] [--truncated]``

Vina 1.2.7 tabulates every intramolecular atom pair when a ligand is set, so the cost
grows with the square of the PDBQT atom count. The peptide is built in the
polyproline II state and set on an empty 30 Å grid (no receptor is needed for the
ligand set-up). Each run uses a fresh process, so ``ru_maxrss`` is this ligand's peak.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vina import Vina

from peptide_opt.engines import peptide_builder
from peptide_opt.engines.vina import ligand_pdbqt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sequence", nargs="?", default="PQQATDD")
    parser.add_argument(
        "--truncated", action="store_true", help="cut side chains to CB"
    )
    args = parser.parse_args()

    mol = peptide_builder.build_peptide(args.sequence)
    peptide_builder.embed(mol, 1)
    ensemble = dict(peptide_builder.backbone_ensemble(mol, 0, np.random.default_rng(0)))
    mol = ensemble["ppii"]
    if args.truncated:
        mol = peptide_builder.truncate_side_chains(mol)
    text = ligand_pdbqt(mol, rigid="all" if args.truncated else "none").text
    n_atoms = sum(1 for line in text.splitlines() if line.startswith("ATOM"))

    grid = Vina(sf_name="vina", cpu=1, verbosity=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu, wall = time.process_time(), time.perf_counter()
    grid.set_ligand_from_string(text)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.sequence} ({'CB-truncated' if args.truncated else 'full'}): "
        f"{n_atoms} PDBQT atoms, set-up {cpu:.1f} s CPU / {wall:.1f} s wall, "
        f"peak memory {before:.0f} MB before, {after:.0f} MB after"
    )


if __name__ == "__main__":
    main()
