"""Tests of the ``site`` step: given boxes, site-chain boxes and pocket detection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from peptide_opt.config import JobConfig, build_config
from peptide_opt.errors import InputError
from peptide_opt.pipeline.site import (
    MIN_BURIEDNESS,
    detect_pockets,
    find_site,
    receptor_heavy_atoms,
)
from peptide_opt.pipeline.types import Receptor


def pdb_lines(xyz, element="C", residue="ALA"):
    lines = []
    for serial, (x, y, z) in enumerate(xyz, start=1):
        lines.append(
            f"ATOM  {serial:5d}  CA  {residue} A{serial % 10000:4d}    "
            f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00           {element}"
        )
    return "\n".join(lines) + "\nEND\n"


def small_receptor(marker=None):
    return Receptor(
        pdb_text=pdb_lines([(0.0, 0.0, 0.0), (5.0, 2.0, 15.0), (20.0, 20.0, 20.0)]),
        chain_ids=("A",),
        site_marker_xyz=marker,
    )


MARKER = np.array([[0.0, 0.0, 0.0], [10.0, 4.0, 30.0], [3.0, 1.0, 7.0]])


def test_site_chain_box_with_default_margin():
    # Marker extent (10, 4, 30) Å plus 8 Å on each side: (26, 20, 46), and the z edge
    # is clamped to 40 Å. The centre is the middle of the marker's bounding box.
    site = find_site(small_receptor(MARKER), build_config({"site_chain": "B"}))
    assert site.source == "site_chain"
    assert site.center == pytest.approx((5.0, 2.0, 15.0))
    assert site.size == pytest.approx((26.0, 20.0, 40.0))
    assert site.detail["site_margin"] == 8.0


def test_site_chain_box_with_small_margin():
    # Margin 0: the extent itself, with the 4 Å edge raised to the 5 Å minimum.
    config = build_config({"site_chain": "B", "site_margin": "0"})
    site = find_site(small_receptor(MARKER), config)
    assert site.size == pytest.approx((10.0, 5.0, 30.0))
    config = build_config({"site_chain": "B", "site_margin": "3"})
    assert find_site(small_receptor(MARKER), config).size == pytest.approx(
        (16.0, 10.0, 36.0)
    )


def test_site_center_box_kept_as_given():
    config = build_config({"site_center": "5,2,15", "site_size": "12,14,16"})
    site = find_site(small_receptor(), config)
    assert site.source == "site_center"
    assert site.center == (5.0, 2.0, 15.0)
    assert site.size == (12.0, 14.0, 16.0)


def test_site_center_far_from_receptor():
    config = build_config({"site_center": "100,100,100", "site_size": "10,10,10"})
    with pytest.raises(InputError) as error:
        find_site(small_receptor(), config)
    assert str(error.value) == (
        "site_center (100.00, 100.00, 100.00) lies outside the receptor's bounding box "
        "(0.00, 0.00, 0.00) .. (20.00, 20.00, 20.00) plus 10 Å"
    )


def test_site_box_without_receptor_atoms():
    config = build_config({"site_center": "12,12,8", "site_size": "6,6,6"})
    with pytest.raises(InputError, match="contains no receptor atom"):
        find_site(small_receptor(), config)


def test_site_box_edge_out_of_range():
    # The config parser already rejects such sizes; a JobConfig built in code must not
    # slip past the site step either.
    config = dataclasses.replace(
        JobConfig(), site_center=(5.0, 2.0, 15.0), site_size=(45.0, 10.0, 10.0)
    )
    with pytest.raises(
        InputError, match="site_size x edge must be between 5 and 40 Å, got 45"
    ):
        find_site(small_receptor(), config)


def test_site_chain_without_marker_atoms():
    with pytest.raises(InputError, match="site_chain 'B' gave no atoms"):
        find_site(small_receptor(None), build_config({"site_chain": "B"}))


def fibonacci_shell(n: int, radius: float, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    index = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * index / n)
    azimuth = np.pi * (1.0 + 5**0.5) * index
    unit = np.stack(
        [
            np.cos(azimuth) * np.sin(polar),
            np.sin(azimuth) * np.sin(polar),
            np.cos(polar),
        ],
        axis=1,
    )
    return np.array(center) + radius * unit


def test_pocket_found_inside_closed_shell():
    # 600 atoms on a 10 Å sphere are about 1.45 Å apart, so the inside is sealed.
    # Rays from an inner point hit the shell unless the far wall lies beyond the 12 Å
    # ray length (up to 17 Å away). So inner points see about 90% of their rays
    # blocked, and points outside see at most about half. The pocket is the inner layer
    # 3-6 Å from the shell, centred on the sphere's centre.
    center = (4.0, -3.0, 7.0)
    pockets = detect_pockets(fibonacci_shell(600, 10.0, center))
    assert len(pockets) == 1
    pocket = pockets[0]
    assert np.allclose(pocket.points.mean(axis=0), center, atol=0.5)
    assert pocket.buriedness.min() >= MIN_BURIEDNESS
    assert pocket.buriedness.mean() == pytest.approx(0.9, abs=0.05)
    radii = np.linalg.norm(pocket.points - center, axis=1)
    # Between shell atoms (at most about 0.85 Å from one) a point 3 Å from every atom
    # can lie up to sqrt(3^2 - 0.85^2) = 2.88 Å inside the shell.
    assert radii.max() <= 7.15
    assert radii.min() >= 4.0 - 1e-6


def test_pocket_site_on_1czy(examples_dir):
    text = (examples_dir / "1czy" / "1czy_complex.pdb").read_text()
    chain_a = "\n".join(
        line
        for line in text.splitlines()
        if line.startswith("ATOM") and line[21] == "A"
    )
    receptor = Receptor(pdb_text=chain_a, chain_ids=("A",))
    site = find_site(receptor, JobConfig())
    assert site.source == "pocket"
    assert site.detail["pocket_volume"] >= 100.0
    assert site.detail["lining_residues"]
    assert all(16.0 <= edge <= 40.0 for edge in site.size)
    atoms = receptor_heavy_atoms(chain_a)
    low, high = atoms.xyz.min(axis=0), atoms.xyz.max(axis=0)
    assert np.all(np.array(site.center) >= low)
    assert np.all(np.array(site.center) <= high)
