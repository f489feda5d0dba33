"""Design controls: kept positions and motifs, excluded amino acids, receptor unchanged."""

import json
import subprocess
import sys
from pathlib import Path

import gemmi
import numpy as np
import pytest

from peptide_opt.config import build_config
from peptide_opt.errors import InputError
from peptide_opt.pipeline.design import kept_positions, motif_positions
from peptide_opt.pipeline.inputs import load_files
from peptide_opt.pipeline.prepare import prepare_receptor

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RECEPTOR = EXAMPLES / "1czy" / "1czy_complex.pdb"


def test_motif_positions_every_occurrence():
    assert motif_positions("GNGVPNLRGDLQVLGQRVGRT", "RGD") == [8, 9, 10]
    # Overlapping occurrences both count.
    assert motif_positions("AAAA", "AA") == [1, 2, 3, 4]


def test_kept_positions_union_of_ranges_and_motif():
    config = build_config({"fixed_positions": "1-2,5", "keep_motif": "RGD"})
    assert kept_positions(config, "GNGVPNLRGDLQVLGQRVGRT") == [1, 2, 5, 8, 9, 10]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"fixed_positions": "8"}, "position 8 is past the peptide's length of 7 residues"),
        ({"keep_motif": "RGD"}, "keep_motif RGD does not occur in the peptide PQQATDD"),
        ({"fixed_positions": "1-7"}, "keep all 7 residues of PQQATDD"),
        ({"keep_motif": "RXD"}, "'X' at position 2 is not one of the 20 standard amino acids"),
        ({"omit_amino_acids": "ACDEFGHIKLMNPQRSTVWY"}, "excludes all 20 amino acids"),
    ],
)
def test_bad_controls_rejected_before_any_step(values, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        load_files(RECEPTOR, "PQQATDD", values)


def xyz(chain: gemmi.Chain) -> np.ndarray:
    """Coordinates ordered by residue number and atom name (writers order H differently)."""
    atoms = sorted(
        ((residue.seqid.num, residue.seqid.icode, atom.name), atom.pos.tolist())
        for residue in chain
        for atom in residue
    )
    return np.array([position for _, position in atoms])


@pytest.mark.slow
def test_controls_respected_and_receptor_unchanged(tmp_path):
    output = tmp_path / "out"
    completed = subprocess.run(
        [
            sys.executable, "-m", "peptide_opt.cli", "run",
            "--receptor", str(RECEPTOR), "--peptide", "PQQATDD", "--site-chain", "B",
            "--poses", "2", "--designs", "4", "--fixed-positions", "1",
            "--keep-motif", "TDD", "--omit-amino-acids", "C,W", "--cores", "2",
            "--output-dir", str(output),
        ],
        capture_output=True, text=True, timeout=1800,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads((output / "result.json").read_text())
    assert result["selection"] == "rescore"

    for pose in result["poses"]:
        for design in pose["designs"]:
            sequence = design["sequence"]
            assert sequence[0] == "P", sequence  # fixed position 1
            assert sequence[4:] == "TDD", sequence  # motif at 5-7
            assert "C" not in sequence, sequence
            assert "W" not in sequence, sequence
            assert "affinity" in design
            assert "contacts" in design

    # Every receptor chain of every output structure equals the prepared receptor.
    prepared = gemmi.read_pdb_string(
        prepare_receptor(RECEPTOR, build_config({"site_chain": "B"})).pdb_text
    )[0]
    chain_map = result["chain_map"]
    files = [f"complex{pose['rank']}.pdb" for pose in result["poses"]]
    files += [pose["design_file"] for pose in result["poses"] if "design_file" in pose]
    assert any(name.startswith("design") for name in files)
    for name in files:
        model = gemmi.read_structure(str(output / name))[0]
        for new_id, original_id in chain_map.items():
            if original_id == "peptide":
                continue
            ours, theirs = model[new_id], prepared[original_id]
            assert gemmi.one_letter_code([r.name for r in ours]) == gemmi.one_letter_code(
                [r.name for r in theirs]
            )
            # The test prepares the receptor again; OpenMM's CPU minimizer sums in a
            # thread-dependent order, so hydrogens land up to ~0.03 Å apart between
            # two preparations. A moved or repacked receptor differs by Ångströms.
            np.testing.assert_allclose(xyz(ours), xyz(theirs), atol=0.05)
