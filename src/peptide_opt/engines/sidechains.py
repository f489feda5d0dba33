"""Threading a sequence onto a docked peptide backbone, with PDBFixer and OpenMM.

A design keeps the docked peptide's backbone and gets new side chains where its residues
differ from the docked ones. The work runs in three stages, all inside the receptor:

1. Threading: every residue keeps N, CA, C and O, and the last one its OXT. A residue
   whose type is unchanged keeps its heavy side-chain atoms. A mutated one keeps CB
   when both the old and the new residue have one. Hydrogens are dropped.
2. Rebuilding: PDBFixer (``addMissingAtoms``) places the missing side-chain atoms from
   its residue templates, superposed on the atoms that are kept, and relaxes only those
   atoms with its soft-core force field. The receptor is left out of this stage because
   PDBFixer's clash annealing (2,000 Langevin steps) cost seconds per design next to it;
   the next stage places the side chains in the receptor. Hydrogens are then added to
   the peptide at the job's pH (OpenMM Modeller).
3. Repacking and minimization in the receptor, with amber14 (``amber14-all.xml``) in
   vacuum: Coulomb with OpenMM's reaction field (solvent dielectric 78.3) and
   Lennard-Jones, cut off at :data:`NONBONDED_CUTOFF` Å. The receptor is held fixed,
   and only its residues within :data:`SHELL_RADIUS` Å of the docked peptide take
   part. Because the receptor does not move, the system holds only the peptide's own
   terms and its interaction with the shell: receptor-receptor terms are constant
   and are left out, which keeps a design's system small. Each rebuilt side chain tries
   the staggered rotamers of its chi1 and chi2 angles under a capped soft-core
   repulsion and keeps the one of lowest energy. The peptide is minimized first under
   that soft repulsion, so side chains can leave a clash instead of staying trapped,
   then under the full force field, with its backbone heavy atoms restrained to the
   docked positions (:data:`BACKBONE_RESTRAINT`).

The receptor shell is built once per pose (:meth:`SideChainEngine.build_shell`) and
serves every design of that pose.
"""

from __future__ import annotations

import dataclasses
import io
import random
import threading
from importlib import metadata

import gemmi
import numpy as np

from peptide_opt.config import AMINO_ACIDS
from peptide_opt.errors import EngineError, InputError

ONE_TO_THREE = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS",
    "Q": "GLN", "E": "GLU", "G": "GLY", "H": "HIS", "I": "ILE",
    "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE", "P": "PRO",
    "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}  # fmt: skip
THREE_TO_ONE = {three: one for one, three in ONE_TO_THREE.items()}

BACKBONE_ATOMS = ("N", "CA", "C", "O")
#: Vacuum, because OpenMM's OBC2 implicit solvent for amber14 (a CustomGBForce) made
#: each energy evaluation about 20 times slower on the CPU platform. That was measured
#: with OpenMM 8.6 on a system of 1,300 atoms, on a shared 2-core machine.
#: ``amber14/tip3p.xml`` adds the ion parameters (Na+, Mg2+, Ca2+, Zn2+, ...) that
#: metal ions of the receptor near the site need. No water is modelled.
FORCE_FIELD_FILES = ("amber14-all.xml", "amber14/tip3p.xml")

#: Receptor residues with a heavy atom within this distance (Å) of a docked peptide
#: heavy atom form the shell. Side chains reach about 7 Å from CA (Arg, Lys), so a new
#: side chain's atoms stay within about 5 Å of the docked peptide's atoms, and the shell
#: covers them to a few Å short of the nonbonded cutoff.
SHELL_RADIUS = 12.0
#: Nonbonded cutoff (Å) of the minimization's force field, and the dielectric constant
#: of the reaction field beyond it (OpenMM's default).
NONBONDED_CUTOFF = 10.0
REACTION_FIELD_DIELECTRIC = 78.3
#: 1/(4 pi eps0) in kJ mol^-1 nm e^-2, as OpenMM uses it.
COULOMB_CONSTANT = 138.935456
#: Harmonic restraint on the peptide's backbone heavy atoms, kJ/mol/nm²
#: (4184 kJ/mol/nm² = 10 kcal/mol/Å²).
BACKBONE_RESTRAINT = 4184.0
#: Capped repulsion of the first minimization stage: C (kJ/mol) at full overlap, falling
#: to zero at the contact distance r0 (Å) between heavy atoms.
SOFT_REPULSION = 100.0
SOFT_RADIUS = 3.2
SOFT_MAX_ITERATIONS = 200
#: Convergence of the minimizer: root-mean-square force, kJ/mol/nm.
MINIMIZE_TOLERANCE = 10.0
MINIMIZE_MAX_ITERATIONS = 1000

#: Side-chain dihedrals chi1 and chi2 as atom names, per residue.
CHI_ATOMS: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "ARG": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD")),
    "ASN": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "OD1")),
    "ASP": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "OD1")),
    "CYS": (("N", "CA", "CB", "SG"),),
    "GLN": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD")),
    "GLU": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD")),
    "HIS": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "ND1")),
    "ILE": (("N", "CA", "CB", "CG1"), ("CA", "CB", "CG1", "CD1")),
    "LEU": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "LYS": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD")),
    "MET": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "SD")),
    "PHE": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "SER": (("N", "CA", "CB", "OG"),),
    "THR": (("N", "CA", "CB", "OG1"),),
    "TRP": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "TYR": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "VAL": (("N", "CA", "CB", "CG1"),),
}
#: Staggered values (degrees) tried for chi1 of every residue.
CHI1_VALUES = (-60.0, 180.0, 60.0)
#: Values (degrees) tried for chi2: staggered for sp3 carbons, the common planar-group
#: orientations for aromatic rings, amides and carboxylates.
CHI2_VALUES: dict[str, tuple[float, ...]] = {
    "ARG": (-60.0, 180.0, 60.0),
    "GLN": (-60.0, 180.0, 60.0),
    "GLU": (-60.0, 180.0, 60.0),
    "ILE": (-60.0, 180.0, 60.0),
    "LEU": (-60.0, 180.0, 60.0),
    "LYS": (-60.0, 180.0, 60.0),
    "MET": (-60.0, 180.0, 60.0),
    "ASN": (-60.0, 0.0, 60.0),
    "ASP": (0.0, 60.0),
    "HIS": (-90.0, 90.0, 180.0),
    "PHE": (90.0, 0.0),
    "TYR": (90.0, 0.0),
    "TRP": (-90.0, 90.0, 0.0),
}

_KJ_PER_KCAL = 4.184

# ForceField objects are expensive to load and safe to share for reading.
_force_fields: dict[tuple[str, ...], object] = {}
_force_fields_lock = threading.Lock()
_random_lock = threading.Lock()


@dataclasses.dataclass
class ReceptorShell:
    """The receptor residues near one docked peptide, with their force-field parameters.

    ``positions_nm`` (n, 3) in nm; ``charges`` (n,) in e, ``sigmas`` (n,) in nm and
    ``epsilons`` (n,) in kJ/mol are amber14's nonbonded parameters of every shell atom
    (hydrogens included); ``heavy_mask`` (n,) marks the heavy atoms.
    """

    positions_nm: np.ndarray
    charges: np.ndarray
    sigmas: np.ndarray
    epsilons: np.ndarray
    heavy_mask: np.ndarray
    n_residues: int


@dataclasses.dataclass
class ThreadedPeptide:
    """A sequence threaded onto a docked backbone and minimized in the receptor.

    ``pdb_text`` is the peptide as PDB text (chain A, residues 1..n, hydrogens).
    ``mutated_positions`` are the 1-based positions whose residue type changed.
    ``backbone_rmsd`` (Å) compares N, CA, C and O before and after minimization.
    ``interaction_energy`` (kcal/mol) is the minimized peptide's nonbonded energy with
    the receptor shell and ``peptide_energy`` (kcal/mol) its own energy (bonded and
    nonbonded, restraint excluded), both in the force field above.
    """

    sequence: str
    pdb_text: str
    mutated_positions: list[int]
    backbone_rmsd: float
    interaction_energy: float
    peptide_energy: float


class SideChainEngine:
    """Threads sequences onto docked backbones with PDBFixer and OpenMM (CPU)."""

    name = "pdbfixer-openmm"

    def __init__(
        self,
        shell_radius: float = SHELL_RADIUS,
        backbone_restraint: float = BACKBONE_RESTRAINT,
        repack: bool = True,
    ) -> None:
        self.shell_radius = shell_radius
        self.backbone_restraint = backbone_restraint
        self.repack = repack

    @property
    def version(self) -> str:
        return (
            f"pdbfixer {metadata.version('pdbfixer')}, "
            f"openmm {metadata.version('openmm')}"
        )

    def build_shell(self, receptor_pdb: str, peptide_pdb: str) -> ReceptorShell:
        """Select the receptor residues within ``shell_radius`` Å of the peptide."""
        from openmm import app

        peptide_xyz = _heavy_atom_xyz(_read_pdb(peptide_pdb, "docked peptide"))
        receptor = _read_openmm_pdb(receptor_pdb, "prepared receptor")
        positions = _positions_nm(receptor.positions)

        keep = []
        for residue in receptor.topology.residues():
            indices = [a.index for a in residue.atoms() if _is_heavy(a)]
            if not indices:
                continue
            xyz = positions[indices] * 10.0
            if _min_distance(xyz, peptide_xyz) <= self.shell_radius:
                keep.append(residue)
        if not keep:
            raise EngineError(
                f"no receptor residue lies within {self.shell_radius:g} Å of the "
                "docked peptide"
            )
        kept = set(keep)
        modeller = app.Modeller(receptor.topology, receptor.positions)
        modeller.delete([r for r in receptor.topology.residues() if r not in kept])
        charges, sigmas, epsilons = _nonbonded_parameters(
            _create_system(modeller.topology, "the receptor near the peptide")
        )
        return ReceptorShell(
            positions_nm=_positions_nm(modeller.positions),
            charges=charges,
            sigmas=sigmas,
            epsilons=epsilons,
            heavy_mask=np.array([_is_heavy(a) for a in modeller.topology.atoms()]),
            n_residues=len(keep),
        )

    def thread(
        self,
        shell: ReceptorShell,
        peptide_pdb: str,
        sequence: str,
        ph: float = 7.4,
        seed: int = 37,
        cores: int = 1,
    ) -> ThreadedPeptide:
        """Thread ``sequence`` onto the backbone of ``peptide_pdb`` and relax it.

        Parameters
        ----------
        shell
            The receptor shell of this pose (:meth:`build_shell`).
        peptide_pdb
            The docked peptide: PDB text of one chain, one residue per position of
            ``sequence``.
        sequence
            One-letter sequence of the design, as long as the docked peptide.
        ph
            pH at which the peptide's hydrogens are added.
        seed
            Seed of PDBFixer's integrator, which runs only when rebuilt atoms clash.
        cores
            CPU threads of the OpenMM CPU platform.
        """
        _check_sequence(sequence)
        docked = _read_pdb(peptide_pdb, "docked peptide")
        residues = _peptide_residues(docked, len(sequence))
        threaded, mutated = _thread_heavy_atoms(residues, sequence)
        topology, positions = self._rebuild(threaded, ph, seed, cores)
        return self._relax(shell, topology, positions, sequence, mutated, cores)

    # -- stage 2 ---------------------------------------------------------------------

    def _rebuild(
        self, threaded: gemmi.Structure, ph: float, seed: int, cores: int
    ) -> tuple[object, np.ndarray]:
        """Rebuild the missing side-chain atoms of the peptide, then add hydrogens."""
        from openmm import app
        from pdbfixer import PDBFixer

        text = threaded.make_pdb_string(gemmi.PdbWriteOptions(minimal=True))
        try:
            fixer = PDBFixer(pdbfile=io.StringIO(text), platform=cpu_platform(cores))
            fixer.missingResidues = {}
            fixer.findMissingAtoms()
            fixer.addMissingAtoms(seed=seed)
            modeller = app.Modeller(fixer.topology, fixer.positions)
            # Modeller starts new hydrogens at positions drawn from Python's global
            # random module, so it is seeded here and restored afterwards.
            with _random_lock:
                saved = random.getstate()
                random.seed(seed)
                try:
                    modeller.addHydrogens(
                        _force_field(), pH=ph, platform=cpu_platform(cores)
                    )
                finally:
                    random.setstate(saved)
        except (
            Exception
        ) as error:  # PDBFixer and OpenMM raise plain Exception subclasses
            raise EngineError(
                f"side-chain rebuilding with PDBFixer failed: {error}"
            ) from error
        return modeller.topology, _positions_nm(modeller.positions)

    # -- stage 3 ---------------------------------------------------------------------

    def _relax(
        self,
        shell: ReceptorShell,
        peptide_topology: object,
        peptide_xyz: np.ndarray,
        sequence: str,
        mutated: list[int],
        cores: int,
    ) -> ThreadedPeptide:
        """Repack the rebuilt side chains and minimize the peptide in the shell."""
        n_peptide = peptide_xyz.shape[0]
        start = np.vstack([peptide_xyz, shell.positions_nm])
        backbone = [
            atom.index
            for atom in peptide_topology.atoms()
            if atom.name in BACKBONE_ATOMS
        ]
        peptide_system = _create_system(peptide_topology, f"the design {sequence}")
        base, nonbonded = _split_nonbonded(peptide_system, shell)
        base.addForce(_position_restraint(backbone, start, self.backbone_restraint))
        heavy = np.concatenate(
            [[_is_heavy(atom) for atom in peptide_topology.atoms()], shell.heavy_mask]
        )
        platform = cpu_platform(cores)

        soft = _Minimizer(_soft_system(base, nonbonded, heavy, n_peptide), platform)
        xyz = start
        if self.repack and mutated:
            xyz = _repack(soft, peptide_topology, xyz, mutated)
        xyz = soft.minimize(xyz, SOFT_MAX_ITERATIONS)
        full = _Minimizer(_full_system(base, nonbonded, n_peptide), platform)
        xyz = full.minimize(xyz, MINIMIZE_MAX_ITERATIONS)

        rmsd = np.sqrt(np.mean(np.sum((xyz[backbone] - start[backbone]) ** 2, axis=1)))
        return ThreadedPeptide(
            sequence=sequence,
            pdb_text=_peptide_pdb(peptide_topology, xyz[:n_peptide]),
            mutated_positions=[position + 1 for position in mutated],
            backbone_rmsd=float(rmsd) * 10.0,
            interaction_energy=full.energy(xyz, {INTERACTION_GROUP}) / _KJ_PER_KCAL,
            peptide_energy=full.energy(xyz, {PEPTIDE_GROUP}) / _KJ_PER_KCAL,
        )


class _Minimizer:
    """An OpenMM context for energies (kJ/mol) and local minimization (nm)."""

    def __init__(self, system, platform) -> None:
        import openmm

        self.context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform)

    def energy(self, xyz: np.ndarray, groups: set[int] | None = None) -> float:
        from openmm import unit

        self.context.setPositions(xyz)
        if groups is None:
            state = self.context.getState(getEnergy=True)
        else:
            state = self.context.getState(getEnergy=True, groups=groups)
        return state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)

    def minimize(self, xyz: np.ndarray, max_iterations: int) -> np.ndarray:
        import openmm
        from openmm import unit

        self.context.setPositions(xyz)
        openmm.LocalEnergyMinimizer.minimize(
            self.context, MINIMIZE_TOLERANCE, max_iterations
        )
        state = self.context.getState(getPositions=True)
        return np.asarray(
            state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        )


# -- systems --------------------------------------------------------------------------

#: Force groups: the peptide's own terms, its interaction with the shell, the restraint.
PEPTIDE_GROUP = 0
INTERACTION_GROUP = 1
RESTRAINT_GROUP = 2


@dataclasses.dataclass
class _Nonbonded:
    """Nonbonded parameters of peptide and shell atoms (e, nm, kJ/mol) and the
    peptide's excluded pairs and scaled 1-4 pairs."""

    charges: np.ndarray
    sigmas: np.ndarray
    epsilons: np.ndarray
    exclusions: list[tuple[int, int]]
    scaled_pairs: list[tuple[int, int, float, float, float]]


def _create_system(topology, label: str):
    from openmm import app

    # Without its external bonds, a cysteine that lacks HG matches both the
    # disulfide (CYX) and the thiolate (CYM) template. Bridged cysteines lack HG and
    # thiolates are rare at the pH of a job, so CYX is taken.
    bridged = {
        residue: "CYX"
        for residue in topology.residues()
        if residue.name == "CYS" and all(atom.name != "HG" for atom in residue.atoms())
    }
    try:
        return _force_field().createSystem(
            topology,
            nonbondedMethod=app.NoCutoff,
            constraints=None,
            # Shell residues at fragment ends lack their neighbours; match them to the
            # chain-internal templates.
            ignoreExternalBonds=True,
            residueTemplates=bridged,
        )
    except ValueError as error:
        raise EngineError(
            f"no amber14 template matches a residue of {label}: {error}"
        ) from error


def _nonbonded_parameters(system) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import openmm
    from openmm import unit

    force = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    values = []
    for index in range(force.getNumParticles()):
        charge, sigma, epsilon = force.getParticleParameters(index)
        values.append(
            (
                charge.value_in_unit(unit.elementary_charge),
                sigma.value_in_unit(unit.nanometer),
                epsilon.value_in_unit(unit.kilojoule_per_mole),
            )
        )
    array = np.asarray(values, dtype=float).reshape(-1, 3)
    return array[:, 0], array[:, 1], array[:, 2]


def _split_nonbonded(peptide_system, shell: ReceptorShell):
    """Return the peptide's bonded terms plus zero-mass shell particles, and the
    nonbonded parameters of both."""
    import openmm
    from openmm import unit

    charges, sigmas, epsilons = _nonbonded_parameters(peptide_system)
    exclusions, scaled = [], []
    base = openmm.System()
    for index in range(peptide_system.getNumParticles()):
        base.addParticle(peptide_system.getParticleMass(index))
    for _ in range(len(shell.charges)):
        base.addParticle(0.0)
    for force in peptide_system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            for index in range(force.getNumExceptions()):
                i, j, product, sigma, epsilon = force.getExceptionParameters(index)
                exclusions.append((i, j))
                product = product.value_in_unit(unit.elementary_charge**2)
                epsilon = epsilon.value_in_unit(unit.kilojoule_per_mole)
                if product != 0.0 or epsilon != 0.0:
                    scaled.append(
                        (i, j, product, sigma.value_in_unit(unit.nanometer), epsilon)
                    )
        elif not isinstance(force, openmm.CMMotionRemover):
            copied = openmm.XmlSerializer.clone(force)
            copied.setForceGroup(PEPTIDE_GROUP)
            base.addForce(copied)
    nonbonded = _Nonbonded(
        charges=np.concatenate([charges, shell.charges]),
        sigmas=np.concatenate([sigmas, shell.sigmas]),
        epsilons=np.concatenate([epsilons, shell.epsilons]),
        exclusions=exclusions,
        scaled_pairs=scaled,
    )
    return base, nonbonded


def _full_system(base, nonbonded: _Nonbonded, n_peptide: int):
    """Add amber14's Coulomb (reaction field) and Lennard-Jones terms to ``base``.

    The peptide's pairs form one force and the peptide-shell pairs another, so each
    energy can be read from its force group.
    """
    import openmm

    system = openmm.XmlSerializer.clone(base)
    cutoff = NONBONDED_CUTOFF / 10.0
    dielectric = REACTION_FIELD_DIELECTRIC
    k_rf = (dielectric - 1.0) / ((2.0 * dielectric + 1.0) * cutoff**3)
    c_rf = 1.0 / cutoff + k_rf * cutoff**2
    expression = (
        f"{COULOMB_CONSTANT}*q1*q2*(1/r+krf*r^2-crf)"
        "+4*epsilon*((sigma/r)^12-(sigma/r)^6);"
        "sigma=0.5*(sigma1+sigma2); epsilon=sqrt(epsilon1*epsilon2)"
    )
    n_atoms = system.getNumParticles()
    peptide = range(n_peptide)
    for group, partners in (
        (PEPTIDE_GROUP, range(n_peptide)),
        (INTERACTION_GROUP, range(n_peptide, n_atoms)),
    ):
        force = openmm.CustomNonbondedForce(expression)
        force.addGlobalParameter("krf", k_rf)
        force.addGlobalParameter("crf", c_rf)
        for name in ("q", "sigma", "epsilon"):
            force.addPerParticleParameter(name)
        for index in range(n_atoms):
            force.addParticle(
                [
                    float(nonbonded.charges[index]),
                    float(nonbonded.sigmas[index]),
                    float(nonbonded.epsilons[index]),
                ]
            )
        for i, j in nonbonded.exclusions:
            force.addExclusion(i, j)
        force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
        force.setCutoffDistance(cutoff)
        force.addInteractionGroup(peptide, partners)
        force.setForceGroup(group)
        system.addForce(force)
    # The scaled 1-4 pairs, without reaction field, as OpenMM's NonbondedForce does.
    pairs = openmm.CustomBondForce(
        f"{COULOMB_CONSTANT}*qq/r+4*epsilon*((sigma/r)^12-(sigma/r)^6)"
    )
    for name in ("qq", "sigma", "epsilon"):
        pairs.addPerBondParameter(name)
    for i, j, product, sigma, epsilon in nonbonded.scaled_pairs:
        pairs.addBond(i, j, [product, sigma, epsilon])
    pairs.setForceGroup(PEPTIDE_GROUP)
    system.addForce(pairs)
    return system


def _soft_system(base, nonbonded: _Nonbonded, heavy: np.ndarray, n_peptide: int):
    """Add a capped repulsion between the peptide's heavy atoms and all heavy atoms.

    The pairs the force field excludes or scales (1-2, 1-3 and 1-4) are left out.
    """
    import openmm

    system = openmm.XmlSerializer.clone(base)
    repulsion = openmm.CustomNonbondedForce("C*(1-(r/r0)^2)^2*step(r0-r)")
    repulsion.addGlobalParameter("C", SOFT_REPULSION)
    repulsion.addGlobalParameter("r0", SOFT_RADIUS / 10.0)
    repulsion.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffNonPeriodic)
    repulsion.setCutoffDistance(SOFT_RADIUS / 10.0)
    for _ in range(system.getNumParticles()):
        repulsion.addParticle([])
    for i, j in nonbonded.exclusions:
        repulsion.addExclusion(i, j)
    heavy_indices = np.flatnonzero(heavy).tolist()
    repulsion.addInteractionGroup(
        [index for index in heavy_indices if index < n_peptide], heavy_indices
    )
    system.addForce(repulsion)
    return system


# -- threading ------------------------------------------------------------------------


def _check_sequence(sequence: str) -> None:
    for position, letter in enumerate(sequence, start=1):
        if letter not in AMINO_ACIDS:
            raise InputError(
                f"design sequence {sequence}: {letter!r} at position {position} is not "
                f"one of the 20 standard amino acids ({AMINO_ACIDS})"
            )


def _peptide_residues(structure: gemmi.Structure, length: int) -> list[gemmi.Residue]:
    residues = [residue for chain in structure[0] for residue in chain]
    if len(residues) != length:
        raise InputError(
            f"the docked peptide has {len(residues)} residues but the design sequence "
            f"has {length}"
        )
    for number, residue in enumerate(residues, start=1):
        absent = [name for name in BACKBONE_ATOMS if not residue.find_atom(name, "*")]
        if absent:
            raise EngineError(
                f"docked peptide residue {number} {residue.name} lacks backbone atoms "
                f"{','.join(absent)}"
            )
    return residues


def _thread_heavy_atoms(
    residues: list[gemmi.Residue], sequence: str
) -> tuple[gemmi.Structure, list[int]]:
    """Return chain A with the design's residue names and the atoms kept from the pose,
    and the 0-based positions whose residue type changed."""
    chain = gemmi.Chain("A")
    mutated = []
    for index, (residue, letter) in enumerate(zip(residues, sequence)):
        new_name = ONE_TO_THREE[letter]
        same = residue.name == new_name
        if not same:
            mutated.append(index)
        keep = set(BACKBONE_ATOMS)
        if index == len(residues) - 1:
            keep.add("OXT")
        if not same and "GLY" not in (residue.name, new_name):
            keep.add("CB")
        new_residue = gemmi.Residue()
        new_residue.name = new_name
        new_residue.seqid = gemmi.SeqId(index + 1, " ")
        new_residue.entity_type = gemmi.EntityType.Polymer
        new_residue.het_flag = "A"
        for atom in residue:
            if atom.element.name in ("H", "D"):
                continue
            if same or atom.name in keep:
                new_residue.add_atom(atom)
        chain.add_residue(new_residue)
    structure = gemmi.Structure()
    model = gemmi.Model("1")
    model.add_chain(chain)
    structure.add_model(model)
    return structure, mutated


# -- repacking ------------------------------------------------------------------------


def _repack(
    minimizer: _Minimizer, topology, xyz: np.ndarray, mutated: list[int]
) -> np.ndarray:
    """Set each mutated residue's chi1/chi2 to the grid point of lowest energy.

    Residues are visited once, in sequence order; each choice is made with the earlier
    choices in place.
    """
    xyz = xyz.copy()
    residues = list(topology.residues())
    neighbours = _bonded_neighbours(topology)
    for index in mutated:
        residue = residues[index]
        dihedrals = CHI_ATOMS.get(residue.name)
        if not dihedrals:
            continue
        names = {atom.name: atom.index for atom in residue.atoms()}
        if any(name not in names for quad in dihedrals for name in quad):
            continue
        grids = [CHI1_VALUES]
        if len(dihedrals) > 1:
            grids.append(CHI2_VALUES.get(residue.name, CHI1_VALUES))
        best_xyz, best_energy = xyz, minimizer.energy(xyz)
        for chi1 in grids[0]:
            for chi2 in grids[1] if len(grids) > 1 else (None,):
                trial = xyz.copy()
                for quad, angle in zip(dihedrals, (chi1, chi2)):
                    if angle is None:
                        continue
                    _set_dihedral(trial, [names[n] for n in quad], angle, neighbours)
                energy = minimizer.energy(trial)
                if energy < best_energy:
                    best_xyz, best_energy = trial, energy
        xyz = best_xyz
    return xyz


def _bonded_neighbours(topology) -> dict[int, set[int]]:
    neighbours: dict[int, set[int]] = {}
    for atom1, atom2 in topology.bonds():
        neighbours.setdefault(atom1.index, set()).add(atom2.index)
        neighbours.setdefault(atom2.index, set()).add(atom1.index)
    return neighbours


def _set_dihedral(
    xyz: np.ndarray, quad: list[int], angle_deg: float, neighbours: dict[int, set[int]]
) -> None:
    """Rotate the atoms beyond the central bond so the dihedral is ``angle_deg``."""
    a, b, c, d = quad
    moving = _atoms_beyond(b, c, neighbours)
    current = _dihedral_deg(xyz[a], xyz[b], xyz[c], xyz[d])
    theta = np.radians(angle_deg - current)
    axis = xyz[c] - xyz[b]
    axis /= np.linalg.norm(axis)
    indices = np.fromiter(moving, dtype=int)
    vectors = xyz[indices] - xyz[c]
    # Rodrigues' rotation about the b->c axis through c.
    cos, sin = np.cos(theta), np.sin(theta)
    rotated = (
        vectors * cos
        + np.cross(axis, vectors) * sin
        + np.outer(vectors @ axis, axis) * (1.0 - cos)
    )
    xyz[indices] = rotated + xyz[c]


def _atoms_beyond(b: int, c: int, neighbours: dict[int, set[int]]) -> set[int]:
    """Return the atoms reached from ``c`` without crossing the bond b-c."""
    seen = {c}
    stack = [c]
    while stack:
        atom = stack.pop()
        for other in neighbours.get(atom, ()):
            if other != b and other not in seen:
                seen.add(other)
                stack.append(other)
    seen.discard(c)
    return seen


def _dihedral_deg(p0, p1, p2, p3) -> float:
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1)
    v = b0 - (b0 @ b1) * b1
    w = b2 - (b2 @ b1) * b1
    return float(np.degrees(np.arctan2(np.cross(b1, v) @ w, v @ w)))


# -- OpenMM helpers -------------------------------------------------------------------


def _force_field():
    from openmm import app

    with _force_fields_lock:
        if FORCE_FIELD_FILES not in _force_fields:
            _force_fields[FORCE_FIELD_FILES] = app.ForceField(*FORCE_FIELD_FILES)
        return _force_fields[FORCE_FIELD_FILES]


def cpu_platform(cores: int = 1):
    """Return OpenMM's CPU platform set to ``cores`` threads.

    With more than one thread the platform sums forces in a varying order, so a
    minimization that must repeat exactly runs on one.
    """
    import openmm

    platform = openmm.Platform.getPlatformByName("CPU")
    platform.setPropertyDefaultValue("Threads", str(max(1, cores)))
    return platform


def _position_restraint(indices: list[int], xyz: np.ndarray, k: float):
    import openmm

    force = openmm.CustomExternalForce("0.5*k*((x-x0)^2+(y-y0)^2+(z-z0)^2)")
    force.addGlobalParameter("k", k)
    force.setForceGroup(RESTRAINT_GROUP)
    for name in ("x0", "y0", "z0"):
        force.addPerParticleParameter(name)
    for index in indices:
        force.addParticle(index, [float(value) for value in xyz[index]])
    return force


def _positions_nm(positions) -> np.ndarray:
    from openmm import unit

    return np.asarray(positions.value_in_unit(unit.nanometer), dtype=float)


def _read_openmm_pdb(text: str, label: str):
    from openmm import app

    try:
        return app.PDBFile(io.StringIO(text))
    except (ValueError, KeyError, IndexError) as error:
        raise EngineError(f"{label}: OpenMM cannot read it as PDB ({error})") from error


def _is_heavy(atom) -> bool:
    return atom.element is not None and atom.element.symbol not in ("H", "D")


def _peptide_pdb(topology, xyz_nm: np.ndarray) -> str:
    """Write the peptide (chain A, residues 1..n) with hydrogens as PDB text."""
    from openmm import app, unit

    output = io.StringIO()
    app.PDBFile.writeFile(topology, xyz_nm * unit.nanometer, output, keepIds=True)
    return "".join(
        line + "\n"
        for line in output.getvalue().splitlines()
        if line.startswith(("ATOM", "HETATM", "TER", "END"))
    )


# -- geometry -------------------------------------------------------------------------


def _read_pdb(text: str, label: str) -> gemmi.Structure:
    try:
        structure = gemmi.read_pdb_string(text)
    except (RuntimeError, ValueError) as error:
        raise EngineError(f"{label}: cannot be read as PDB ({error})") from error
    structure.remove_empty_chains()
    if len(structure) == 0:
        raise EngineError(f"{label}: contains no atoms")
    return structure


def _heavy_atom_xyz(structure: gemmi.Structure) -> np.ndarray:
    return np.asarray(
        [
            atom.pos.tolist()
            for chain in structure[0]
            for residue in chain
            for atom in residue
            if atom.element.name not in ("H", "D")
        ],
        dtype=float,
    )


def _min_distance(xyz: np.ndarray, other: np.ndarray) -> float:
    differences = xyz[:, None, :] - other[None, :, :]
    return float(np.sqrt(np.min(np.sum(differences**2, axis=-1))))
