"""Peptide docking and pose scoring with AutoDock Vina (Python bindings) and Meeko.

A naive flexible dock of a peptide (every torsion free) is slow and inaccurate: the
search space of 30 or more torsions plus six rigid-body degrees of freedom is too large
for Vina's Monte Carlo. The search here is split into stages instead:

1. **Backbone ensemble.** The peptide is built in fixed backbone states (beta strand,
   polyproline II, alpha helix) and in random mixtures of Ramachandran basins
   (:func:`peptide_opt.engines.peptide_builder.backbone_ensemble`).
2. **Rigid backbone docking.** Each backbone, with side chains cut back to CB, is docked
   as a rigid body (no torsions) on Vina grid maps computed once per receptor and box.
   Rigid-body docking of about 40 atoms converges in tens of thousands of evaluations.
3. **Flexible-backbone refinement.** The best distinct rigid placements are refined
   with their phi and psi free, by Monte Carlo with gradient relaxation on Vina's own
   maps (:mod:`peptide_opt.engines.backbone_search`). A backbone that fits a narrow
   groove must be within about 1 Å of the bound one, closer than a small ensemble
   gets. Each refined backbone is optimized by Vina again as a rigid body and joins
   the candidates.
4. **Side chains.** The best placements, at least 2 Å backbone RMSD apart, get their
   side chains back, set to the staggered rotamers that fit the receptor best
   (:mod:`peptide_opt.engines.side_chains`). ``docking_affinity`` is the rigid
   search's Vina energy of the CB-truncated backbone.
   Peptides longer than ``SearchSettings.max_rigid_length`` take another path
   instead of stages 1-3, because no rigid backbone of that length fits a protein
   surface. Overlapping segments of ``segment_length`` residues go through stages 1
   and 2, the best segment placements are grown to the whole peptide one residue at a
   time on Vina's maps (:mod:`peptide_opt.engines.growth`), and the grown chains are
   refined as in stage 3. Their ``docking_affinity`` is Vina's energy of the
   CB-truncated chain as a rigid body, summed residue by residue.
5. **Local flexible refinement** (the ``score`` step). Vina optimizes each pose
   locally with every torsion free, backbone and side chains; its energy is the
   pose's ``affinity``.

Setting a Vina ligand costs time and memory that grow with the square of its atom
count, because Vina 1.2.7 tabulates every intramolecular atom pair. The stages
therefore set few ligands: one per backbone conformer, one per refined start plus one
to export the maps, and one per pose.

NOTE: ``bench/vina_ligand_cost.py`` measured the peak memory of setting one ligand at
about 0.30 MB per squared PDBQT atom count: 1.3 GB for PQQATDD (67 atoms) and 4.6 GB
for the CB-truncated 21-residue peptide of 5FFG (125 atoms). The full 21-residue
peptide (201 atoms) would need about 12 GB. A pose whose whole-peptide ligand would need
more than ``WHOLE_LIGAND_MEMORY_MB`` is therefore scored in residues instead
(:func:`score_by_residue`): it is minimized in the receptor with OpenMM
(:mod:`peptide_opt.engines.sidechains`, the minimization that ``rescore`` applies to
designs), and Vina scores each residue as a rigid ligand on the same maps. Vina's
intermolecular energy is a sum over ligand atoms. The cut runs through the peptide
bonds, so every atom keeps the Vina type it has in the whole peptide, and the sum over
residues is the whole peptide's intermolecular energy. The torsional factor then uses
Vina's torsion count of the whole peptide (:func:`vina_torsion_count`). A test checks
the sum against Vina's score of the whole ligand.

Every Vina call goes through grid maps (``no_refine=True``), so docking, local
optimization and scoring use the same energy surface. The affinity reported is Vina's
total energy (kcal/mol): intermolecular energy divided by the torsional entropy factor
``1 + 0.0585 * N_rot``, where ``N_rot`` counts the active torsions of the fully flexible
peptide, so affinities of poses of the same peptide are comparable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import time
from collections import OrderedDict

import numpy as np
import vina as vina_package
from meeko import (
    MoleculePreparation,
    PDBQTWriterLegacy,
    Polymer,
    PolymerCreationError,
    ResidueChemTemplates,
)
from rdkit import Chem
from rdkit.Geometry import Point3D
from scipy.spatial import cKDTree
from vina import Vina

from peptide_opt.engines import backbone_search, growth, peptide_builder, side_chains
from peptide_opt.engines.backbone_search import xs_types
from peptide_opt.errors import EngineError
from peptide_opt.pipeline.types import PeptideModel, Pose, Receptor, Site
from peptide_opt.processes import spawned_pool

logger = logging.getLogger(__name__)

#: Bonds a peptide backbone can rotate about: N-CA (phi) and CA-C (psi).
BACKBONE_SMARTS = "[#7]-[#6X4]-[#6X3]=[#8]"
#: Every single bond between heavy atoms.
ANY_BOND_SMARTS = "[!#1]-[!#1]"

#: Vina grid spacing (Å), Vina's default.
GRID_SPACING = 0.375

#: Residue pairs closer than this (Å) that are not peptide- or disulfide-bonded are
#: clashes of rebuilt atoms; Meeko would read them as bonds.
CLASH_BOND_DISTANCE = 1.7

#: Poses closer than this backbone RMSD (Å, no superposition) are one cluster.
CLUSTER_RMSD = 2.0

#: Peak memory (MB) of setting a Vina 1.2.7 ligand per squared PDBQT atom count,
#: measured by bench/vina_ligand_cost.py (0.297 for 67 atoms, 0.295 for 125).
LIGAND_MEMORY_MB_PER_ATOM_PAIR = 0.30
#: Largest estimated ligand set-up (MB) the engine attempts; larger ones raise
#: EngineError instead of running the task out of memory.
MAX_LIGAND_MEMORY_MB = 6000.0
#: Largest estimated set-up (MB) of a whole flexible peptide that ``score`` optimizes
#: with Vina, about 90 PDBQT atoms or 9 residues. Larger poses are scored in residues.
WHOLE_LIGAND_MEMORY_MB = 2500.0
#: Weight of the torsional entropy term of Vina's ``vina`` scoring function (Vina
#: 1.2.7's default): affinity = intermolecular energy / (1 + weight * torsions).
TORSION_WEIGHT = 0.05846
#: Key of ``pose.detail`` that marks a pose already minimized in the receptor by the
#: threading engine (``rescore`` and later rounds set it), which the residue path then
#: scores as it is.
MINIMIZED_IN_RECEPTOR = "minimized_in_receptor"
#: Vina's message for a ligand with atoms outside its grid maps (Vina 1.2.7).
OUTSIDE_BOX_MESSAGE = "outside the grid box"

#: Values of ``pose.detail["scoring"]``, one per scoring path.
SCORING_WHOLE = "vina local optimization of the whole peptide"
SCORING_BY_RESIDUE = "openmm minimization in the receptor, vina score summed by residue"


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """Effort of the docking search; the defaults suit peptides of 5-25 residues.

    ``n_random_backbones`` random backbones join the three named states. Each backbone
    is docked by ``exhaustiveness`` Monte Carlo runs of at most ``max_evals`` energy
    evaluations, which yield up to ``poses_per_backbone`` placements. The best
    ``n_refined_starts`` distinct placements are refined with a flexible backbone as
    ``refinement`` sets (0 turns the refinement off).
    """

    n_random_backbones: int = 9
    exhaustiveness: int = 8
    max_evals: int = 30000
    poses_per_backbone: int = 9
    n_refined_starts: int = 8
    refinement: backbone_search.RefinementSettings = dataclasses.field(
        default_factory=backbone_search.RefinementSettings
    )
    #: Peptides longer than ``max_rigid_length`` residues are docked in segments of
    #: ``segment_length`` residues that start at most ``segment_stride`` apart. The
    #: best ``n_grown_segments`` segment placements, at most ``segments_per_window``
    #: of one segment, are grown to the whole peptide (:mod:`growth`), and the best
    #: ``n_grown_kept`` grown chains of each are refined.
    max_rigid_length: int = 12
    segment_length: int = 7
    segment_stride: int = 3
    n_grown_segments: int = 36
    segments_per_window: int = 6
    n_grown_kept: int = 4
    #: Clash weight (kcal/mol per Å^2) and distance (Å) of growth and refinement of
    #: grown chains. A long chain folds back on itself: with the penalty of short
    #: peptides, backbone atoms of grown 5FFG chains ended 1.7-1.9 Å apart. The
    #: distance exceeds the 2.6 Å that the rebuilt chain must keep.
    grown_clash_weight: float = 50.0
    grown_clash_distance: float = 2.8
    #: A grown chain whose backbone and CB atoms come closer than this (Å) is
    #: dropped; the ``score`` step's minimization in the receptor relaxes the rest.
    grown_min_distance: float = 2.2
    n_grown_refined: int = 32
    growth_settings: growth.GrowthSettings = dataclasses.field(
        default_factory=growth.GrowthSettings
    )


@dataclasses.dataclass
class LigandPDBQT:
    """A ligand's PDBQT text and the map from molecule atom to PDBQT atom index."""

    text: str
    atom_to_pdbqt: dict[int, int]
    n_torsions: int


@dataclasses.dataclass
class Candidate:
    """A docked placement of one backbone conformer, with its Vina energy (kcal/mol)."""

    energy: float
    label: str
    mol: Chem.Mol
    backbone_xyz: np.ndarray
    search: str = "rigid backbone, side chains cut to CB"


class VinaDockingEngine:
    """Docking engine on AutoDock Vina grid maps; see the module docstring."""

    name = "vina"
    version = vina_package.__version__

    def __init__(self, settings: SearchSettings | None = None, cache_size: int = 1):
        self.settings = settings or SearchSettings()
        self._grids: OrderedDict[tuple, tuple[int, Vina]] = OrderedDict()
        self._cache_size = max(1, cache_size)
        # The last receptor's PDBQT text and refinement maps, by their grid key.
        self._receptor_pdbqt: tuple[str, str] | None = None
        self._maps: tuple[tuple, backbone_search.GridMaps] | None = None

    # ------------------------------------------------------------------ public API

    def dock(
        self,
        receptor: Receptor,
        peptide: PeptideModel,
        site: Site,
        n_poses: int,
        seed: int,
        cores: int,
    ) -> list[Pose]:
        """Dock ``peptide`` in ``site``; return up to ``n_poses`` poses, best first."""
        started = time.perf_counter()
        grid = self.grid(receptor, site, cores, seed)
        receptor_xyz = _receptor_heavy_xyz(receptor.pdb_text)

        rng = np.random.default_rng(seed)
        if len(peptide.sequence) > self.settings.max_rigid_length:
            candidates = self._grow_segments(grid, receptor, site, cores, peptide, rng)
            n_backbones = len(candidates)
        else:
            ensemble = peptide_builder.backbone_ensemble(
                peptide.mol, self.settings.n_random_backbones, rng
            )
            candidates = self._dock_ensemble(grid, _fitting_conformers(ensemble, site))
            n_backbones = len(ensemble)
            candidates.extend(
                self._refine_backbones(grid, receptor, site, cores, candidates, rng)
            )

        # Side chains go back on the best distinct placements. A placement whose side
        # chains cannot all stay inside the grid is skipped, because Vina rejects it.
        box = _box_corners(site, inset=0.5)
        kept = []
        for candidate in _cluster(candidates, CLUSTER_RMSD, len(candidates)):
            side_chains.pack_side_chains(candidate.mol, receptor_xyz, box)
            if not _inside(candidate.mol, box):
                logger.debug("vina_candidate_outside_box template=%s", candidate.label)
                continue
            kept.append(candidate)
            if len(kept) == n_poses:
                break
        logger.info(
            "vina_dock_finished backbones=%d candidates=%d poses=%d duration_s=%.1f",
            n_backbones,
            len(candidates),
            len(kept),
            time.perf_counter() - started,
        )
        if not kept:
            best = min(candidate.energy for candidate in candidates)
            raise EngineError(
                f"none of the {len(candidates)} docked placements of the peptide keeps "
                "its side chains inside the docking box (best rigid-backbone Vina "
                f"energy {best:.1f} kcal/mol; a positive energy means that every "
                "placement clashes with the receptor). Give site_center and site_size "
                "(--site-center, --site-size) around where the peptide binds, with "
                "room for its side chains"
            )
        return [
            Pose(
                peptide_pdb=peptide_builder.to_pdb(candidate.mol),
                docking_affinity=candidate.energy,
                detail={
                    "backbone_template": candidate.label,
                    "search": candidate.search,
                },
            )
            for candidate in kept
        ]

    def score(
        self, receptor: Receptor, site: Site, poses: list[Pose], cores: int
    ) -> None:
        """Optimize each pose locally; set ``affinity`` in kcal/mol.

        A pose whose whole-peptide ligand fits ``WHOLE_LIGAND_MEMORY_MB`` is optimized
        by Vina with every torsion free. A larger one is minimized with OpenMM, unless
        ``pose.detail[MINIMIZED_IN_RECEPTOR]`` is true, and scored in residues (see the
        module docstring). ``pose.detail["scoring"]`` names the path taken, and the
        pose's ``peptide_pdb`` is replaced by the optimized coordinates.
        """
        grid = self.grid(receptor, site, cores, seed=None)
        mols = [peptide_builder.from_pdb(pose.peptide_pdb) for pose in poses]
        ligands = [ligand_pdbqt(mol, rigid="none") for mol in mols]
        too_large = [
            ligand_memory_mb(ligand.text) > WHOLE_LIGAND_MEMORY_MB for ligand in ligands
        ]
        to_minimize = [
            index
            for index, pose in enumerate(poses)
            if too_large[index] and not pose.detail.get(MINIMIZED_IN_RECEPTOR)
        ]
        minimized_pdb = dict(
            zip(
                to_minimize,
                _minimize_in_receptor(
                    receptor.pdb_text,
                    [poses[index].peptide_pdb for index in to_minimize],
                    cores,
                ),
            )
        )
        for index, (pose, mol, ligand) in enumerate(zip(poses, mols, ligands)):
            if not too_large[index]:
                energy, optimized = self.optimize(grid, mol, ligand)
                pose.detail["scoring"] = SCORING_WHOLE
            else:
                warning = (
                    f"the peptide's Vina ligand would need about "
                    f"{ligand_memory_mb(ligand.text) / 1024:.1f} GB, above "
                    f"{WHOLE_LIGAND_MEMORY_MB / 1024:.1f} GB: poses were minimized "
                    "with OpenMM and scored by Vina residue by residue, not optimized "
                    "by Vina"
                )
                optimized = mol
                if pose.detail.get(MINIMIZED_IN_RECEPTOR):
                    energy = score_by_residue(grid, mol, ligand)
                else:
                    minimized = peptide_builder.from_pdb(minimized_pdb[index])
                    try:
                        energy = score_by_residue(grid, minimized)
                        optimized = minimized
                    except EngineError as error:
                        if OUTSIDE_BOX_MESSAGE not in str(error):
                            raise
                        # The docked pose lies inside the maps; only the
                        # minimization moved atoms out.
                        energy = score_by_residue(grid, mol, ligand)
                        warning += (
                            "; minimization moved atoms of some poses out of the "
                            "docking box, and those poses were scored as docked"
                        )
                        pose.detail["minimization_left_box"] = True
                # Vina reports its energies to 3 decimals.
                energy = round(energy, 3)
                pose.detail["scoring"] = SCORING_BY_RESIDUE
                pose.detail["warning"] = warning
            pose.affinity = energy
            pose.peptide_pdb = peptide_builder.to_pdb(optimized)

    # ------------------------------------------------------------------ grids

    def grid(
        self, receptor: Receptor, site: Site, cores: int, seed: int | None
    ) -> Vina:
        """Return a Vina object with the receptor's maps for ``site``, computed once.

        The maps of the last ``cache_size`` receptor-and-box pairs are kept, so that the
        ``dock`` and ``score`` steps of one task share them. Vina fixes its random seed
        when it is created, so a docking ``seed`` other than the cached object's makes
        new maps. ``seed=None`` (local optimization only) takes any cached object.
        """
        key = _grid_key(receptor, site, cores)
        cached = self._grids.get(key)
        if cached is not None and (seed is None or cached[0] == seed):
            self._grids.move_to_end(key)
            return cached[1]

        # Drop the old maps first: they take hundreds of MB each.
        self._grids.pop(key, None)
        while len(self._grids) >= self._cache_size:
            self._grids.popitem(last=False)
        started = time.perf_counter()
        seed = 0 if seed is None else seed
        grid = self._vina_with_maps(receptor, site, cores, seed)
        logger.info(
            "vina_maps_computed size=%s duration_s=%.1f",
            "x".join(f"{v:.1f}" for v in site.size),
            time.perf_counter() - started,
        )
        self._grids[key] = (seed, grid)
        return grid

    def _vina_with_maps(
        self, receptor: Receptor, site: Site, cores: int, seed: int, **map_options
    ) -> Vina:
        """Return a new Vina object with the receptor set and its maps for ``site``."""
        grid = Vina(sf_name="vina", cpu=cores, seed=seed, no_refine=True, verbosity=0)
        with tempfile.TemporaryDirectory(prefix="peptide-opt-vina-") as folder:
            path = os.path.join(folder, "receptor.pdbqt")
            with open(path, "w") as handle:
                handle.write(self._receptor_pdbqt_text(receptor))
            _call_vina("set_receptor", grid.set_receptor, path)
        _call_vina(
            "compute_vina_maps",
            grid.compute_vina_maps,
            center=list(site.center),
            box_size=list(site.size),
            spacing=GRID_SPACING,
            **map_options,
        )
        return grid

    def _receptor_pdbqt_text(self, receptor: Receptor) -> str:
        """Return :func:`receptor_pdbqt` of ``receptor``, kept for the last one."""
        digest = hashlib.sha256(receptor.pdb_text.encode()).hexdigest()
        if self._receptor_pdbqt is None or self._receptor_pdbqt[0] != digest:
            self._receptor_pdbqt = (digest, receptor_pdbqt(receptor.pdb_text))
        return self._receptor_pdbqt[1]

    # ------------------------------------------------------------------ stages

    def _dock_backbone(
        self, grid: Vina, label: str, conformer: Chem.Mol
    ) -> list[Candidate]:
        """Dock the CB-truncated backbone as a rigid body and return its placements."""
        truncated = peptide_builder.truncate_side_chains(conformer)
        ligand = ligand_pdbqt(truncated, rigid="all")
        settings = self.settings
        _set_ligand(grid, ligand.text)
        _call_vina(
            "dock",
            grid.dock,
            exhaustiveness=settings.exhaustiveness,
            n_poses=settings.poses_per_backbone,
            min_rmsd=1.0,
            max_evals=settings.max_evals,
        )
        coordinates = grid.poses(
            n_poses=settings.poses_per_backbone,
            energy_range=100.0,
            coordinates_only=True,
        )
        energies = grid.energies(
            n_poses=settings.poses_per_backbone, energy_range=100.0
        )

        reference = _backbone_xyz(truncated)
        backbone_index = _backbone_indices(truncated)
        conformer_xyz = conformer.GetConformer().GetPositions()
        candidates = []
        for pose_xyz, energy in zip(coordinates, energies):
            posed = np.array(
                [pose_xyz[ligand.atom_to_pdbqt[i]] for i in backbone_index]
            )
            rotation, translation = _kabsch(reference, posed)
            placed = Chem.Mol(conformer)
            _set_positions(placed, conformer_xyz @ rotation.T + translation)
            candidates.append(Candidate(float(energy[0]), label, placed, posed))
        return candidates

    def _dock_ensemble(
        self, grid: Vina, ensemble: list[tuple[str, Chem.Mol]]
    ) -> list[Candidate]:
        """Dock every labelled backbone conformer; raise when none fits the box."""
        candidates = []
        for label, conformer in ensemble:
            candidates.extend(self._dock_backbone(grid, label, conformer))
        if not candidates:
            raise EngineError(
                f"Vina placed none of the {len(ensemble)} backbone conformers of the "
                "peptide inside the docking box; give a larger site_size "
                "(--site-size) or a shorter peptide"
            )
        return candidates

    def _grow_segments(
        self,
        grid: Vina,
        receptor: Receptor,
        site: Site,
        cores: int,
        peptide: PeptideModel,
        rng: np.random.Generator,
    ) -> list[Candidate]:
        """Dock segments of a long peptide, grow the best to the whole, refine them.

        Each segment is built, docked and clustered like a short peptide. The grown
        and refined chains are scored by Vina residue by residue, as rigid
        CB-truncated bodies, the energy that rigid docking gives a short peptide.
        """
        settings = self.settings
        started = time.perf_counter()
        sequence = peptide.sequence
        length = settings.segment_length
        seeds: list[tuple[int, Candidate]] = []
        for first in growth.segment_starts(
            len(sequence), length, settings.segment_stride
        ):
            segment = peptide_builder.build_peptide(sequence[first : first + length])
            peptide_builder.embed(segment, int(rng.integers(2**31)))
            ensemble = [
                (f"segment {first + 1}-{first + length} {label}", conformer)
                for label, conformer in peptide_builder.backbone_ensemble(
                    segment, settings.n_random_backbones, rng
                )
            ]
            placements = self._dock_ensemble(grid, ensemble)
            seeds.extend(
                (first, candidate)
                for candidate in _cluster(
                    placements, CLUSTER_RMSD, settings.segments_per_window
                )
            )
        seeds.sort(key=lambda item: (item[1].energy, item[1].label))
        seeds = seeds[: settings.n_grown_segments]
        logger.info(
            "vina_segments_docked segments=%d best_energy=%.2f duration_s=%.1f",
            len({first for first, _ in seeds}),
            seeds[0][1].energy,
            time.perf_counter() - started,
        )

        template = peptide_builder.truncate_side_chains(peptide.mol)
        maps = growth.with_edge_penalty(
            self._refinement_maps(grid, receptor, site, cores, template),
            settings.growth_settings.edge_margin,
            settings.growth_settings.edge_slope,
        )
        model = backbone_search.BackboneModel(
            template,
            maps,
            clash_weight=settings.grown_clash_weight,
            clash_distance=settings.grown_clash_distance,
        )
        grower = growth.GrowthModel(model, template)
        grown, grown_energy, labels = [], [], []
        for first, seed in seeds:
            start = _segment_in_chain(peptide.mol, seed.mol, first, model)
            energies, poses = growth.grow(
                grower,
                maps,
                start,
                first,
                first + length - 1,
                settings.growth_settings,
                rng,
            )
            kept = min(settings.n_grown_kept, len(poses))
            grown.extend(poses[:kept])
            grown_energy.extend(energies[:kept])
            labels.extend([f"{seed.label} grown"] * kept)

        order = np.argsort(grown_energy, kind="stable")
        starts: list[int] = []
        for index in order:
            backbone = grown[index][model.backbone_rows]
            if all(
                backbone_rmsd(backbone, grown[other][model.backbone_rows])
                >= CLUSTER_RMSD
                for other in starts
            ):
                starts.append(int(index))
            if len(starts) == settings.n_grown_refined:
                break
        refined = np.array([grown[i] for i in starts])
        if settings.n_refined_starts > 0:
            refined = backbone_search.refine(
                model, maps, refined, settings.refinement, rng
            )

        candidates = []
        for index, heavy_xyz in zip(starts, refined):
            conformer = _conformer_on_backbone(
                peptide.mol, model, heavy_xyz, settings.grown_min_distance
            )
            if conformer is None:
                continue
            truncated = peptide_builder.truncate_side_chains(conformer)
            try:
                energy = score_by_residue(
                    grid, truncated, ligand_pdbqt(truncated, rigid="all")
                )
            except EngineError as error:
                logger.warning(
                    "vina_grown_backbone_skipped template=%s error=%s",
                    labels[index],
                    error,
                )
                continue
            candidates.append(
                Candidate(
                    round(energy, 3),
                    labels[index],
                    conformer,
                    _backbone_xyz(truncated),
                    search=(
                        "segment docked as a rigid body, grown and refined on Vina "
                        "maps, side chains cut to CB"
                    ),
                )
            )
        logger.info(
            "vina_segments_grown seeds=%d refined=%d candidates=%d duration_s=%.1f",
            len(seeds),
            len(starts),
            len(candidates),
            time.perf_counter() - started,
        )
        if not candidates:
            raise EngineError(
                f"none of the {len(starts)} peptides grown from docked segments fits "
                "the docking box without clashes; give site_center and site_size "
                "(--site-center, --site-size) around where the peptide binds"
            )
        return candidates

    def _refine_backbones(
        self,
        grid: Vina,
        receptor: Receptor,
        site: Site,
        cores: int,
        candidates: list[Candidate],
        rng: np.random.Generator,
    ) -> list[Candidate]:
        """Refine the best distinct placements with a flexible backbone.

        The search of :mod:`peptide_opt.engines.backbone_search` moves each start's
        CB-truncated backbone on Vina's maps. Each start's best result goes back to
        Vina as a rigid body, locally optimized on ``grid``, so that its energy is
        Vina's like that of every other candidate.
        """
        if self.settings.n_refined_starts <= 0:
            return []
        started = time.perf_counter()
        starts = _cluster(candidates, CLUSTER_RMSD, self.settings.n_refined_starts)
        truncated = [peptide_builder.truncate_side_chains(c.mol) for c in starts]
        maps = self._refinement_maps(grid, receptor, site, cores, truncated[0])
        model = backbone_search.BackboneModel(truncated[0], maps)
        start_xyz = np.array(
            [mol.GetConformer().GetPositions()[model.heavy] for mol in truncated]
        )
        best = backbone_search.refine(
            model, maps, start_xyz, self.settings.refinement, rng
        )
        refined = []
        for parent, heavy_xyz in zip(starts, best):
            conformer = _conformer_on_backbone(parent.mol, model, heavy_xyz)
            if conformer is None:
                continue
            label = f"{parent.label} refined"
            try:
                refined.append(self._optimize_rigid(grid, label, conformer))
            except EngineError as error:
                # The export maps reach up to one voxel beyond the docking maps, so
                # a refined pose can stick out of the docking box, which Vina rejects.
                logger.warning(
                    "vina_refined_backbone_skipped template=%s error=%s", label, error
                )
        logger.info(
            "vina_backbones_refined starts=%d refined=%d duration_s=%.1f",
            len(starts),
            len(refined),
            time.perf_counter() - started,
        )
        return refined

    def _refinement_maps(
        self,
        grid: Vina,
        receptor: Receptor,
        site: Site,
        cores: int,
        truncated: Chem.Mol,
    ) -> backbone_search.GridMaps:
        """Compute and read the affinity maps of ``truncated``'s atom types.

        Vina 1.2.7 writes maps only when every axis has an even number of voxels,
        which ``grid`` does not force: forcing it there would move the grid points
        of the docking maps, and with them every docking result. A second Vina object
        computes the maps for export, with at most one more voxel per axis.
        """
        key = (_grid_key(receptor, site, cores), frozenset(xs_types(truncated)))
        if self._maps is not None and self._maps[0] == key:
            return self._maps[1]
        exporter = self._vina_with_maps(
            receptor, site, cores, seed=0, force_even_voxels=True
        )
        # Vina writes the maps of the current ligand's atom types only. The docking
        # grid's ligand tables go first, so that two sets of them never coexist.
        _release_ligand(grid)
        _set_ligand(exporter, _type_probe(ligand_pdbqt(truncated, rigid="all").text))
        try:
            maps = backbone_search.read_grid_maps(exporter)
        except RuntimeError as error:
            raise EngineError(f"Vina write_maps failed: {error}") from error
        self._maps = (key, maps)
        return maps

    def _optimize_rigid(
        self, grid: Vina, label: str, conformer: Chem.Mol
    ) -> Candidate:
        """Optimize the CB-truncated ``conformer`` locally as a rigid body in place."""
        truncated = peptide_builder.truncate_side_chains(conformer)
        ligand = ligand_pdbqt(truncated, rigid="all")
        _set_ligand(grid, ligand.text)
        energies = _call_vina("optimize", grid.optimize)
        with tempfile.TemporaryDirectory(prefix="peptide-opt-vina-") as folder:
            path = os.path.join(folder, "pose.pdbqt")
            _call_vina("write_pose", grid.write_pose, path, overwrite=True)
            with open(path) as handle:
                pose_xyz = _pdbqt_coordinates(handle.read())
        posed = np.array(
            [pose_xyz[ligand.atom_to_pdbqt[i]] for i in _backbone_indices(truncated)]
        )
        rotation, translation = _kabsch(_backbone_xyz(truncated), posed)
        placed = Chem.Mol(conformer)
        _set_positions(
            placed, conformer.GetConformer().GetPositions() @ rotation.T + translation
        )
        return Candidate(
            float(energies[0]),
            label,
            placed,
            posed,
            search="backbone refined on Vina maps, then rigid, side chains cut to CB",
        )

    def optimize(
        self, grid: Vina, mol: Chem.Mol, ligand: LigandPDBQT | None = None
    ) -> tuple[float, Chem.Mol]:
        """Optimize ``mol`` locally with every torsion free; return energy and molecule.

        The energy is Vina's total (kcal/mol) after optimization. Heavy atoms take
        Vina's coordinates; hydrogens are placed anew by RDKit. ``ligand`` is
        ``mol``'s flexible PDBQT when the caller has it already.
        """
        ligand = ligand or ligand_pdbqt(mol, rigid="none")
        _set_ligand(grid, ligand.text)
        energies = _call_vina("optimize", grid.optimize)
        with tempfile.TemporaryDirectory(prefix="peptide-opt-vina-") as folder:
            path = os.path.join(folder, "pose.pdbqt")
            _call_vina("write_pose", grid.write_pose, path, overwrite=True)
            with open(path) as handle:
                pose_xyz = _pdbqt_coordinates(handle.read())
        xyz = mol.GetConformer().GetPositions()
        for atom_index, pdbqt_index in ligand.atom_to_pdbqt.items():
            xyz[atom_index] = pose_xyz[pdbqt_index]
        optimized = Chem.Mol(mol)
        _set_positions(optimized, xyz)
        return float(energies[0]), peptide_builder.rebuild_hydrogens(optimized)


# ---------------------------------------------------------------------- by residue


def score_by_residue(
    grid: Vina, mol: Chem.Mol, ligand: LigandPDBQT | None = None
) -> float:
    """Return Vina's affinity (kcal/mol) of ``mol`` in its pose, without optimization.

    Each residue of ``mol``'s flexible PDBQT is set as a rigid ligand on ``grid``'s
    maps. The residues' intermolecular energies add up to the whole peptide's, and the
    sum is divided by Vina's torsional factor of the whole peptide. Memory stays that
    of the largest residue. Raises :class:`EngineError` (Vina's "outside the grid box")
    when an atom lies outside the maps. ``ligand`` is ``mol``'s flexible PDBQT when
    the caller has it already.
    """
    ligand = ligand or ligand_pdbqt(mol, rigid="none")
    residues: dict[int, list[str]] = {}
    for line in ligand.text.splitlines():
        if line.startswith(("ATOM  ", "HETATM")):
            residues.setdefault(int(line[22:26]), []).append(line)
    intermolecular = 0.0
    for lines in residues.values():
        fragment = "ROOT\n" + "\n".join(lines) + "\nENDROOT\nTORSDOF 0\n"
        _set_ligand(grid, fragment)
        # score()[1] is the ligand's energy on the grid maps: the intermolecular term.
        intermolecular += float(_call_vina("score", grid.score)[1])
    return intermolecular / (1.0 + TORSION_WEIGHT * vina_torsion_count(mol, ligand))


def vina_torsion_count(mol: Chem.Mol, ligand: LigandPDBQT) -> float:
    """Return the torsion count by which Vina 1.2.7 divides the energy of ``ligand``.

    Vina counts, for each heavy atom, its rotatable bonds (the PDBQT's BRANCH bonds) to
    heavy atoms that have more than one heavy neighbour, and takes half the total. A
    bond between two inner atoms counts 1, a bond to a terminal heavy atom 1/2.
    """
    by_serial = {serial: atom for atom, serial in ligand.atom_to_pdbqt.items()}
    heavy_degree = {
        atom.GetIdx(): sum(1 for n in atom.GetNeighbors() if n.GetAtomicNum() > 1)
        for atom in mol.GetAtoms()
    }
    count = 0.0
    for line in ligand.text.splitlines():
        if not line.startswith("BRANCH"):
            continue
        first, second = (by_serial[int(value) - 1] for value in line.split()[1:3])
        if mol.GetAtomWithIdx(first).GetAtomicNum() == 1:
            continue
        if mol.GetAtomWithIdx(second).GetAtomicNum() == 1:
            continue
        count += 0.5 * (heavy_degree[second] > 1) + 0.5 * (heavy_degree[first] > 1)
    return count


def ligand_memory_mb(pdbqt: str) -> float:
    """Return the estimated peak memory (MB) of setting ``pdbqt`` as a Vina ligand."""
    n_atoms = sum(
        1 for line in pdbqt.splitlines() if line.startswith(("ATOM", "HETATM"))
    )
    return LIGAND_MEMORY_MB_PER_ATOM_PAIR * n_atoms**2


def _minimize_in_receptor(
    receptor_pdb: str, peptides_pdb: list[str], cores: int
) -> list[str]:
    """Return each peptide minimized in the receptor by the threading engine.

    Each peptide is threaded with its own sequence, so no residue changes. Its side
    chains and backbone relax under the threading engine's force field, with the
    backbone restrained to its docked position. The peptides are shared among up to
    ``cores`` processes.
    """
    with spawned_pool(min(cores, len(peptides_pdb))) as pool:
        if pool is not None:
            return list(
                pool.map(_minimize_one, [receptor_pdb] * len(peptides_pdb), peptides_pdb)
            )
    return [_minimize_one(receptor_pdb, peptide_pdb) for peptide_pdb in peptides_pdb]


def _minimize_one(receptor_pdb: str, peptide_pdb: str) -> str:
    from peptide_opt.engines.sidechains import SideChainEngine

    engine = SideChainEngine()
    shell = engine.build_shell(receptor_pdb, peptide_pdb)
    sequence = peptide_builder.sequence_of(peptide_pdb)
    # One OpenMM thread per process, because with two the CPU platform sums forces
    # in a varying order: the same 5FFG pose then scored 0.08 kcal/mol apart in two
    # runs after minimization.
    return engine.thread(shell, peptide_pdb, sequence, cores=1).pdb_text


# ---------------------------------------------------------------------- PDBQT


def receptor_pdbqt(pdb_text: str) -> str:
    """Return the receptor as rigid PDBQT text, typed by Meeko's residue templates.

    Atoms of non-neighbouring residues within 1.7 Å of each other are side chains that
    PDBFixer rebuilt into one another. They are not read as bonds but stay in the
    receptor as they are, and a logged warning names the residues.
    """
    clashing = _clashing_residue_pairs(pdb_text)
    if clashing:
        # The prepare step reports overlapping heavy atoms to the user. These pairs
        # include hydrogens (a hydrogen bond can be this short) and only steer Meeko.
        logger.debug(
            "receptor_atoms_overlap residue_pairs=%s",
            ",".join(f"{a}/{b}" for a, b in clashing),
        )
    try:
        polymer = Polymer.from_pdb_string(
            pdb_text,
            ResidueChemTemplates.create_from_defaults(),
            MoleculePreparation(),
            bonds_to_delete=clashing or None,
        )
        rigid, _ = PDBQTWriterLegacy.write_string_from_polymer(polymer)
    except (PolymerCreationError, RuntimeError, NotImplementedError) as error:
        raise EngineError(f"Meeko could not prepare the receptor: {error}") from error
    if not rigid.strip():
        raise EngineError("Meeko wrote an empty receptor PDBQT")
    return rigid


def _clashing_residue_pairs(pdb_text: str) -> list[tuple[str, str]]:
    residue_ids, names, xyz = [], [], []
    for line in pdb_text.splitlines():
        if line.startswith(("ATOM  ", "HETATM")):
            residue_ids.append(f"{line[21]}:{line[22:27].strip()}")
            names.append(line[12:16].strip())
            xyz.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
    if not xyz:
        raise EngineError("receptor PDB text has no atoms")
    pairs = set()
    for i, j in cKDTree(np.array(xyz)).query_pairs(CLASH_BOND_DISTANCE):
        if residue_ids[i] == residue_ids[j]:
            continue
        bonded = {names[i], names[j]}
        if bonded == {"C", "N"} or bonded == {"SG"}:
            continue
        pairs.add(tuple(sorted((residue_ids[i], residue_ids[j]))))
    return sorted(pairs)


def ligand_pdbqt(mol: Chem.Mol, rigid: str) -> LigandPDBQT:
    """Write ``mol`` (explicit hydrogens, one conformer) as a Vina ligand.

    ``rigid`` is ``"none"`` (every rotatable bond free), ``"backbone"`` (phi and psi
    frozen) or ``"all"`` (a rigid body). Non-polar hydrogens are merged into their
    carbons, as Vina expects.
    """
    if rigid == "all":
        preparation = MoleculePreparation(
            rigidify_bonds_smarts=[ANY_BOND_SMARTS], rigidify_bonds_indices=[(0, 1)]
        )
    elif rigid == "backbone":
        preparation = MoleculePreparation(
            rigidify_bonds_smarts=[BACKBONE_SMARTS, BACKBONE_SMARTS],
            rigidify_bonds_indices=[(0, 1), (1, 2)],
        )
    elif rigid == "none":
        preparation = MoleculePreparation()
    else:
        raise ValueError(f"rigid must be 'none', 'backbone' or 'all', got {rigid!r}")
    try:
        setups = preparation.prepare(mol)
    except RuntimeError as error:
        raise EngineError(f"Meeko could not prepare the peptide: {error}") from error
    text, ok, message = PDBQTWriterLegacy.write_string(setups[0], add_index_map=True)
    if not ok:
        raise EngineError(f"Meeko could not write the peptide PDBQT: {message.strip()}")
    return LigandPDBQT(text, _index_map(text), _torsion_count(text))


def _index_map(pdbqt: str) -> dict[int, int]:
    """Parse ``REMARK INDEX MAP`` pairs (1-based molecule, PDBQT) into 0-based ones."""
    numbers: list[int] = []
    for line in pdbqt.splitlines():
        if line.startswith("REMARK INDEX MAP"):
            numbers.extend(int(value) for value in line.split()[3:])
    return {numbers[i] - 1: numbers[i + 1] - 1 for i in range(0, len(numbers), 2)}


def _torsion_count(pdbqt: str) -> int:
    for line in pdbqt.splitlines():
        if line.startswith("TORSDOF"):
            return int(line.split()[1])
    return 0


def _pdbqt_coordinates(pdbqt: str) -> np.ndarray:
    rows = [
        (float(line[30:38]), float(line[38:46]), float(line[46:54]))
        for line in pdbqt.splitlines()
        if line.startswith(("ATOM  ", "HETATM"))
    ]
    return np.array(rows)


# ---------------------------------------------------------------------- geometry


def _receptor_heavy_xyz(pdb_text: str) -> np.ndarray:
    rows = []
    for line in pdb_text.splitlines():
        if line.startswith(("ATOM  ", "HETATM")):
            element = line[76:78].strip() or line[12:14].strip()
            if element.upper() not in ("H", "D"):
                rows.append(
                    (float(line[30:38]), float(line[38:46]), float(line[46:54]))
                )
    return np.array(rows)


def _box_corners(site: Site, inset: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the lower and upper corners (Å) of the box less ``inset`` per side."""
    center = np.array(site.center)
    half = np.array(site.size) / 2.0 - inset
    return center - half, center + half


def _inside(mol: Chem.Mol, box: tuple[np.ndarray, np.ndarray]) -> bool:
    xyz = mol.GetConformer().GetPositions()
    return bool(np.all(xyz >= box[0]) and np.all(xyz <= box[1]))


def _backbone_indices(mol: Chem.Mol) -> list[int]:
    indices = []
    for residue in peptide_builder.backbone_atoms(mol):
        indices.extend([residue.n, residue.ca, residue.c, residue.o])
    return indices


def _backbone_xyz(mol: Chem.Mol) -> np.ndarray:
    return mol.GetConformer().GetPositions()[_backbone_indices(mol)]


def _set_positions(mol: Chem.Mol, xyz: np.ndarray) -> None:
    conformer = mol.GetConformer()
    for index, point in enumerate(xyz):
        conformer.SetAtomPosition(index, Point3D(*point))


def _kabsch(reference: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return rotation R and translation t that best map ``reference`` on ``target``.

    The mapped coordinates are ``reference @ R.T + t``.
    """
    ref_center = reference.mean(axis=0)
    target_center = target.mean(axis=0)
    covariance = (reference - ref_center).T @ (target - target_center)
    u, _, vt = np.linalg.svd(covariance)
    sign = np.sign(np.linalg.det(vt.T @ u.T))
    correction = np.diag([1.0, 1.0, sign])
    rotation = vt.T @ correction @ u.T
    return rotation, target_center - ref_center @ rotation.T


def backbone_rmsd(first: np.ndarray, second: np.ndarray) -> float:
    """Return the RMSD (Å) of two (n, 3) coordinate sets, without superposition."""
    return float(np.sqrt(np.mean(np.sum((first - second) ** 2, axis=1))))


def _cluster(
    candidates: list[Candidate], threshold: float, limit: int
) -> list[Candidate]:
    """Keep the best candidates whose backbones differ by at least ``threshold`` Å."""
    kept: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: (c.energy, c.label)):
        if all(
            backbone_rmsd(candidate.backbone_xyz, other.backbone_xyz) >= threshold
            for other in kept
        ):
            kept.append(candidate)
            if len(kept) == limit:
                break
    return kept


def _grid_key(receptor: Receptor, site: Site, cores: int) -> tuple:
    return (
        hashlib.sha256(receptor.pdb_text.encode()).hexdigest(),
        tuple(round(v, 3) for v in site.center),
        tuple(round(v, 3) for v in site.size),
        cores,
    )


def _type_probe(pdbqt: str) -> str:
    """Return a rigid ligand of the residues that hold every atom type of ``pdbqt``.

    An atom's Vina type depends on its residue alone, so the first and last residues
    and one residue of each name cover the whole peptide. Writing maps for this
    small ligand costs little memory where the whole peptide would cost gigabytes.
    """
    residues: dict[int, list[str]] = {}
    for line in pdbqt.splitlines():
        if line.startswith(("ATOM  ", "HETATM")):
            residues.setdefault(int(line[22:26]), []).append(line)
    numbers = sorted(residues)
    chosen = {numbers[0], numbers[-1]}
    names: set[str] = set()
    for number in numbers:
        name = residues[number][0][17:20]
        if name not in names:
            names.add(name)
            chosen.add(number)
    lines = [line for number in sorted(chosen) for line in residues[number]]
    return "ROOT\n" + "\n".join(lines) + "\nENDROOT\nTORSDOF 0\n"


def _segment_in_chain(
    mol: Chem.Mol,
    segment: Chem.Mol,
    first: int,
    model: backbone_search.BackboneModel,
) -> np.ndarray:
    """Return the heavy atoms (rows of ``model``) of ``mol`` around a placed segment.

    The segment's residues take its phi and psi (the last psi measured to its OXT,
    where the next residue's N goes) and the other residues polyproline II. The chain,
    cut to CB, is superposed on the segment's backbone.
    """
    segment_residues = peptide_builder.backbone_atoms(segment)
    segment_xyz = segment.GetConformer().GetPositions()
    segment_angles = peptide_builder.backbone_dihedrals(segment)
    oxt = next(
        atom.GetIdx()
        for atom in segment.GetAtoms()
        if atom.GetPDBResidueInfo().GetName().strip() == "OXT"
    )
    last = segment_residues[-1]
    segment_angles[-1] = (
        segment_angles[-1][0],
        float(
            np.degrees(
                growth.dihedrals(
                    segment_xyz[None], (last.n, last.ca, last.c, oxt)
                )[0]
            )
        ),
    )
    n_residues = len(peptide_builder.backbone_atoms(mol))
    phi_psi = [peptide_builder.BACKBONE_STATES["ppii"]] * n_residues
    for offset, (phi, psi) in enumerate(segment_angles):
        phi_psi[first + offset] = (
            peptide_builder.BACKBONE_STATES["ppii"][0] if np.isnan(phi) else phi,
            psi,
        )
    chain = Chem.Mol(mol, confId=mol.GetConformer().GetId())
    peptide_builder.set_backbone(chain, chain.GetConformer().GetId(), phi_psi)
    truncated = peptide_builder.truncate_side_chains(chain)
    residues = peptide_builder.backbone_atoms(truncated)
    moving = [
        index
        for residue in residues[first : first + len(segment_residues)]
        for index in (residue.n, residue.ca, residue.c, residue.o)
    ]
    target = [
        index
        for residue in segment_residues
        for index in (residue.n, residue.ca, residue.c, residue.o)
    ]
    xyz = truncated.GetConformer().GetPositions()
    rotation, translation = _kabsch(xyz[moving], segment_xyz[target])
    return (xyz @ rotation.T + translation)[model.heavy]


def _conformer_on_backbone(
    parent: Chem.Mol,
    model: backbone_search.BackboneModel,
    heavy_xyz: np.ndarray,
    min_distance: float = peptide_builder.CLASH_DISTANCE,
) -> Chem.Mol | None:
    """Return ``parent`` with the backbone of the refined ``heavy_xyz``, placed there.

    The refined phi and psi are set on ``parent``, whose side chains keep their
    rotamers, and the result is superposed on the refined backbone. Returns None when
    two rebuilt backbone and CB atoms come closer than ``min_distance`` (Å).
    """
    phi_psi = backbone_search.backbone_dihedrals(model, heavy_xyz)
    conformer = peptide_builder.with_backbone(parent, phi_psi, min_distance)
    if conformer is None:
        return None
    target = heavy_xyz[model.backbone_rows]
    rotation, translation = _kabsch(_backbone_xyz(conformer), target)
    _set_positions(
        conformer, conformer.GetConformer().GetPositions() @ rotation.T + translation
    )
    return conformer


def _fitting_conformers(
    ensemble: list[tuple[str, Chem.Mol]], site: Site
) -> list[tuple[str, Chem.Mol]]:
    """Drop conformers longer than the box diagonal.

    When none fits, the three most compact are kept.
    """
    diagonal = float(np.linalg.norm(site.size))
    spans = []
    for label, mol in ensemble:
        xyz = mol.GetConformer().GetPositions()
        spans.append(float(np.max(np.linalg.norm(xyz[:, None] - xyz[None, :], axis=2))))
    fitting = [item for item, span in zip(ensemble, spans) if span <= diagonal]
    if fitting:
        return fitting
    order = np.argsort(spans)[:3]
    return [ensemble[i] for i in order]


def _set_ligand(grid: Vina, pdbqt: str) -> None:
    """Set the ligand of ``grid``, releasing the previous ligand's tables first.

    Vina builds the new ligand's pair tables while it still holds the old ones. A
    one-atom ligand in between lowers the peak: three 7-residue peptides in a row
    peaked at 2.4 GB without it and 1.7 GB with it (measured with Vina 1.2.7).
    """
    estimate = ligand_memory_mb(pdbqt)
    if estimate > MAX_LIGAND_MEMORY_MB:
        n_atoms = round((estimate / LIGAND_MEMORY_MB_PER_ATOM_PAIR) ** 0.5)
        raise EngineError(
            f"the Vina ligand has {n_atoms} PDBQT atoms and would need about "
            f"{estimate / 1024:.1f} GB to set up, above the limit of "
            f"{MAX_LIGAND_MEMORY_MB / 1024:.1f} GB; use a shorter peptide (about 15 "
            "residues or fewer)"
        )
    _release_ligand(grid)
    _call_vina("set_ligand_from_string", grid.set_ligand_from_string, pdbqt)


def _release_ligand(grid: Vina) -> None:
    """Replace ``grid``'s ligand by one carbon atom at the box centre."""
    x, y, z = grid.info()["box_center"]
    placeholder = (
        "ROOT\n"
        "ATOM      1  C   UNL     1    "
        f"{x:8.3f}{y:8.3f}{z:8.3f}  0.00  0.00    +0.000 C \n"
        "ENDROOT\nTORSDOF 0\n"
    )
    _call_vina("set_ligand_from_string", grid.set_ligand_from_string, placeholder)


def _call_vina(action: str, function, *args, **kwargs):
    """Call a Vina method and raise its errors as :class:`EngineError`."""
    try:
        return function(*args, **kwargs)
    except (RuntimeError, ValueError, TypeError) as error:
        raise EngineError(f"Vina {action} failed: {str(error).strip()}") from error
