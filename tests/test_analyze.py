"""Sequence properties (Biopython ProtParam) against the platform's recorded values."""

import ast
import csv
import math
from pathlib import Path

import pytest

from peptide_opt.pipeline.analyze import peptide_properties
from peptide_opt.pipeline.outputs import RESULT_COLUMNS, property_columns

UPSTREAM_CSV = (
    Path(__file__).resolve().parent.parent / "examples" / "5ffg" / "upstream_output" / "result.csv"
)


#: What Biopython 1.88's ``IsoelectricPoint.pi`` returns when the pI lies below its
#: default search range of pH 4.05-12.
BIOPYTHON_PI_FLOOR = 4.0500284194946286


def upstream_rows() -> list[dict[str, str]]:
    with UPSTREAM_CSV.open() as handle:
        return list(csv.DictReader(handle))


def test_result_columns_match_platform_header():
    with UPSTREAM_CSV.open() as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == RESULT_COLUMNS


@pytest.mark.parametrize("row_index", range(11))
def test_properties_match_previous_output(row_index):
    # The previous implementation computed the same ProtParam properties for the input
    # and each reported design; ours must agree to floating-point precision (1e-9).
    # The exception: where it reported Biopython's search floor of pH 4.05 as the pI,
    # the pI lies below 4.05 and ours is searched down to pH 0.
    row = upstream_rows()[row_index]
    ours = property_columns(peptide_properties(row["Optimal sequence"]))
    theirs = [row[column] for column in RESULT_COLUMNS[5:]]
    for column, our_value, their_text in zip(RESULT_COLUMNS[5:], ours[:6], theirs[:6]):
        if column == "Isoelectric point" and float(their_text) == BIOPYTHON_PI_FLOOR:
            assert 0.0 < our_value < 4.05
        else:
            assert math.isclose(our_value, float(their_text), rel_tol=1e-9, abs_tol=1e-9)
    our_fractions = ast.literal_eval(ours[6])
    their_fractions = ast.literal_eval(theirs[6])
    assert our_fractions == pytest.approx(their_fractions, abs=1e-9)


def test_net_charge_of_acidic_peptide_negative():
    # PQQATDD has two Asp and free termini: about -2 at pH 7.4 (termini cancel).
    charge = peptide_properties("PQQATDD")["net_charge_ph_7_4"]
    assert -2.2 < charge < -1.8


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        # Two Asp and the C-terminus against the N-terminus: below Biopython's range.
        ("PQQATDD", 3.8918),
        ("DDDDDD", 3.3213),
        # Eight Arg: above it.
        ("RRRRRRRR", 12.8451),
        # Inside it: Biopython's own default search, unchanged.
        ("GAGPVYERGKLEDELLEKLAR", 5.0061),
    ],
)
def test_isoelectric_point_beyond_default_range(sequence, expected):
    # Values of Biopython's search over pH 0-14; its bisection stops within 1e-4.
    assert peptide_properties(sequence)["isoelectric_point"] == pytest.approx(
        expected, abs=1e-3
    )
