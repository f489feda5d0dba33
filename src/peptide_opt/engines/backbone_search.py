"""Flexible-backbone refinement of docked peptide backbones on Vina's grid maps.

The rigid docking stage of :mod:`peptide_opt.engines.vina` places fixed backbone
conformers, so a placement is only as good as the closest conformer of the ensemble.
This module moves the backbone itself, starting from the best rigid placements: a Monte
Carlo search whose steps turn random phi and psi bonds, shift the peptide and then
relax it down the energy gradient in torsion and rigid-body space.

Setting a Vina ligand takes about a second, so Vina cannot score thousands of backbone
variants. The search reads Vina's own affinity maps instead (``Vina.write_maps``) and
sums, over heavy atoms, the trilinearly interpolated map value of each atom's X-Score
type. For a rigid ligand that sum is Vina's intermolecular energy. A soft clash penalty
between peptide atoms four or more bonds apart replaces Vina's intramolecular term.
The caller gives the refined backbones back to Vina for its own energy.
Every move is a rotation or a shift, so bond lengths and angles stay those of the
start.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np
from rdkit import Chem
from vina import Vina

from peptide_opt.engines import peptide_builder

#: X-Score atom types of the 20 standard residues. Vina writes one map per type, and
#: only these are read.
PEPTIDE_XS_TYPES = ("C_H", "C_P", "N_P", "N_D", "N_A", "N_DA", "O_A", "O_DA", "S_P")

#: Energy (kcal/mol per Å) added for each Å an atom lies outside the maps.
OUTSIDE_PENALTY = 10.0
#: Peptide heavy atoms four or more bonds apart closer than this (Å) clash. It is the
#: limit of :data:`peptide_opt.engines.peptide_builder.CLASH_DISTANCE`.
CLASH_DISTANCE = 2.6
#: Weight (kcal/mol per Å^2) of the squared overlap below ``CLASH_DISTANCE``.
CLASH_WEIGHT = 5.0

#: Largest turn of one torsion (radians) and of the whole peptide (radians), and the
#: largest shift (Å), in one relaxation step.
MAX_TORSION_STEP = 0.17
MAX_ROTATION_STEP = 0.05
MAX_SHIFT_STEP = 0.3


@dataclasses.dataclass(frozen=True)
class RefinementSettings:
    """Effort of the flexible-backbone refinement of each start.

    ``n_chains`` Monte Carlo chains start from each placement and take ``n_rounds``
    steps. A step turns ``n_kicked_torsions`` random phi or psi bonds by a normal
    deviate of ``kick_deg`` degrees and shifts the peptide by a normal deviate of
    ``kick_shift`` Å per axis. It then relaxes the peptide for ``n_relax_steps``
    gradient steps, and the Metropolis rule at ``temperature_kcal`` (kcal/mol)
    accepts or rejects the result.
    """

    n_chains: int = 2
    n_rounds: int = 20
    n_relax_steps: int = 25
    n_kicked_torsions: int = 2
    kick_deg: float = 40.0
    kick_shift: float = 0.5
    temperature_kcal: float = 0.6


@dataclasses.dataclass
class GridMaps:
    """Vina affinity maps (kcal/mol): ``values[t, i, j, k]`` for X-Score type ``t``.

    ``origin`` is the position (Å) of grid point (0, 0, 0), and points are ``spacing``
    Å apart along x, y and z.
    """

    origin: np.ndarray
    spacing: float
    values: np.ndarray
    type_index: dict[str, int]


def read_grid_maps(grid: Vina) -> GridMaps:
    """Write ``grid``'s affinity maps to a temporary folder and read the peptide types.

    With a ligand set, Vina 1.2.7 writes the maps of that ligand's atom types only,
    and only maps computed with ``force_even_voxels=True`` (an even number of voxels
    per axis).
    """
    arrays, names = [], []
    with tempfile.TemporaryDirectory(prefix="peptide-opt-maps-") as folder:
        prefix = os.path.join(folder, "receptor")
        grid.write_maps(prefix, overwrite=True)
        for xs_type in PEPTIDE_XS_TYPES:
            path = f"{prefix}.{xs_type}.map"
            if not os.path.exists(path):
                continue
            names.append(xs_type)
            with open(path) as handle:
                header = [next(handle) for _ in range(6)]
                body = handle.read()
            spacing = float(header[3].split()[1])
            voxels = np.array([int(v) for v in header[4].split()[1:4]])
            center = np.array([float(v) for v in header[5].split()[1:4]])
            flat = np.array(body.split(), dtype=float)
            # AutoDock map order: x varies fastest, then y, then z.
            arrays.append(flat.reshape((voxels + 1)[::-1]).transpose(2, 1, 0))
    return GridMaps(
        origin=center - voxels * spacing / 2.0,
        spacing=spacing,
        # C order, so that the flat view the energy function indexes is no copy.
        values=np.ascontiguousarray(np.stack(arrays)),
        type_index={name: i for i, name in enumerate(names)},
    )


def xs_types(mol: Chem.Mol) -> list[str]:
    """Return the X-Score type Vina gives each heavy atom of ``mol``, in index order.

    Carbon bonded to a heteroatom (N, O, S) is polar (C_P), other carbon hydrophobic
    (C_H). Nitrogen and oxygen bonded to a hydrogen are donors. Oxygen is always an
    acceptor, nitrogen only without hydrogens and with fewer than three heavy
    neighbours (Meeko's NA type), so backbone amide and proline nitrogens are not.
    """
    types = []
    for atom in mol.GetAtoms():
        element = atom.GetSymbol()
        if element == "H":
            continue
        neighbours = [n.GetSymbol() for n in atom.GetNeighbors()]
        donor = "H" in neighbours
        if element == "C":
            polar = any(symbol in ("N", "O", "S") for symbol in neighbours)
            types.append("C_P" if polar else "C_H")
        elif element == "N":
            heavy = sum(1 for symbol in neighbours if symbol != "H")
            acceptor = not donor and heavy < 3
            types.append(
                {
                    (True, True): "N_DA",
                    (True, False): "N_D",
                    (False, True): "N_A",
                    (False, False): "N_P",
                }[(donor, acceptor)]
            )
        elif element == "O":
            types.append("O_DA" if donor else "O_A")
        elif element == "S":
            types.append("S_P")
        else:
            raise ValueError(f"no X-Score type for element {element} in a peptide")
    return types


class BackboneModel:
    """The heavy atoms of a CB-truncated peptide as the refinement moves them.

    Positions are arrays (..., n_heavy, 3) whose rows follow the heavy atoms of
    ``mol`` in index order: ``heavy[i]`` is the molecule index of row ``i``. Each
    phi (N-CA) and psi (CA-C) bond turns the atoms on its smaller side: row
    ``moving[k]`` is the mask of bond ``k``, which turns about the axis from row
    ``fixed[k]`` to row ``pivot[k]``. Proline's phi, closed by its ring, stays.
    ``clash_weight`` (kcal/mol per Å^2) weighs the squared overlap of atoms closer
    than ``clash_distance`` (Å).
    """

    def __init__(
        self,
        mol: Chem.Mol,
        maps: GridMaps,
        clash_weight: float = CLASH_WEIGHT,
        clash_distance: float = CLASH_DISTANCE,
    ):
        self.clash_weight = clash_weight
        self.clash_distance = clash_distance
        self.heavy = np.array(
            [atom.GetIdx() for atom in mol.GetAtoms() if atom.GetAtomicNum() > 1]
        )
        types = xs_types(mol)
        missing = sorted(set(types) - set(maps.type_index))
        if missing:
            raise ValueError(
                f"the grid maps lack the X-Score types {', '.join(missing)}; set the "
                "peptide as Vina's ligand before writing the maps"
            )
        self.types = np.array([maps.type_index[name] for name in types])
        row = {index: i for i, index in enumerate(self.heavy)}
        # RemoveHs keeps the heavy atoms' order, so its atom indices are the rows.
        heavy_mol = Chem.RemoveHs(mol)
        topological = Chem.GetDistanceMatrix(heavy_mol)
        self.clash_pairs = np.nonzero(np.triu(topological >= 4))
        # pair_incidence[a, p] is +1 or -1 where atom a is the first or second atom
        # of clash pair p, so that it sums pair gradients onto atoms.
        self.pair_incidence = np.zeros((len(self.heavy), len(self.clash_pairs[0])))
        pairs = np.arange(len(self.clash_pairs[0]))
        self.pair_incidence[self.clash_pairs[0], pairs] = 1.0
        self.pair_incidence[self.clash_pairs[1], pairs] = -1.0

        residues = peptide_builder.backbone_atoms(mol)
        self.residue_rows = [
            (row[r.n], row[r.ca], row[r.c], row[r.o]) for r in residues
        ]
        self.backbone_rows = np.array([i for rows in self.residue_rows for i in rows])
        self.oxt_row = next(
            row[atom.GetIdx()]
            for atom in mol.GetAtoms()
            if atom.GetPDBResidueInfo().GetName().strip() == "OXT"
        )
        n_atoms = len(self.heavy)
        fixed, pivot, moving = [], [], []
        for number, residue in enumerate(residues):
            bonds = [(residue.ca, residue.c)]
            if number > 0 and not mol.GetAtomWithIdx(residue.n).IsInRing():
                bonds.append((residue.n, residue.ca))
            for first, second in bonds:
                side = side_of_bond(heavy_mol, row[first], row[second])
                other = np.setdiff1d(np.arange(n_atoms), side)
                mask = np.zeros(n_atoms, dtype=bool)
                if len(side) <= len(other):
                    fixed.append(row[first])
                    pivot.append(row[second])
                    mask[side] = True
                else:
                    fixed.append(row[second])
                    pivot.append(row[first])
                    mask[other] = True
                moving.append(mask)
        self.fixed = np.array(fixed)
        self.pivot = np.array(pivot)
        self.moving = np.array(moving)

    def energy_and_gradient(
        self, maps: GridMaps, xyz: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the energy (C,) in kcal/mol and its gradient (C, n, 3) in kcal/mol/Å.

        The energy is the map energy plus the clash penalty of the poses ``xyz``.
        """
        map_energy, map_gradient = _map_energy(maps, xyz, self.types)
        clash_energy, clash_gradient = self._clash_energy(xyz)
        return map_energy + clash_energy, map_gradient + clash_gradient

    def _clash_energy(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first, second = self.clash_pairs
        difference = xyz[:, first, :] - xyz[:, second, :]
        distance = np.sqrt(np.einsum("cpi,cpi->cp", difference, difference))
        overlap = np.clip(self.clash_distance - distance, 0.0, None)
        energy = self.clash_weight * (overlap**2).sum(axis=-1)
        # dE/dx_first = -2 w overlap (x_first - x_second) / distance.
        scale = -2.0 * self.clash_weight * overlap / np.maximum(distance, 1e-6)
        pair_gradient = scale[..., None] * difference
        return energy, np.matmul(self.pair_incidence, pair_gradient)


def _map_energy(
    maps: GridMaps, xyz: np.ndarray, types: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return the summed map energy (C,) of poses ``xyz`` and its gradient (C, n, 3)."""
    energy, gradient = atom_map_energies(maps, xyz, types)
    return energy.sum(axis=-1), gradient


def atom_map_energies(
    maps: GridMaps, xyz: np.ndarray, types: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return each atom's map energy (..., n) and its gradient (..., n, 3).

    ``types`` holds each atom's index into ``maps.values``. Atoms outside the maps
    take the value at the nearest edge plus ``OUTSIDE_PENALTY`` per Å outside.
    """
    shape = np.array(maps.values.shape[1:])
    scaled = (xyz - maps.origin) / maps.spacing
    clipped = np.clip(scaled, 0.0, shape - 1.000001)
    beyond = scaled - clipped
    lower = np.floor(clipped).astype(np.int64)
    fraction = clipped - lower
    flat = maps.values.reshape(-1)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    base = types * int(np.prod(shape)) + lower @ strides
    energy = np.zeros(xyz.shape[:-1])
    gradient = np.zeros(xyz.shape)
    fx, fy, fz = fraction[..., 0], fraction[..., 1], fraction[..., 2]
    # Trilinear interpolation: each of the 8 surrounding grid points weighs by the
    # product of its per-axis weights (1 - f or f).
    for dx in (0, 1):
        wx, sx = (fx, 1.0) if dx else (1.0 - fx, -1.0)
        for dy in (0, 1):
            wy, sy = (fy, 1.0) if dy else (1.0 - fy, -1.0)
            for dz in (0, 1):
                wz, sz = (fz, 1.0) if dz else (1.0 - fz, -1.0)
                value = flat[base + dx * strides[0] + dy * strides[1] + dz]
                energy += wx * wy * wz * value
                gradient[..., 0] += sx * wy * wz * value
                gradient[..., 1] += wx * sy * wz * value
                gradient[..., 2] += wx * wy * sz * value
    gradient /= maps.spacing
    outside = np.abs(beyond).sum(axis=-1) * maps.spacing
    gradient += OUTSIDE_PENALTY * np.sign(beyond)
    return energy + OUTSIDE_PENALTY * outside, gradient


def side_of_bond(mol: Chem.Mol, first: int, second: int) -> np.ndarray:
    """Return the atoms on ``second``'s side of the bond ``first``-``second``."""
    seen = {second}
    stack = [second]
    while stack:
        atom = mol.GetAtomWithIdx(stack.pop())
        for neighbour in atom.GetNeighbors():
            index = neighbour.GetIdx()
            if index == first and atom.GetIdx() == second:
                continue
            if index not in seen:
                seen.add(index)
                stack.append(index)
    return np.array(sorted(seen))


def rotate(
    xyz: np.ndarray,
    mask: np.ndarray,
    origin: np.ndarray,
    axis: np.ndarray,
    angle: np.ndarray,
) -> np.ndarray:
    """Turn the masked atoms of each pose by ``angle`` (radians) about its axis.

    ``xyz`` is (C, n, 3), ``mask`` (C, n) or (n,), ``origin`` and ``axis`` (C, 3),
    ``angle`` (C,). The rotation matrices follow Rodrigues' formula.
    """
    u = axis / np.sqrt((axis * axis).sum(axis=1, keepdims=True))
    sin = np.sin(angle)[:, None, None]
    cos = np.cos(angle)[:, None, None]
    cross = np.zeros((len(u), 3, 3))
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = -u[:, 2], u[:, 1], -u[:, 0]
    cross -= cross.transpose(0, 2, 1)
    rotation = cos * np.eye(3) + sin * cross + (1.0 - cos) * u[:, :, None] * u[:, None]
    arms = xyz - origin[:, None, :]
    moved = np.matmul(arms, rotation.transpose(0, 2, 1)) + origin[:, None, :]
    return np.where(mask[..., None], moved, xyz)


def relax(
    model: BackboneModel, maps: GridMaps, xyz: np.ndarray, n_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Descend each pose's energy in torsion and rigid-body space.

    A step turns every backbone torsion, rotates the peptide about its centroid and
    shifts it against the gradient, scaled by a factor per pose. The factor grows by
    1.3 after a step that lowers the energy. A step that does not is undone, and the
    factor halves. Returns the energies (C,) in kcal/mol and the poses (C, n, 3).
    """
    chains = np.arange(len(xyz))
    current = xyz.copy()
    energy, gradient = model.energy_and_gradient(maps, current)
    step = np.full(len(xyz), 0.05)
    for _ in range(n_steps):
        # The energy's derivative by a torsion angle is the torque of the gradient
        # on the moving atoms about the bond axis.
        axes = current[:, model.pivot] - current[:, model.fixed]
        axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
        arms = current[:, None, :, :] - current[:, model.pivot][:, :, None, :]
        torques = np.cross(arms, gradient[:, None, :, :])
        torques = (torques * model.moving[None, :, :, None]).sum(axis=2)
        torsion_gradient = np.einsum("cki,cki->ck", torques, axes)
        centroid = current.mean(axis=1)
        rigid_torque = np.cross(current - centroid[:, None, :], gradient).sum(axis=1)
        net_force = gradient.sum(axis=1)

        trial = current
        angles = np.clip(
            -step[:, None] * torsion_gradient, -MAX_TORSION_STEP, MAX_TORSION_STEP
        )
        for k in range(len(model.pivot)):
            origin = trial[chains, model.pivot[k]]
            axis = origin - trial[chains, model.fixed[k]]
            trial = rotate(trial, model.moving[k], origin, axis, angles[:, k])
        # The rotation and shift take smaller factors than the torsions, because
        # they move every atom.
        rotation = -step[:, None] * rigid_torque * 0.02
        norm = np.linalg.norm(rotation, axis=1)
        axis = np.where(norm[:, None] > 0, rotation, np.array([1.0, 0.0, 0.0]))
        angle = np.clip(norm, 0.0, MAX_ROTATION_STEP)
        everything = np.ones(trial.shape[1], dtype=bool)
        trial = rotate(trial, everything, trial.mean(axis=1), axis, angle)
        shift = -step[:, None] * net_force * 0.1
        length = np.linalg.norm(shift, axis=1, keepdims=True)
        shift *= np.minimum(1.0, MAX_SHIFT_STEP / np.maximum(length, 1e-9))
        trial = trial + shift[:, None, :]

        trial_energy, trial_gradient = model.energy_and_gradient(maps, trial)
        better = trial_energy < energy
        current = np.where(better[:, None, None], trial, current)
        gradient = np.where(better[:, None, None], trial_gradient, gradient)
        energy = np.where(better, trial_energy, energy)
        step = np.where(better, step * 1.3, step * 0.5)
    return energy, current


def refine(
    model: BackboneModel,
    maps: GridMaps,
    starts: np.ndarray,
    settings: RefinementSettings,
    rng: np.random.Generator,
) -> np.ndarray:
    """Refine each start (S, n, 3) by Monte Carlo with relaxation.

    Returns, for each start, the lowest-energy pose (S, n, 3) that any of its
    ``settings.n_chains`` chains reached, the relaxed start included.
    """
    n_starts = len(starts)
    poses = np.repeat(starts, settings.n_chains, axis=0)
    energy, current = relax(model, maps, poses, settings.n_relax_steps)
    best, best_energy = current.copy(), energy.copy()
    n_chains = len(poses)
    chains = np.arange(n_chains)
    n_torsions = len(model.pivot)
    for _ in range(settings.n_rounds):
        trial = current
        for _ in range(settings.n_kicked_torsions):
            chosen = rng.integers(n_torsions, size=n_chains)
            origin = trial[chains, model.pivot[chosen]]
            axis = origin - trial[chains, model.fixed[chosen]]
            angle = np.radians(rng.normal(0.0, settings.kick_deg, n_chains))
            trial = rotate(trial, model.moving[chosen], origin, axis, angle)
        trial = trial + rng.normal(0.0, settings.kick_shift, (n_chains, 1, 3))
        trial_energy, trial = relax(model, maps, trial, settings.n_relax_steps)

        delta = np.clip(trial_energy - energy, 0.0, None)
        accept = rng.random(n_chains) < np.exp(-delta / settings.temperature_kcal)
        current = np.where(accept[:, None, None], trial, current)
        energy = np.where(accept, trial_energy, energy)
        improved = energy < best_energy
        best = np.where(improved[:, None, None], current, best)
        best_energy = np.where(improved, energy, best_energy)
    by_start = best_energy.reshape(n_starts, settings.n_chains).argmin(axis=1)
    return best.reshape(n_starts, settings.n_chains, *starts.shape[1:])[
        np.arange(n_starts), by_start
    ]


def backbone_dihedrals(
    model: BackboneModel, xyz: np.ndarray
) -> list[tuple[float, float]]:
    """Return each residue's (phi, psi) in degrees for the pose ``xyz`` (n, 3).

    The first residue's phi is 0, because it is undefined and
    :func:`peptide_opt.engines.peptide_builder.set_backbone` ignores it. The last
    residue's psi is measured to OXT, as ``set_backbone`` sets it.
    """
    angles = []
    rows = model.residue_rows
    for index, (n, ca, c, _) in enumerate(rows):
        phi = 0.0
        if index > 0:
            phi = _dihedral(xyz[rows[index - 1][2]], xyz[n], xyz[ca], xyz[c])
        following = rows[index + 1][0] if index + 1 < len(rows) else model.oxt_row
        psi = _dihedral(xyz[n], xyz[ca], xyz[c], xyz[following])
        angles.append((phi, psi))
    return angles


def _dihedral(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> float:
    """Return the dihedral angle a-b-c-d in degrees, with the IUPAC sign convention."""
    b0, b1, b2 = a - b, c - b, d - c
    b1 = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1) * b1
    w = b2 - np.dot(b2, b1) * b1
    return float(np.degrees(np.arctan2(np.dot(np.cross(b1, v), w), np.dot(v, w))))
