"""The ``site`` step: the docking box, given by the user, around a chain, or detected.

Three sources, in order of precedence:

1. ``site_center`` and ``site_size``: the user's box, checked against the receptor.
2. ``site_chain``: the bounding box of that chain's heavy atoms
   (``Receptor.site_marker_xyz``) grown by ``site_margin`` on each side.
3. Neither: the most voluminous buried pocket of the receptor
   (:func:`detect_pockets`).

Every edge is clamped to 5-40 Å, the range in which AutoDock Vina's grid maps stay
small enough to compute in seconds.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from peptide_opt.config import JobConfig
from peptide_opt.errors import InputError
from peptide_opt.pipeline.types import Receptor, Site

logger = logging.getLogger(__name__)

MIN_EDGE = 5.0
MAX_EDGE = 40.0

#: How far (Å) a user's box centre may lie outside the receptor's bounding box.
CENTER_MARGIN = 10.0

#: Grid spacing (Å) of the pocket search.
POCKET_SPACING = 1.0
#: A grid point is empty when no receptor heavy atom lies within this distance (Å):
#: about a carbon's van der Waals radius (1.7 Å) plus a water probe (1.4 Å).
PROBE_DISTANCE = 3.0
#: Empty points farther than this (Å) from every heavy atom are bulk solvent.
MAX_SURFACE_DISTANCE = 6.0
#: A ray is blocked when it passes within this distance (Å) of a heavy atom.
RAY_BLOCK_DISTANCE = 1.8
#: Length (Å) and step (Å) of the rays cast from each empty point.
RAY_LENGTH = 12.0
RAY_STEP = 1.0
#: Number of ray directions, spread evenly on the sphere.
N_RAYS = 30
#: Minimum fraction of blocked rays for a point to count as buried.
MIN_BURIEDNESS = 0.6
#: Pockets smaller than this (Å^3) are ignored: a tripeptide occupies roughly 400 Å^3.
MIN_POCKET_VOLUME = 100.0
#: Space (Å) added on each side of a detected pocket, and the minimum pocket box edge.
POCKET_PADDING = 4.0
MIN_POCKET_EDGE = 16.0

METAL_ELEMENTS = frozenset({"MG", "CA", "MN", "ZN", "FE", "CO", "NI", "CU", "NA", "K"})


@dataclasses.dataclass
class ReceptorAtoms:
    """Heavy atoms of the receptor: coordinates (n, 3) in Å and per-atom labels."""

    xyz: np.ndarray
    elements: list[str]
    residue_ids: list[str]


@dataclasses.dataclass
class Pocket:
    """One buried pocket: its grid points (m, 3) in Å and their buriedness (0-1)."""

    points: np.ndarray
    buriedness: np.ndarray

    @property
    def volume(self) -> float:
        """Pocket volume in Å^3 (number of grid points times the voxel volume)."""
        return len(self.points) * POCKET_SPACING**3


def find_site(receptor: Receptor, config: JobConfig) -> Site:
    """Return the docking box for ``receptor`` following ``config``.

    Raises :class:`InputError` when a given box lies away from the receptor, contains
    no receptor atom, or has an edge outside 5-40 Å. It also raises when the site chain
    or the pocket search yields no box.
    """
    atoms = receptor_heavy_atoms(receptor.pdb_text)
    if len(atoms.xyz) == 0:
        raise InputError("receptor has no heavy atoms; cannot place a docking box")

    if config.site_center is not None and config.site_size is not None:
        site = Site(
            center=tuple(float(v) for v in config.site_center),
            size=tuple(float(v) for v in config.site_size),
            source="site_center",
        )
        check_box(site, atoms)
        return site

    if config.site_chain is not None:
        return chain_site(receptor, config.site_chain, config.site_margin, atoms)

    return pocket_site(atoms)


def receptor_heavy_atoms(pdb_text: str) -> ReceptorAtoms:
    """Read the heavy atoms (no hydrogens) of ATOM and HETATM records of PDB text."""
    xyz, elements, residue_ids = [], [], []
    for line in pdb_text.splitlines():
        if not line.startswith(("ATOM  ", "HETATM")):
            continue
        element = line[76:78].strip().upper() or line[12:14].strip().upper()
        if element in ("H", "D"):
            continue
        xyz.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
        elements.append(element)
        residue_ids.append(f"{line[21]}:{line[17:20].strip()}{line[22:27].strip()}")
    return ReceptorAtoms(
        np.array(xyz, dtype=float).reshape(-1, 3), elements, residue_ids
    )


def check_box(site: Site, atoms: ReceptorAtoms) -> None:
    """Raise :class:`InputError` unless ``site`` is a usable box on the receptor."""
    for axis, edge in zip("xyz", site.size):
        if not MIN_EDGE <= edge <= MAX_EDGE:
            raise InputError(
                f"site_size {axis} edge must be between {MIN_EDGE:g} and "
                f"{MAX_EDGE:g} Å, got {edge:g}"
            )

    center = np.array(site.center)
    low = atoms.xyz.min(axis=0) - CENTER_MARGIN
    high = atoms.xyz.max(axis=0) + CENTER_MARGIN
    if np.any(center < low) or np.any(center > high):
        raise InputError(
            f"site_center {_format_vector(center)} lies outside the receptor's "
            f"bounding box {_format_vector(low + CENTER_MARGIN)} .. "
            f"{_format_vector(high - CENTER_MARGIN)} plus {CENTER_MARGIN:g} Å"
        )

    half = np.array(site.size) / 2.0
    inside = np.all(np.abs(atoms.xyz - center) <= half, axis=1)
    if not inside.any():
        raise InputError(
            f"the docking box at site_center {_format_vector(center)} with site_size "
            f"{_format_vector(site.size)} contains no receptor atom; move it onto the "
            "receptor surface"
        )


def chain_site(
    receptor: Receptor, chain_id: str, margin: float, atoms: ReceptorAtoms
) -> Site:
    """Return the box around the site chain's heavy atoms plus ``margin`` Å per side."""
    marker = receptor.site_marker_xyz
    if marker is None or len(marker) == 0:
        raise InputError(
            f"site_chain {chain_id!r} gave no atoms to place the docking box; check "
            "that the receptor file contains that chain"
        )
    low = marker.min(axis=0)
    high = marker.max(axis=0)
    center = (low + high) / 2.0
    size = np.clip(high - low + 2.0 * margin, MIN_EDGE, MAX_EDGE)
    site = Site(
        center=tuple(float(v) for v in center),
        size=tuple(float(v) for v in size),
        source="site_chain",
        detail={
            "site_chain": chain_id,
            "site_margin": margin,
            "n_marker_atoms": len(marker),
            "marker_extent": [round(float(v), 3) for v in high - low],
        },
    )
    check_box(site, atoms)
    return site


def pocket_site(atoms: ReceptorAtoms) -> Site:
    """Return the box around the most voluminous buried pocket of the receptor."""
    pockets = detect_pockets(atoms.xyz)
    if not pockets:
        raise InputError(
            "no buried pocket of at least "
            f"{MIN_POCKET_VOLUME:g} Å^3 found on the receptor; give site_chain or "
            "site_center and site_size"
        )
    pocket = pockets[0]

    low = pocket.points.min(axis=0)
    high = pocket.points.max(axis=0)
    center = (low + high) / 2.0
    size = np.clip(high - low + 2.0 * POCKET_PADDING, MIN_POCKET_EDGE, MAX_EDGE)
    lining, metals = pocket_lining(pocket, atoms)

    site = Site(
        center=tuple(float(v) for v in center),
        size=tuple(float(v) for v in size),
        source="pocket",
        detail={
            "method": (
                "grid buriedness: empty 1 Å grid points 3-6 Å from receptor heavy "
                f"atoms, buried when at least {MIN_BURIEDNESS:.0%} of {N_RAYS} "
                f"{RAY_LENGTH:g} Å rays hit the receptor; the largest connected "
                "cluster"
            ),
            "pocket_volume": round(pocket.volume, 1),
            "pocket_mean_buriedness": round(float(pocket.buriedness.mean()), 3),
            "n_pockets": len(pockets),
            "other_pocket_volumes": [round(p.volume, 1) for p in pockets[1:5]],
            "lining_residues": lining,
            "metal_ions": metals,
        },
    )
    logger.info(
        "pocket_detected volume=%.0f n_pockets=%d center=%s",
        pocket.volume,
        len(pockets),
        _format_vector(center),
    )
    return site


def detect_pockets(xyz: np.ndarray) -> list[Pocket]:
    """Find buried pockets on a grid around the receptor's heavy atoms.

    The method is a grid buriedness search. Grid points at spacing 1 Å that are empty
    (no heavy atom within 3 Å) but near the surface (one within 6 Å) cast 30 rays of
    12 Å in directions spread evenly on a sphere. The buriedness of a point is the
    fraction of its rays that pass within 1.8 Å of a heavy atom. Points with
    buriedness of at least 0.6 are buried, and buried points that touch
    (26-neighbourhood) form a pocket.

    Parameters
    ----------
    xyz
        Heavy-atom coordinates (n, 3) in Å.

    Returns
    -------
    list of Pocket
        Pockets of at least 100 Å^3, largest volume first.
    """
    tree = cKDTree(xyz)
    origin = xyz.min(axis=0) - MAX_SURFACE_DISTANCE
    shape = np.ceil((np.ptp(xyz, axis=0) + 2 * MAX_SURFACE_DISTANCE) / POCKET_SPACING)
    shape = shape.astype(int) + 1
    grid_index = np.indices(shape).reshape(3, -1).T
    points = origin + grid_index * POCKET_SPACING

    distance, _ = tree.query(points, distance_upper_bound=MAX_SURFACE_DISTANCE + 1.0)
    blocked = (distance <= RAY_BLOCK_DISTANCE).reshape(shape)
    candidate = (distance > PROBE_DISTANCE) & (distance <= MAX_SURFACE_DISTANCE)

    buriedness = np.zeros(len(points))
    buriedness[candidate] = _ray_buriedness(grid_index[candidate], blocked)
    buried = (buriedness >= MIN_BURIEDNESS).reshape(shape)

    labels, n_labels = ndimage.label(buried, structure=np.ones((3, 3, 3)))
    labels = labels.reshape(-1)
    pockets = []
    for label in range(1, n_labels + 1):
        members = np.flatnonzero(labels == label)
        if len(members) * POCKET_SPACING**3 < MIN_POCKET_VOLUME:
            continue
        pockets.append(Pocket(points[members], buriedness[members]))
    pockets.sort(key=lambda pocket: pocket.volume, reverse=True)
    return pockets


def _ray_directions(n: int) -> np.ndarray:
    """Return ``n`` unit vectors spread evenly on the sphere (Fibonacci lattice)."""
    index = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * index / n)
    azimuth = np.pi * (1.0 + 5**0.5) * index
    return np.stack(
        [
            np.cos(azimuth) * np.sin(polar),
            np.sin(azimuth) * np.sin(polar),
            np.cos(polar),
        ],
        axis=1,
    )


def _ray_buriedness(start_index: np.ndarray, blocked: np.ndarray) -> np.ndarray:
    """Return the fraction of rays from each start grid point that hit the receptor."""
    directions = _ray_directions(N_RAYS)
    steps = np.arange(1, int(RAY_LENGTH / RAY_STEP) + 1) * RAY_STEP / POCKET_SPACING
    shape = np.array(blocked.shape)
    hits = np.zeros(len(start_index))
    # Rays are marched for blocks of points to keep the index arrays near 100 MB.
    chunk = 20000
    for begin in range(0, len(start_index), chunk):
        starts = start_index[begin : begin + chunk].astype(float)
        for direction in directions:
            offsets = np.rint(steps[:, None] * direction[None, :]).astype(int)
            cells = starts[:, None, :].astype(int) + offsets[None, :, :]
            inside = np.all((cells >= 0) & (cells < shape), axis=2)
            cells = np.clip(cells, 0, shape - 1)
            hit = blocked[cells[..., 0], cells[..., 1], cells[..., 2]] & inside
            hits[begin : begin + chunk] += hit.any(axis=1)
    return hits / N_RAYS


def pocket_lining(pocket: Pocket, atoms: ReceptorAtoms) -> tuple[list[str], list[str]]:
    """Return the residues with a heavy atom within 4 Å of the pocket, and metals."""
    tree = cKDTree(pocket.points)
    distance, _ = tree.query(atoms.xyz, distance_upper_bound=4.0)
    near = np.flatnonzero(np.isfinite(distance))
    residues = sorted({atoms.residue_ids[i] for i in near}, key=_residue_sort_key)
    metals = sorted(
        {atoms.residue_ids[i] for i in near if atoms.elements[i] in METAL_ELEMENTS}
    )
    return residues, metals


def _residue_sort_key(residue_id: str) -> tuple[str, int, str]:
    chain, _, rest = residue_id.partition(":")
    digits = "".join(ch for ch in rest if ch.isdigit() or ch == "-")
    try:
        number = int(digits)
    except ValueError:
        number = 0
    return chain, number, rest


def _format_vector(values) -> str:
    return "(" + ", ".join(f"{float(v):.2f}" for v in values) + ")"
