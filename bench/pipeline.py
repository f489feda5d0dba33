"""Benchmark whole jobs: wall time per step and in total, and peak memory.

Usage::

    .venv/bin/python -m bench.pipeline 1czy     # TRAF2 + PQQATDD, site_chain=B, 10 x 10
    .venv/bin/python -m bench.pipeline 5ffg     # the platform's example job, no site given

Each job runs ``peptide-opt run`` in a child process with ``--cores 2``; peak memory is the
child's maximum resident set size (``getrusage(RUSAGE_CHILDREN)``), which includes the
docking and design engines, since they run in that process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

JOBS = {
    "1czy": [
        "--receptor", str(EXAMPLES / "1czy" / "1czy_complex.pdb"),
        "--peptide", str(EXAMPLES / "1czy" / "peptide.fasta"),
        "--site-chain", "B",
    ],
    "5ffg": ["--input-dir", str(EXAMPLES / "5ffg")],
}


def run_job(name: str, extra: list[str], cores: int) -> dict:
    """Run one job; return its result.json timings, wall time and peak RSS (MB)."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as temporary:
        output = Path(temporary) / "output"
        command = [
            sys.executable, "-m", "peptide_opt.cli", "run", *JOBS[name],
            "--cores", str(cores), "--output-dir", str(output), *extra,
        ]
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if completed.returncode != 0:
            raise SystemExit(f"{name} failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
        result = json.loads((output / "result.json").read_text())
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"result": result, "wall_s": wall, "peak_rss_mb": peak_kb / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="more options for peptide-opt run (after --)")
    args = parser.parse_args()
    figures = run_job(args.job, args.extra, args.cores)
    timings = figures["result"]["timings"]
    print(f"job {args.job}: {len(figures['result']['poses'])} poses, cores {args.cores}")
    for step, seconds in timings.items():
        if step != "total":
            print(f"  {step:<10} {seconds:8.1f} s")
    print(f"  {'pipeline':<10} {timings['total']:8.1f} s (inside the run)")
    print(f"  {'wall':<10} {figures['wall_s']:8.1f} s (process start to exit)")
    print(f"  peak RSS  {figures['peak_rss_mb']:8.0f} MB")
    best = figures["result"]["poses"][0]
    print(f"  rank 1: affinity {best['affinity']:.2f} kcal/mol, best design {best['best_design']['sequence']}")


if __name__ == "__main__":
    main()
