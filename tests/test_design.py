"""The best-design rule, the FASTA parser and the design step's inputs.

The reference data are the ProteinMPNN outputs of the previous implementation for the
5FFG job (``examples/5ffg/upstream_output``): ten FASTA files, one per docking pose, and
the ``result.csv`` built from them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from peptide_opt.errors import InputError
from peptide_opt.pipeline.design import (
    choose_best_design,
    parse_mpnn_fasta,
    parse_positions,
    unique_designs,
)
from peptide_opt.pipeline.types import Design, PoseDesigns

N_POSES = 10

#: Lowest-score design of each 5FFG pose file: (sample number, score, sequence), read
#: from proteinmpnn_pose{1..10}.fa.
EXPECTED_BEST = {
    1: (7, 1.3450, "GNGPVYERGKLEDELLKKLAK"),
    2: (7, 1.4716, "PTSLEYILQDTLQALLDVLGG"),
    3: (5, 1.3229, "GGLSLPGILDSLLQALISSLL"),
    4: (6, 1.4066, "EEEDEKAAGRDPERGQLEGSL"),
    5: (9, 1.4049, "GEHLEDALKSAAVLGGTAPGL"),
    6: (5, 1.2753, "GGSLLDRLADLLAVLLARLVG"),
    7: (4, 1.4846, "GSSDLEAILESDALAEALNTG"),
    8: (1, 1.3236, "LDPDLLQSLLDYIRGTLIGEF"),
    9: (4, 1.5607, "GSGREENEEEEERLLEELLTS"),
    10: (6, 1.4211, "GLSSPEDLLNRLLNEILSSLS"),
}


@pytest.fixture(scope="module")
def upstream_dir(examples_dir: Path) -> Path:
    return examples_dir / "5ffg" / "upstream_output"


@pytest.fixture(scope="module")
def upstream_poses(upstream_dir: Path) -> dict[int, PoseDesigns]:
    return {
        index: parse_mpnn_fasta(
            (upstream_dir / f"proteinmpnn_pose{index}.fa").read_text()
        )
        for index in range(1, N_POSES + 1)
    }


@pytest.fixture(scope="module")
def upstream_rows(upstream_dir: Path) -> list[dict[str, str]]:
    with (upstream_dir / "result.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _design(sequence: str, score: float, sample: int) -> Design:
    return Design(
        sequence=sequence,
        score=score,
        global_score=1.5,
        seq_recovery=0.5,
        sample=sample,
        temperature=0.1,
    )


def _pose(*designs: Design) -> PoseDesigns:
    return PoseDesigns(
        native_sequence="PQQATDD",
        native_score=1.3,
        native_global_score=1.5,
        designs=list(designs),
    )


# -- FASTA parser ----------------------------------------------------------------------


def test_parse_fasta_native_record(upstream_poses):
    # First record of proteinmpnn_pose1.fa: score=2.6570, global_score=1.5351.
    pose = upstream_poses[1]
    assert pose.native_sequence == "GNGVPNLRGDLQVLGQRVGRT"
    assert pose.native_score == pytest.approx(2.6570, abs=1e-9)
    assert pose.native_global_score == pytest.approx(1.5351, abs=1e-9)


def test_parse_fasta_sample_records(upstream_poses):
    # Second record of proteinmpnn_pose1.fa: T=0.1, sample=1, score=1.4655,
    # global_score=1.5056, seq_recovery=0.2381.
    pose = upstream_poses[1]
    assert len(pose.designs) == 10
    first = pose.designs[0]
    assert first.sequence == "GGGPVYLNGELTDKLLELLSR"
    assert first.sample == 1
    assert first.temperature == pytest.approx(0.1)
    assert first.score == pytest.approx(1.4655, abs=1e-9)
    assert first.global_score == pytest.approx(1.5056, abs=1e-9)
    assert first.seq_recovery == pytest.approx(0.2381, abs=1e-9)
    assert [design.sample for design in pose.designs] == list(range(1, 11))


def test_parse_fasta_wrapped_sequence():
    text = (
        ">x, score=1.0000, global_score=2.0000, fixed_chains=['B', 'C'], "
        "designed_chains=['A'], model_name=v_48_020, git_hash=unknown, seed=37\n"
        "PQQ\nATDD\n"
        ">T=0.1, sample=1, score=0.5000, global_score=1.5000, seq_recovery=0.2857\n"
        "PTP\nATDD\n"
    )
    pose = parse_mpnn_fasta(text)
    assert pose.native_sequence == "PQQATDD"
    assert pose.designs[0].sequence == "PTPATDD"
    assert pose.native_global_score == 2.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no records"),
        ("PQQATDD\n", "before the first '>' header"),
        (">x, global_score=1.0\nPQQ\n", "lacks the field 'score'"),
        (">x, score=1.0, global_score=abc\nPQQ\n", "is not a number"),
        (
            ">x, score=1.0, global_score=1.0\nPQQ\n>T=0.1, sample=1, score=1.0\nPTP\n",
            "record 2 lacks the field 'global_score'",
        ),
    ],
)
def test_parse_fasta_malformed(text, message):
    with pytest.raises(InputError, match=message):
        parse_mpnn_fasta(text)


# -- best-design rule ------------------------------------------------------------------


@pytest.mark.parametrize("pose_index", sorted(EXPECTED_BEST))
def test_best_design_lowest_score(upstream_poses, pose_index):
    pose = upstream_poses[pose_index]
    best = choose_best_design(pose)
    sample, score, sequence = EXPECTED_BEST[pose_index]

    assert best is not None
    assert best.score == min(design.score for design in pose.designs)
    assert best.sample == sample
    assert best.score == pytest.approx(score, abs=1e-9)
    assert best.sequence == sequence


def test_previous_result_ranks_map_to_pose_files(upstream_poses, upstream_rows):
    # The previous result.csv lists its poses as "Docking result rank i". Its "Original
    # sequence global score" of rank i equals the native global_score of
    # proteinmpnn_pose{i}.fa and of no other file, so rank i is pose file i.
    ranked_rows = upstream_rows[1:]
    assert [row["Index"] for row in ranked_rows] == [
        f"Docking result rank {rank}" for rank in range(1, N_POSES + 1)
    ]
    for rank, row in enumerate(ranked_rows, start=1):
        listed = float(row["Original sequence global score"])
        matches = [
            index
            for index, pose in upstream_poses.items()
            if abs(pose.native_global_score - listed) < 5e-5
        ]
        assert matches == [rank]


@pytest.mark.parametrize("rank", range(1, N_POSES + 1))
def test_previous_result_chose_highest_global_score(
    upstream_poses, upstream_rows, rank
):
    # The defect of the previous implementation: its "Optimal sequence" of rank i is
    # the design of pose i with the highest global_score. That score is a negative
    # log-likelihood, so the choice was the worst of the ten by the score it showed.
    pose = upstream_poses[rank]
    row = upstream_rows[rank]
    highest = max(pose.designs, key=lambda design: design.global_score)

    assert row["Optimal sequence"] == highest.sequence
    assert float(row["Global score"]) == pytest.approx(highest.global_score, abs=5e-5)


def test_previous_result_differs_from_rule(upstream_poses, upstream_rows):
    # On 8 of the 10 poses the previous choice is not the lowest-score design. On poses
    # 3 and 6 the highest-global_score design happens to have the lowest score too.
    differing = []
    for rank in range(1, N_POSES + 1):
        pose = upstream_poses[rank]
        previous = next(
            design
            for design in pose.designs
            if design.sequence == upstream_rows[rank]["Optimal sequence"]
        )
        best = choose_best_design(pose)
        assert best.score <= previous.score
        if best.sequence != previous.sequence:
            differing.append(rank)
    assert differing == [1, 2, 4, 5, 7, 8, 9, 10]


def test_best_design_none_without_designs():
    assert choose_best_design(_pose()) is None


def test_best_design_tie_earliest_sample():
    pose = _pose(_design("PTPATDD", 0.9, 1), _design("PVPATDD", 0.9, 2))
    assert choose_best_design(pose).sample == 1


def test_unique_designs_count_duplicates():
    pose = _pose(
        _design("PTPATDD", 0.89, 1),
        _design("PTPATDD", 0.83, 2),
        _design("PVPATDD", 0.93, 3),
        _design("PTPATDD", 0.90, 4),
        _design("PVPATDD", 0.86, 5),
    )
    ranked = unique_designs(pose)

    # Each sequence once, represented by its lowest-score sample, best first.
    assert [(design.sequence, count) for design, count in ranked] == [
        ("PTPATDD", 3),
        ("PVPATDD", 2),
    ]
    assert [design.sample for design, _ in ranked] == [2, 5]
    assert choose_best_design(pose).sample == 2


def test_unique_designs_upstream_pose(upstream_poses):
    # Every design of 5FFG pose 1 is a different sequence, so each counts once.
    ranked = unique_designs(upstream_poses[1])
    assert len(ranked) == 10
    assert all(count == 1 for _, count in ranked)
    scores = [design.score for design, _ in ranked]
    assert scores == sorted(scores)


# -- design inputs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, []),
        ("", []),
        ("3", [3]),
        ("8-10,15", [8, 9, 10, 15]),
        (" 2 , 1-2 ", [1, 2]),
    ],
)
def test_parse_positions(text, expected):
    assert parse_positions(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a", "1-based positions or ranges"),
        ("0", "1 <= start <= end"),
        ("5-3", "1 <= start <= end"),
        ("1,,2", "1-based positions or ranges"),
    ],
)
def test_parse_positions_invalid(text, message):
    with pytest.raises(InputError, match=message):
        parse_positions(text)
