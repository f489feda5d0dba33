"""The README's example job end to end: `peptide-opt run` on 1CZY, 10 poses x 10 designs."""

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import gemmi
import pytest

from peptide_opt.pipeline.outputs import RESULT_COLUMNS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PLATFORM_KEYS = (
    "originalSequence",
    "originalSequenceAffinityScore",
    "originalSequenceGlobalScore",
    "optimalSequence",
    "globalScore",
    "molecularWeight",
    "isoelectricPoint",
    "aromaticity",
    "instabilityIndex",
    "hydrophobicity",
    "hydrophilicity",
    "secondaryStructureFraction",
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job_output(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("1czy") / "output"
    completed = subprocess.run(
        [
            sys.executable, "-m", "peptide_opt.cli", "run",
            "--receptor", str(EXAMPLES / "1czy" / "1czy_complex.pdb"),
            "--peptide", str(EXAMPLES / "1czy" / "peptide.fasta"),
            "--site-chain", "B",
            "--selection", "mpnn",
            "--cores", "2",
            "--output-dir", str(output),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return output


@pytest.fixture(scope="module")
def result(job_output) -> dict:
    return json.loads((job_output / "result.json").read_text())


def test_result_csv_has_platform_layout(job_output):
    with (job_output / "result.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == RESULT_COLUMNS
    labels = [row[0] for row in rows[1:]]
    assert labels == ["Input peptide property"] + [f"Docking result rank {i}" for i in range(1, 11)]
    assert rows[1][3] == "PQQATDD"
    assert rows[1][1] == rows[1][2] == rows[1][4] == "-"


def test_poses_ranked_by_affinity(result):
    affinities = [pose["affinity"] for pose in result["poses"]]
    assert len(affinities) == 10
    assert affinities == sorted(affinities)
    # A bound 7-residue peptide in its groove scores well below zero kcal/mol in Vina.
    assert affinities[0] < -3.0


def test_best_design_has_lowest_score(result):
    for pose in result["poses"]:
        designs = pose["designs"]
        assert designs, f"pose {pose['rank']} has no designs"
        assert sum(d["n_samples"] for d in designs) == 10
        assert len({d["sequence"] for d in designs}) == len(designs)
        lowest = min(designs, key=lambda design: design["score"])
        assert pose["best_design"]["sequence"] == lowest["sequence"]
        assert all(len(d["sequence"]) == 7 for d in designs)


def test_result_json_platform_list(result):
    entries = result["results"]
    assert len(entries) == 10
    for entry, pose in zip(entries, result["poses"]):
        assert all(key in entry for key in PLATFORM_KEYS)
        assert entry["originalSequence"] == "PQQATDD"
        assert entry["originalSequenceAffinityScore"] == pose["affinity"]
        assert entry["optimalSequence"] == pose["best_design"]["sequence"]
    assert result["site"]["source"] == "site_chain"
    assert set(result["timings"]) >= {"prepare", "model", "site", "dock", "score", "assemble", "design", "analyze", "total"}
    assert result["engines"]["design"]["name"] == "proteinmpnn"
    assert result["chain_map"] == {"A": "peptide", "B": "A"}


def test_complexes_hold_peptide_then_receptor(job_output):
    for rank in range(1, 11):
        structure = gemmi.read_structure(str(job_output / f"complex{rank}.pdb"))
        chains = [chain.name for chain in structure[0]]
        assert chains == ["A", "B"]
        peptide = gemmi.one_letter_code([r.name for r in structure[0]["A"]])
        assert peptide == "PQQATDD"
        # TRAF2 chain A of 1CZY has 168 residues.
        assert len(structure[0]["B"]) == 168


def test_manifest_lists_every_output(job_output):
    manifest = json.loads((job_output / "manifest.json").read_text())
    names = {entry["name"] for entry in manifest["files"]}
    expected = {"result.csv", "result.json", "designs.fasta", "run.log"}
    expected |= {f"complex{i}.pdb" for i in range(1, 11)}
    assert names == expected
    for entry in manifest["files"]:
        data = (job_output / entry["name"]).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    # cleanup=True (the default) removes the checkpoints once the job ends.
    assert not (job_output / ".work").exists()
