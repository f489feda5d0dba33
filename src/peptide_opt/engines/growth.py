"""Growth of long peptides from docked segments, on Vina's affinity maps.

A rigid backbone of more than about a dozen residues seldom fits a protein surface: on
the αvβ6 integrin of PDB 5FFG, every rigid placement of a 21-residue backbone clashed
(Vina energies of +192 to +548 kcal/mol). Vina cannot dock such a peptide as a
flexible ligand either, because the memory of a ligand grows with the square of its
atom count. For a long peptide, the docking engine therefore docks overlapping segments
of a few residues with its rigid-backbone search, and this module grows the whole
peptide from the best segment placements.

Growth adds one residue at a time, at the two ends of the placed part in turn. For
every partial chain of a beam it turns the two bonds that place the new residue's
heavy atoms (CB-truncated), and scores those atoms: their map energy, and their
clashes with the atoms already placed. Toward the N-terminus these are the next
residue's phi and the new residue's psi. Toward the C-terminus they are the previous
residue's psi and the new residue's phi. The new residue's carbonyl oxygen then waits
for the next step, which turns the psi that places it. Each angle comes from the Ramachandran
basin drawn for its residue, so phi and psi of one residue stay a pair. The turns move
only the new atoms and the residues not yet grown, so a partial chain's energy is its
parent's plus the new atoms'. Residues not yet grown ride along unscored. The best
partial chains, a few per parent at most, form the next beam. The caller refines the
grown backbones as a whole with :func:`peptide_opt.engines.backbone_search.refine`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from rdkit import Chem

from peptide_opt.engines import backbone_search, peptide_builder


@dataclasses.dataclass(frozen=True)
class GrowthSettings:
    """Effort of the growth of one placed segment.

    Each step draws ``samples_per_chain`` backbones of the new residue for each of at
    most ``beam_width`` partial chains, and keeps at most ``kept_per_parent`` children
    of one parent. ``edge_margin`` (Å) and ``edge_slope`` (kcal/mol per Å) push atoms
    away from the faces of the maps, which the side chains need as room.
    """

    beam_width: int = 96
    samples_per_chain: int = 48
    kept_per_parent: int = 8
    edge_margin: float = 5.0
    edge_slope: float = 5.0


@dataclasses.dataclass(frozen=True)
class Torsion:
    """A backbone bond turned during growth: rows of the dihedral and the moving mask.

    ``quad`` lists the rows of the four atoms that define the dihedral. Turning by an
    angle rotates the ``moving`` rows about the axis from row ``fixed`` to row
    ``pivot``, which changes the dihedral by that angle.
    """

    quad: tuple[int, int, int, int]
    fixed: int
    pivot: int
    moving: np.ndarray


def segment_starts(n_residues: int, length: int, stride: int) -> list[int]:
    """Return the 0-based first residues of overlapping segments covering the peptide.

    The segments are ``length`` residues long and start at most ``stride`` residues
    apart. The first starts at residue 0, and the last ends at the last residue.
    """
    if n_residues <= length:
        return [0]
    span = n_residues - length
    count = -(-span // stride) + 1
    return sorted({round(value) for value in np.linspace(0, span, count)})


def with_edge_penalty(
    maps: backbone_search.GridMaps, margin: float, slope: float
) -> backbone_search.GridMaps:
    """Return ``maps`` raised by ``slope`` per Å closer than ``margin`` to a face."""
    shape = np.array(maps.values.shape[1:])
    depth = np.full(tuple(shape), np.inf)
    for axis, size in enumerate(shape):
        index = np.arange(size, dtype=float)
        along = np.minimum(index, size - 1 - index) * maps.spacing
        view = [1, 1, 1]
        view[axis] = size
        depth = np.minimum(depth, along.reshape(view))
    penalty = slope * np.clip(margin - depth, 0.0, None)
    return dataclasses.replace(maps, values=maps.values + penalty[None])


class GrowthModel:
    """The torsions and atom groups of one CB-truncated peptide, for growth.

    Rows follow ``model.heavy``, as in
    :class:`peptide_opt.engines.backbone_search.BackboneModel`.
    """

    def __init__(self, model: backbone_search.BackboneModel, mol: Chem.Mol):
        self.model = model
        heavy_mol = Chem.RemoveHs(mol)
        self.far = Chem.GetDistanceMatrix(heavy_mol) >= 4
        self.residue_of_row = np.array(
            [
                mol.GetAtomWithIdx(int(i)).GetPDBResidueInfo().GetResidueNumber() - 1
                for i in model.heavy
            ]
        )
        self.n_residues = len(model.residue_rows)
        self._heavy_mol = heavy_mol
        self._in_ring = [
            mol.GetAtomWithIdx(int(model.heavy[n])).IsInRing()
            for n, _, _, _ in model.residue_rows
        ]

    def rows_of(self, residue: int) -> np.ndarray:
        return np.nonzero(self.residue_of_row == residue)[0]

    def carbonyl_oxygen(self, residue: int) -> int:
        return self.model.residue_rows[residue][3]

    def phi(self, residue: int, toward_c: bool) -> Torsion | None:
        """Return the phi bond of ``residue``, turning the atoms on the growing side.

        Returns None for proline, whose ring closes the bond, and for residue 0.
        """
        if residue == 0 or self._in_ring[residue]:
            return None
        rows = self.model.residue_rows
        n, ca, c, _ = rows[residue]
        quad = (rows[residue - 1][2], n, ca, c)
        return self._torsion(quad, n, ca) if toward_c else self._torsion(quad, ca, n)

    def psi(self, residue: int, toward_c: bool) -> Torsion:
        """Return the psi bond of ``residue`` (to OXT for the last residue)."""
        rows = self.model.residue_rows
        n, ca, c, _ = rows[residue]
        if residue + 1 < self.n_residues:
            following = rows[residue + 1][0]
        else:
            following = self.model.oxt_row
        quad = (n, ca, c, following)
        return self._torsion(quad, ca, c) if toward_c else self._torsion(quad, c, ca)

    def _torsion(
        self, quad: tuple[int, int, int, int], fixed: int, pivot: int
    ) -> Torsion:
        mask = np.zeros(len(self.model.heavy), dtype=bool)
        mask[backbone_search.side_of_bond(self._heavy_mol, fixed, pivot)] = True
        return Torsion(quad=quad, fixed=fixed, pivot=pivot, moving=mask)


def dihedrals(xyz: np.ndarray, quad: tuple[int, int, int, int]) -> np.ndarray:
    """Return the dihedral (radians, IUPAC sign) of the rows ``quad`` in each pose."""
    a, b, c, d = (xyz[:, row] for row in quad)
    b0, b1, b2 = a - b, c - b, d - c
    b1 = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - (b0 * b1).sum(axis=-1, keepdims=True) * b1
    w = b2 - (b2 * b1).sum(axis=-1, keepdims=True) * b1
    x = (v * w).sum(axis=-1)
    y = (np.cross(b1, v) * w).sum(axis=-1)
    return np.arctan2(y, x)


def set_torsion(xyz: np.ndarray, torsion: Torsion, target: np.ndarray) -> np.ndarray:
    """Return the poses ``xyz`` (C, n, 3) with ``torsion`` set to ``target``.

    ``target`` (C,) is in radians.
    """
    angle = target - dihedrals(xyz, torsion.quad)
    origin = xyz[:, torsion.pivot]
    axis = origin - xyz[:, torsion.fixed]
    return backbone_search.rotate(xyz, torsion.moving, origin, axis, angle)


_BASIN_CENTRES = np.radians(
    np.array([basin[:2] for basin in peptide_builder.RAMACHANDRAN_BASINS])
)
_BASIN_WEIGHTS = np.array([basin[2] for basin in peptide_builder.RAMACHANDRAN_BASINS])
_BASIN_SPREAD = np.radians(peptide_builder.BASIN_SPREAD_DEG)


def _draw_basins(count: int, rng: np.random.Generator) -> np.ndarray:
    weights = _BASIN_WEIGHTS / _BASIN_WEIGHTS.sum()
    return rng.choice(len(weights), size=count, p=weights)


def _angle_in(
    basins: np.ndarray, column: int, rng: np.random.Generator
) -> np.ndarray:
    """Return phi (column 0) or psi (column 1), in radians, drawn in ``basins``."""
    return _BASIN_CENTRES[basins, column] + rng.normal(0.0, _BASIN_SPREAD, len(basins))


def grow(
    growth: GrowthModel,
    maps: backbone_search.GridMaps,
    start: np.ndarray,
    first: int,
    last: int,
    settings: GrowthSettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Grow the placed residues ``first``-``last`` (0-based) to the whole peptide.

    ``start`` (n, 3) gives every heavy atom. The atoms of the placed residues are in
    the site, the others anywhere. Returns the energies (B,) in kcal/mol and the poses
    (B, n, 3) of the last beam, best first. The energy sums the map energies of all
    heavy atoms and the clash penalty of ``growth.model``.
    """
    n_residues = growth.n_residues
    placed = (growth.residue_of_row >= first) & (growth.residue_of_row <= last)
    if last < n_residues - 1:
        # The psi that places this oxygen is turned when the chain grows past it.
        placed[growth.carbonyl_oxygen(last)] = False
    xyz = start[None].copy()
    energy = _placed_energy(growth, maps, xyz, placed)
    # The basin of each residue's backbone, -1 where none was drawn yet.
    basins = np.full((1, n_residues), -1)
    below, above = first - 1, last + 1
    toward_c = True
    while below >= 0 or above < n_residues:
        if (toward_c and above >= n_residues) or (not toward_c and below < 0):
            toward_c = not toward_c
        residue = above if toward_c else below
        samples = settings.samples_per_chain
        trial = np.repeat(xyz, samples, axis=0)
        trial_basins = np.repeat(basins, samples, axis=0)
        new_basin = _draw_basins(len(trial), rng)
        new = np.zeros(len(placed), dtype=bool)
        new[growth.rows_of(residue)] = True
        if toward_c:
            previous = trial_basins[:, residue - 1]
            unknown = previous < 0
            previous[unknown] = _draw_basins(int(unknown.sum()), rng)
            trial_basins[:, residue - 1] = previous
            trial = set_torsion(
                trial, growth.psi(residue - 1, True), _angle_in(previous, 1, rng)
            )
            phi = growth.phi(residue, True)
            if phi is not None:
                trial = set_torsion(trial, phi, _angle_in(new_basin, 0, rng))
            new[growth.carbonyl_oxygen(residue - 1)] = True
            if residue == n_residues - 1:
                trial = set_torsion(
                    trial, growth.psi(residue, True), _angle_in(new_basin, 1, rng)
                )
            else:
                new[growth.carbonyl_oxygen(residue)] = False
        else:
            following = trial_basins[:, residue + 1]
            unknown = following < 0
            following[unknown] = _draw_basins(int(unknown.sum()), rng)
            trial_basins[:, residue + 1] = following
            phi = growth.phi(residue + 1, False)
            if phi is not None:
                trial = set_torsion(trial, phi, _angle_in(following, 0, rng))
            trial = set_torsion(
                trial, growth.psi(residue, False), _angle_in(new_basin, 1, rng)
            )
        trial_basins[:, residue] = new_basin
        total = np.repeat(energy, samples) + _added_energy(
            growth, maps, trial, np.nonzero(new)[0], np.nonzero(placed)[0]
        )

        n_parents = len(xyz)
        by_parent = total.reshape(n_parents, samples)
        best_children = np.argsort(by_parent, axis=1)[:, : settings.kept_per_parent]
        chosen = (best_children + np.arange(n_parents)[:, None] * samples).reshape(-1)
        chosen = chosen[np.argsort(total[chosen], kind="stable")][: settings.beam_width]
        xyz, energy, basins = trial[chosen], total[chosen], trial_basins[chosen]
        placed |= new
        if toward_c:
            above += 1
        else:
            below -= 1
        toward_c = not toward_c
    return energy, xyz


def _added_energy(
    growth: GrowthModel,
    maps: backbone_search.GridMaps,
    xyz: np.ndarray,
    new_rows: np.ndarray,
    placed_rows: np.ndarray,
) -> np.ndarray:
    """Return the map energy of ``new_rows`` and their clashes (C,) with placed rows."""
    model = growth.model
    energy, _ = backbone_search.atom_map_energies(
        maps, xyz[:, new_rows], model.types[new_rows]
    )
    others = np.concatenate([placed_rows, new_rows])
    difference = xyz[:, new_rows, None, :] - xyz[:, None, others, :]
    distance = np.sqrt((difference * difference).sum(axis=-1))
    overlap = np.clip(model.clash_distance - distance, 0.0, None)
    mask = growth.far[np.ix_(new_rows, others)].astype(float)
    # A pair of two new atoms appears twice; it counts once.
    mask[:, len(placed_rows) :] *= 0.5
    clash = model.clash_weight * (overlap**2 * mask).sum(axis=(1, 2))
    return energy.sum(axis=-1) + clash


def _placed_energy(
    growth: GrowthModel,
    maps: backbone_search.GridMaps,
    xyz: np.ndarray,
    placed: np.ndarray,
) -> np.ndarray:
    """Return the map energy and clash penalty (C,) of the placed rows of ``xyz``."""
    none = np.array([], dtype=int)
    return _added_energy(growth, maps, xyz, np.nonzero(placed)[0], none)
