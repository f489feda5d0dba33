"""Step ``prepare``: validate the peptide and the receptor, and clean the receptor.

The receptor keeps the chosen protein chains and the metal ions near the site; water and
other ligands are removed, after ``site_chain`` has marked the site. What can be repaired
is repaired and reported as a warning: the first model and the first altloc are kept,
modified residues become their parent (MSE to MET and the rest of PDBFixer's table),
missing side-chain atoms are rebuilt and hydrogens are added at the job's pH. Missing
backbone atoms and chain breaks are reported, never dropped silently.
"""

from __future__ import annotations

import io
import random
import re
from pathlib import Path

import gemmi
import numpy as np

from peptide_opt.config import AMINO_ACIDS, JobConfig
from peptide_opt.errors import EngineError, InputError
from peptide_opt.pipeline.site import ReceptorAtoms, check_box
from peptide_opt.pipeline.types import Receptor, Site

MIN_PEPTIDE_LENGTH = 2
MAX_PEPTIDE_LENGTH = 50
MAX_RECEPTOR_BYTES = 50 * 1024 * 1024
RECEPTOR_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")

#: Metal ions kept in the receptor when they sit near the site.
METAL_IONS = frozenset(
    "ZN MG MN CA FE FE2 CO NI CU CU1 CD HG K NA".split()
)
#: A metal within this distance (Å) of a protein heavy atom is coordinated by the protein.
METAL_CONTACT_DISTANCE = 3.2
#: A metal within this distance (Å) of the site marker or the site box counts as near it.
METAL_SITE_DISTANCE = 8.0
#: A peptide bond C(i)-N(i+1) longer than this (Å) is a chain break.
CHAIN_BREAK_DISTANCE = 2.0
BACKBONE_ATOMS = ("N", "CA", "C", "O")
#: Seed of the OpenMM integrator PDBFixer uses to place rebuilt atoms.
REPAIR_SEED = 1


# ---------------------------------------------------------------------------
# Peptide


def normalize_peptide(text: str, source: str = "peptide") -> str:
    """Return the one-letter sequence of a raw sequence or a one-record FASTA text.

    Lowercase letters and whitespace are normalized. Raises :class:`InputError` for an
    empty text, several FASTA records, letters outside the 20 standard amino acids (with
    their position) and lengths outside 2–50 residues.
    """
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n")]
    lines = [line for line in lines if line and not line.startswith(";")]
    headers = [line for line in lines if line.startswith(">")]
    if len(headers) > 1:
        raise InputError(
            f"{source}: FASTA holds {len(headers)} records; exactly one peptide is "
            "expected"
        )
    sequence = "".join(line for line in lines if not line.startswith(">"))
    sequence = re.sub(r"\s+", "", sequence).upper()
    if sequence.endswith("*"):
        sequence = sequence[:-1]
    if not sequence:
        raise InputError(f"{source}: no sequence found")
    for position, letter in enumerate(sequence, start=1):
        if letter not in AMINO_ACIDS:
            raise InputError(
                f"{source}: {letter!r} at position {position} is not one of the 20 "
                f"standard amino acids ({AMINO_ACIDS})"
            )
    if not MIN_PEPTIDE_LENGTH <= len(sequence) <= MAX_PEPTIDE_LENGTH:
        raise InputError(
            f"{source}: peptide length {len(sequence)} is outside the limits of "
            f"{MIN_PEPTIDE_LENGTH} to {MAX_PEPTIDE_LENGTH} residues"
        )
    return sequence


def read_peptide_file(path: Path) -> str:
    """Read and normalize the peptide of a FASTA file."""
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        raise InputError(f"peptide file {path.name}: cannot be read ({error})") from None
    return normalize_peptide(text, source=path.name)


# ---------------------------------------------------------------------------
# Receptor validation


def check_regular_file(path: Path, label: str) -> None:
    """Raise InputError, prefixed by ``label``, unless ``path`` is a regular file."""
    if path.is_file():
        return
    if path.is_dir():
        reason = "is a folder, not a file"
    elif path.exists():
        reason = "is not a regular file (a device, pipe or socket)"
    else:
        reason = "file not found"
    raise InputError(f"{label}: {reason}")


def validate_receptor_file(path: Path) -> gemmi.Structure:
    """Read a receptor file and check that it is a usable protein structure.

    Raises :class:`InputError` for a missing, empty or oversized file, a file that is not
    a PDB or mmCIF structure, no protein atoms, and a CA-only model.
    """
    name = path.name
    check_regular_file(path, f"receptor {name}")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"receptor {name}: the file is empty")
    if size > MAX_RECEPTOR_BYTES:
        raise InputError(
            f"receptor {name}: {size / 1024**2:.1f} MiB exceeds the limit of "
            f"{MAX_RECEPTOR_BYTES // 1024**2} MiB"
        )
    structure = _read_structure(path)
    _check_protein(structure, name)
    return structure


def _read_structure(path: Path) -> gemmi.Structure:
    name = path.name
    head = path.read_bytes()[:4096]
    if b"\x00" in head:
        raise InputError(f"receptor {name}: not a PDB or mmCIF file (binary content)")
    text = head.decode("utf-8", errors="replace")
    looks_cif = text.lstrip().startswith("data_") or "_atom_site." in text
    looks_pdb = re.search(r"^(ATOM  |HETATM|HEADER|CRYST1|MODEL )", text, re.M)
    if not (looks_cif or looks_pdb):
        raise InputError(
            f"receptor {name}: not a PDB or mmCIF file (no ATOM/HETATM records or "
            "data_ block found)"
        )
    try:
        if looks_cif:
            structure = gemmi.make_structure_from_block(
                gemmi.cif.read(str(path)).sole_block()
            )
        else:
            structure = gemmi.read_pdb(str(path))
    except (RuntimeError, ValueError) as error:
        raise InputError(f"receptor {name}: cannot be parsed ({error})") from None
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise InputError(f"receptor {name}: the file contains no atoms")
    return structure


def _check_protein(structure: gemmi.Structure, name: str) -> None:
    residues = [
        residue
        for chain in structure[0]
        for residue in chain
        if _is_amino_acid(residue.name)
    ]
    if not residues:
        raise InputError(f"receptor {name}: no protein residues found")
    with_backbone = sum(1 for residue in residues if len(residue) > 1)
    if with_backbone < 0.5 * len(residues):
        raise InputError(
            f"receptor {name}: {len(residues) - with_backbone} of {len(residues)} "
            "protein residues hold a single atom (a CA-only model); full backbone "
            "atoms are required"
        )


def _is_amino_acid(residue_name: str) -> bool:
    info = gemmi.find_tabulated_residue(residue_name)
    return info is not None and info.is_amino_acid()


# ---------------------------------------------------------------------------
# Receptor preparation


def prepare_receptor(path: Path, config: JobConfig) -> Receptor:
    """Clean and protonate the receptor of ``path`` for docking.

    Parameters
    ----------
    path
        PDB or mmCIF file.
    config
        Uses ``receptor_chains``, ``site_chain``, ``site_center``/``site_size`` and
        ``ph``.

    Returns
    -------
    Receptor
        PDB text with hydrogens (input chain IDs and residue numbers kept), the chain
        IDs in input order, the site marker's heavy-atom coordinates (Å) and warnings.
    """
    structure = validate_receptor_file(path)
    warnings: list[str] = []
    _keep_first_model(structure, warnings)
    _keep_first_altloc(structure, warnings)
    _report_insertion_codes(structure, warnings)
    structure.setup_entities()

    model = structure[0]
    protein_chains = _protein_chain_ids(model)
    site_marker = _site_marker(model, config.site_chain, path.name)
    chain_ids = _choose_chains(protein_chains, config, path.name)
    _mark_mse_as_polymer(model)

    site_box = _site_box(site_marker, config)
    kept_metals = _select_metals(model, chain_ids, site_box, warnings)
    if config.site_chain is not None:
        warnings.append(
            f"site chain {config.site_chain} marked the site and was removed from the "
            "receptor"
        )
        _remove_chain(model, config.site_chain)
    removed = _remove_unwanted(model, chain_ids, kept_metals)
    if removed:
        summary = ", ".join(f"{count} {name}" for name, count in sorted(removed.items()))
        warnings.append(f"removed from the receptor: {summary}")
    _report_backbone_gaps(model, warnings)

    pdb_text = _repair_with_pdbfixer(structure, config.ph, warnings)
    _report_overlaps(pdb_text, warnings)
    return Receptor(
        pdb_text=pdb_text,
        chain_ids=chain_ids,
        site_marker_xyz=site_marker,
        ph=config.ph,
        warnings=warnings,
    )


def check_receptor_input(path: Path, config: JobConfig) -> None:
    """Check a receptor file, the chains that ``config`` names and its site box.

    Runs the checks of :func:`prepare_receptor` that come before any repair, and the
    site step's check of a given ``site_center``/``site_size`` box on the chosen chains'
    heavy atoms as read, so that such a submission fails before it is queued. Raises
    :class:`InputError`.
    """
    structure = validate_receptor_file(path)
    model = structure[0]
    _site_marker(model, config.site_chain, path.name)
    chain_ids = _choose_chains(_protein_chain_ids(model), config, path.name)
    if config.site_center is not None and config.site_size is not None:
        xyz = [
            atom.pos.tolist()
            for chain in model
            if chain.name in chain_ids
            for residue in chain
            for atom in residue
            if not atom.is_hydrogen()
        ]
        atoms = ReceptorAtoms(np.array(xyz, dtype=float).reshape(-1, 3), [], [])
        check_box(Site(config.site_center, config.site_size, "site_center"), atoms)


def _keep_first_model(structure: gemmi.Structure, warnings: list[str]) -> None:
    if len(structure) > 1:
        warnings.append(f"receptor has {len(structure)} models; the first one is used")
        while len(structure) > 1:
            del structure[1]


def _keep_first_altloc(structure: gemmi.Structure, warnings: list[str]) -> None:
    altlocs = _count_altloc_atoms(structure)
    if altlocs:
        structure.remove_alternative_conformations()
        warnings.append(
            f"receptor has {altlocs} atoms with alternate locations; the first "
            "location of each is kept"
        )


def _count_altloc_atoms(structure: gemmi.Structure) -> int:
    return sum(
        1
        for chain in structure[0]
        for residue in chain
        for atom in residue
        if atom.altloc not in ("\x00", " ")
    )


def _report_insertion_codes(structure: gemmi.Structure, warnings: list[str]) -> None:
    inserted = [
        f"{chain.name}{residue.seqid.num}{residue.seqid.icode}"
        for chain in structure[0]
        for residue in chain
        if residue.seqid.icode not in (" ", "\x00", "")
    ]
    if inserted:
        shown = ", ".join(inserted[:5]) + (" ..." if len(inserted) > 5 else "")
        warnings.append(
            f"receptor has {len(inserted)} residues with insertion codes ({shown}); "
            "they are kept in input order"
        )


def _protein_chain_ids(model: gemmi.Model) -> list[str]:
    chain_ids: list[str] = []
    for chain in model:
        if any(_is_amino_acid(residue.name) for residue in chain):
            if chain.name not in chain_ids:
                chain_ids.append(chain.name)
    return chain_ids


def _site_marker(
    model: gemmi.Model, site_chain: str | None, file_name: str
) -> np.ndarray | None:
    if site_chain is None:
        return None
    xyz = [
        atom.pos.tolist()
        for chain in model
        if chain.name == site_chain
        for residue in chain
        if not gemmi.find_tabulated_residue(residue.name)
        or not gemmi.find_tabulated_residue(residue.name).is_water()
        for atom in residue
        if atom.element.name != "H"
    ]
    if not xyz:
        available = ", ".join(sorted({chain.name for chain in model}))
        raise InputError(
            f"site_chain {site_chain!r} not found in receptor {file_name}; chains "
            f"present: {available}"
        )
    return np.asarray(xyz, dtype=float)


def _choose_chains(
    protein_chains: list[str], config: JobConfig, file_name: str
) -> tuple[str, ...]:
    if config.receptor_chains:
        missing = [c for c in config.receptor_chains if c not in protein_chains]
        if missing:
            raise InputError(
                f"receptor_chains {','.join(missing)} not found among the protein "
                f"chains of {file_name} ({', '.join(protein_chains) or 'none'})"
            )
        return tuple(c for c in protein_chains if c in config.receptor_chains)
    chains = tuple(c for c in protein_chains if c != config.site_chain)
    if not chains:
        raise InputError(
            f"receptor {file_name}: no protein chain is left once site_chain "
            f"{config.site_chain!r} is removed"
        )
    return chains


def _mark_mse_as_polymer(model: gemmi.Model) -> None:
    # MSE written as HETATM would otherwise be removed as a ligand; PDBFixer turns it
    # into MET later.
    for chain in model:
        for residue in chain:
            if _is_amino_acid(residue.name) and residue.het_flag == "H":
                residue.het_flag = "A"


def _site_box(
    site_marker: np.ndarray | None, config: JobConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """Return the (low, high) corners (Å) of the region a kept metal must be near."""
    if site_marker is not None:
        return site_marker.min(axis=0), site_marker.max(axis=0)
    if config.site_center is not None and config.site_size is not None:
        center = np.asarray(config.site_center)
        half = np.asarray(config.site_size) / 2
        return center - half, center + half
    return None


def _select_metals(
    model: gemmi.Model,
    chain_ids: tuple[str, ...],
    site_box: tuple[np.ndarray, np.ndarray] | None,
    warnings: list[str],
) -> set[tuple[str, str]]:
    """Return (chain, residue id) of the metal ions to keep.

    A metal is kept when a receptor protein atom coordinates it and, if the site is
    already known, when it lies within :data:`METAL_SITE_DISTANCE` of the site.
    Without a known site (a pocket is detected later) every coordinated metal is kept.
    """
    protein_xyz = np.asarray(
        [
            atom.pos.tolist()
            for chain in model
            if chain.name in chain_ids
            for residue in chain
            if _is_amino_acid(residue.name)
            for atom in residue
            if atom.element.name != "H"
        ]
    )
    kept: set[tuple[str, str]] = set()
    for chain in model:
        for residue in chain:
            if residue.name not in METAL_IONS or len(residue) != 1:
                continue
            position = np.asarray(residue[0].pos.tolist())
            nearest = np.min(np.linalg.norm(protein_xyz - position, axis=1))
            if nearest > METAL_CONTACT_DISTANCE:
                continue
            if site_box is not None:
                low, high = site_box
                outside = np.maximum(0, np.maximum(low - position, position - high))
                if np.linalg.norm(outside) > METAL_SITE_DISTANCE:
                    continue
            kept.add((chain.name, str(residue.seqid)))
    if kept:
        names = sorted({_residue_label(model, key) for key in kept})
        warnings.append(f"kept {len(kept)} metal ions near the site: {', '.join(names)}")
    return kept


def _residue_label(model: gemmi.Model, key: tuple[str, str]) -> str:
    chain_name, seqid = key
    for chain in model:
        if chain.name == chain_name:
            for residue in chain:
                if str(residue.seqid) == seqid:
                    return f"{residue.name} {chain_name}{seqid}"
    return f"{chain_name}{seqid}"


def _remove_chain(model: gemmi.Model, chain_name: str) -> None:
    for index in reversed(range(len(model))):
        if model[index].name == chain_name:
            del model[index]


def _remove_unwanted(
    model: gemmi.Model, chain_ids: tuple[str, ...], kept_metals: set[tuple[str, str]]
) -> dict[str, int]:
    removed: dict[str, int] = {}
    for chain_index in reversed(range(len(model))):
        chain = model[chain_index]
        for residue_index in reversed(range(len(chain))):
            residue = chain[residue_index]
            keep = (chain.name, str(residue.seqid)) in kept_metals or (
                chain.name in chain_ids and _is_amino_acid(residue.name)
            )
            if not keep:
                label = "water" if residue.is_water() else residue.name
                removed[label] = removed.get(label, 0) + 1
                del chain[residue_index]
        if len(chain) == 0:
            del model[chain_index]
    return removed


def _report_backbone_gaps(model: gemmi.Model, warnings: list[str]) -> None:
    missing: list[str] = []
    breaks: list[str] = []
    for chain in model:
        previous = None
        for residue in chain:
            if not _is_amino_acid(residue.name):
                continue
            absent = [name for name in BACKBONE_ATOMS if not residue.find_atom(name, "*")]
            # A missing O is rebuilt by PDBFixer; it is reported there.
            if absent and absent != ["O"]:
                missing.append(f"{chain.name}{residue.seqid} {residue.name} ({','.join(absent)})")
            if previous is not None:
                carbon = previous.find_atom("C", "*")
                nitrogen = residue.find_atom("N", "*")
                if carbon and nitrogen and carbon.pos.dist(nitrogen.pos) > CHAIN_BREAK_DISTANCE:
                    breaks.append(f"{chain.name}{previous.seqid}-{residue.seqid}")
                elif not (carbon and nitrogen):
                    breaks.append(f"{chain.name}{previous.seqid}-{residue.seqid}")
            previous = residue
    if missing:
        warnings.append(
            f"{len(missing)} receptor residues lack backbone atoms: "
            + _shorten(missing)
        )
    if breaks:
        warnings.append(f"{len(breaks)} chain breaks in the receptor: " + _shorten(breaks))


def _shorten(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _repair_with_pdbfixer(
    structure: gemmi.Structure, ph: float, warnings: list[str]
) -> str:
    """Replace modified residues, rebuild missing heavy atoms and add hydrogens."""
    from openmm.app import PDBFile
    from pdbfixer import PDBFixer

    from peptide_opt.engines.sidechains import cpu_platform

    structure.remove_empty_chains()
    # NOTE: the prepared receptor is kept as PDB text, so a receptor with chain IDs
    # longer than two characters or more than 99,999 atoms is rejected here. Keeping it
    # as mmCIF through the docking engine would lift this limit.
    try:
        pdb_text = structure.make_pdb_string(gemmi.PdbWriteOptions(minimal=True))
    except RuntimeError as error:
        raise InputError(
            f"receptor cannot be written as PDB for docking ({error}); chain IDs of up "
            "to two characters and up to 99,999 atoms are supported"
        ) from None
    try:
        # PDBFixer minimizes the rebuilt atoms and OpenMM's Modeller the new hydrogens.
        # On one thread they repeat exactly. On two they came out different each run.
        fixer = PDBFixer(pdbfile=io.StringIO(pdb_text), platform=cpu_platform(1))
        fixer.findMissingResidues()
        # Missing loops are not modelled; their chain breaks are reported instead.
        fixer.missingResidues = {}
        fixer.findNonstandardResidues()
        if fixer.nonstandardResidues:
            names = sorted(
                {f"{residue.name}->{parent}" for residue, parent in fixer.nonstandardResidues}
            )
            warnings.append(
                f"{len(fixer.nonstandardResidues)} modified residues replaced by their "
                f"parent: {', '.join(names)}"
            )
            fixer.replaceNonstandardResidues()
        fixer.findMissingAtoms()
        n_side_chain = sum(len(atoms) for atoms in fixer.missingAtoms.values())
        n_terminal = sum(len(atoms) for atoms in fixer.missingTerminals.values())
        if n_side_chain or n_terminal:
            residues = _shorten(
                [f"{r.chain.id}{r.id} {r.name}" for r in fixer.missingAtoms]
            )
            warnings.append(
                f"rebuilt {n_side_chain + n_terminal} missing heavy atoms in "
                f"{len(fixer.missingAtoms) + len(fixer.missingTerminals)} residues"
                + (f" ({residues})" if fixer.missingAtoms else "")
            )
        rebuilt_oxt = {
            (residue.chain.id, residue.id)
            for residue, names in fixer.missingTerminals.items()
            if "OXT" in names
        }
        # A fixed seed makes the rebuilt atoms, and so every later step, repeatable.
        fixer.addMissingAtoms(seed=REPAIR_SEED)
        _place_terminal_oxygens(fixer, rebuilt_oxt)
        # OpenMM's Modeller starts new hydrogens at positions from Python's random
        # module; a fixed seed (the caller's state restored after) makes them repeatable.
        state = random.getstate()
        random.seed(REPAIR_SEED)
        try:
            fixer.addMissingHydrogens(ph)
        finally:
            random.setstate(state)
    except Exception as error:  # PDBFixer and OpenMM raise plain Exception subclasses
        raise EngineError(f"receptor repair with PDBFixer failed: {error}") from error
    warnings.append(f"hydrogens added at pH {ph:g}")
    output = io.StringIO()
    PDBFile.writeFile(fixer.topology, fixer.positions, output, keepIds=True)
    return output.getvalue()


#: Length (Å) of the C-terminal carboxylate's C-O bond that :func:`_place_terminal_oxygens`
#: gives the rebuilt OXT: the mean of the C=O and C-O- bonds of a carboxylate.
TERMINAL_CO_BOND = 1.25


def _place_terminal_oxygens(fixer, residues: set[tuple[str, str]]) -> None:
    """Put each rebuilt OXT in the carboxylate plane, 120 degrees from CA and O.

    ``residues`` are the (chain ID, residue ID) pairs whose OXT PDBFixer rebuilt.

    PDBFixer places a missing OXT by superposing a template on the residue, which can
    leave it next to CA (1.8 Å in chain A's last residue of 5FFG). Meeko then reads an
    OXT-CA bond and rejects the receptor, so every rebuilt OXT is placed from CA, C and O
    instead, opposite the sum of the unit vectors from C to CA and to O.
    """
    if not residues:
        return
    from openmm import Vec3, unit

    positions = fixer.positions.value_in_unit(unit.nanometer)
    xyz = np.array([[p[0], p[1], p[2]] for p in positions]) * 10.0
    for residue in fixer.topology.residues():
        if (residue.chain.id, residue.id) not in residues:
            continue
        atoms = {atom.name: atom.index for atom in residue.atoms()}
        if not {"CA", "C", "O", "OXT"} <= atoms.keys():
            continue
        carbon = xyz[atoms["C"]]
        to_alpha = xyz[atoms["CA"]] - carbon
        to_oxygen = xyz[atoms["O"]] - carbon
        direction = -(
            to_alpha / np.linalg.norm(to_alpha) + to_oxygen / np.linalg.norm(to_oxygen)
        )
        xyz[atoms["OXT"]] = carbon + TERMINAL_CO_BOND * direction / np.linalg.norm(
            direction
        )
    fixer.positions = unit.Quantity(
        [Vec3(*(row / 10.0)) for row in xyz], unit.nanometer
    )


#: Heavy atoms of different residues closer than this (Å) overlap, unless they are
#: bonded (peptide bond, disulfide) or one is a metal ion. Non-bonded heavy-atom
#: contacts in proteins start near 2.5 Å (hydrogen bonds).
OVERLAP_DISTANCE = 2.0


def _report_overlaps(pdb_text: str, warnings: list[str]) -> None:
    """Add a warning naming the residue pairs whose heavy atoms overlap after repair.

    Such pairs are usually side chains that PDBFixer rebuilt into one another, or
    into a neighbour, and they change the docking energy near them.
    """
    from scipy.spatial import cKDTree

    residues, names, xyz = [], [], []
    for line in pdb_text.splitlines():
        if not line.startswith(("ATOM  ", "HETATM")):
            continue
        element = line[76:78].strip().upper()
        if element in ("H", "D") or line[17:20].strip() in METAL_IONS:
            continue
        residues.append(f"{line[21]}{line[22:27].strip()}")
        names.append(line[12:16].strip())
        xyz.append((float(line[30:38]), float(line[38:46]), float(line[46:54])))
    if not xyz:
        return
    pairs = set()
    for i, j in cKDTree(np.array(xyz)).query_pairs(OVERLAP_DISTANCE):
        if residues[i] == residues[j] or {names[i], names[j]} in ({"C", "N"}, {"SG"}):
            continue
        pairs.add(tuple(sorted((residues[i], residues[j]))))
    if pairs:
        listed = _shorten([f"{a}/{b}" for a, b in sorted(pairs)])
        warnings.append(
            f"heavy atoms of {len(pairs)} residue pairs overlap (closer than "
            f"{OVERLAP_DISTANCE:g} Å) after repair: {listed}; their side chains may be "
            "misplaced"
        )

