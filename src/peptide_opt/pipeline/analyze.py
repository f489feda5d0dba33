"""Step ``analyze``: sequence properties of the input peptide and of every design.

All values come from Biopython's ProtParam (``Bio.SeqUtils.ProtParam``).
"""

from __future__ import annotations

from typing import Any

from Bio.SeqUtils.IsoelectricPoint import IsoelectricPoint
from Bio.SeqUtils.ProtParam import ProteinAnalysis
from Bio.SeqUtils.ProtParamData import hw as HOPP_WOODS

NET_CHARGE_PH = 7.4

#: The pH range of Biopython's pI search (``IsoelectricPoint.pi``'s defaults), and the
#: wider range searched when the result lies at either end of it.
DEFAULT_PI_RANGE = (4.05, 12.0)
WIDE_PI_RANGE = (0.0, 14.0)


def peptide_properties(sequence: str) -> dict[str, Any]:
    """Return the ProtParam properties of a peptide.

    Keys: ``molecular_weight`` (Da, average masses), ``isoelectric_point``,
    ``aromaticity`` (fraction of F, W, Y), ``instability_index``, ``gravy`` (the
    Kyte–Doolittle GRAVY index, reported as hydrophobicity), ``hydrophilicity`` (mean
    Hopp–Woods value), ``secondary_structure_fraction`` (helix, turn, sheet: the fractions
    of residues that favour each), and ``net_charge_ph_7_4`` (net charge at pH 7.4).
    """
    analysis = ProteinAnalysis(sequence)
    helix, turn, sheet = analysis.secondary_structure_fraction()
    return {
        "molecular_weight": analysis.molecular_weight(),
        "isoelectric_point": isoelectric_point(sequence),
        "aromaticity": analysis.aromaticity(),
        "instability_index": analysis.instability_index(),
        "gravy": analysis.gravy(),
        "hydrophilicity": sum(HOPP_WOODS[letter] for letter in sequence) / len(sequence),
        "secondary_structure_fraction": (helix, turn, sheet),
        "net_charge_ph_7_4": analysis.charge_at_pH(NET_CHARGE_PH),
    }


def isoelectric_point(sequence: str) -> float:
    """Return Biopython's isoelectric point of ``sequence``.

    Biopython searches pH 4.05-12 and returns an end of that range for a peptide whose
    pI lies beyond it, such as 4.05 for PQQATDD (pI 3.89). Such a result is searched
    again over pH 0-14.
    """
    point = IsoelectricPoint(sequence)
    value = point.pi()
    low, high = DEFAULT_PI_RANGE
    if value < low + 0.01 or value > high - 0.01:
        value = point.pi(min_=WIDE_PI_RANGE[0], max_=WIDE_PI_RANGE[1])
    return value
