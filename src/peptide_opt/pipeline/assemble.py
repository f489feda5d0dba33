"""Step ``assemble``: one complex per pose, the docked peptide plus the receptor.

The peptide is chain A; the receptor chains follow, renamed B, C, ... in input order. When
PDB's single-character chain IDs (62) or five-digit atom serial numbers (99,999) run out,
the complex is written as mmCIF instead, with a warning.
"""

from __future__ import annotations

import dataclasses
import string

import gemmi

from peptide_opt.errors import EngineError
from peptide_opt.pipeline.types import Pose, Receptor

PEPTIDE_CHAIN = "A"
PDB_CHAIN_IDS = string.ascii_uppercase + string.ascii_lowercase + string.digits
MAX_PDB_ATOMS = 99_999


@dataclasses.dataclass
class AssembledComplex:
    """A complex as text, its format (``pdb`` or ``cif``) and its chain-ID mapping.

    ``chain_map`` maps each new chain ID to the input's: ``{"A": "peptide", "B": "A"}``.
    """

    text: str
    format: str
    chain_map: dict[str, str]
    warnings: list[str] = dataclasses.field(default_factory=list)


def receptor_chain_map(receptor: Receptor) -> dict[str, str]:
    """Return the new chain ID of every receptor chain, in input order."""
    n_chains = len(receptor.chain_ids)
    if n_chains + 1 <= len(PDB_CHAIN_IDS):
        new_ids = list(PDB_CHAIN_IDS[1 : n_chains + 1])
    else:
        new_ids = [_long_chain_id(index) for index in range(1, n_chains + 1)]
    return dict(zip(receptor.chain_ids, new_ids))


def _long_chain_id(index: int) -> str:
    """Return A, B, ..., 9, then AA, AB, ... (mmCIF allows multi-character IDs)."""
    base = len(PDB_CHAIN_IDS)
    if index < base:
        return PDB_CHAIN_IDS[index]
    return _long_chain_id(index // base - 1) + PDB_CHAIN_IDS[index % base]


def assemble_complex(receptor: Receptor, pose: Pose) -> AssembledComplex:
    """Build the complex of one pose (peptide chain A, receptor chains renamed)."""
    renamed = receptor_chain_map(receptor)
    peptide = _read_pdb(pose.peptide_pdb, "docked peptide")
    receptor_structure = _read_pdb(receptor.pdb_text, "prepared receptor")

    complex_structure = gemmi.Structure()
    complex_structure.name = "complex"
    model = gemmi.Model("1")
    peptide_chain = gemmi.Chain(PEPTIDE_CHAIN)
    for chain in peptide[0]:
        for residue in chain:
            peptide_chain.add_residue(residue)
    model.add_chain(peptide_chain)
    for chain_id in receptor.chain_ids:
        new_chain = gemmi.Chain(renamed[chain_id])
        for chain in receptor_structure[0]:
            if chain.name == chain_id:
                for residue in chain:
                    new_chain.add_residue(residue)
        model.add_chain(new_chain)
    complex_structure.add_model(model)
    complex_structure.setup_entities()

    chain_map = {PEPTIDE_CHAIN: "peptide"}
    chain_map.update({new: old for old, new in renamed.items()})
    n_atoms = model.count_atom_sites()
    too_many_chains = any(len(chain_id) > 1 for chain_id in renamed.values())
    if too_many_chains or n_atoms > MAX_PDB_ATOMS:
        reason = (
            f"{len(renamed) + 1} chains exceed PDB's {len(PDB_CHAIN_IDS)} chain IDs"
            if too_many_chains
            else f"{n_atoms} atoms exceed PDB's {MAX_PDB_ATOMS} atom serial numbers"
        )
        text = complex_structure.make_mmcif_document().as_string()
        warning = f"complex written as mmCIF because {reason}"
        return AssembledComplex(text, "cif", chain_map, [warning])
    options = gemmi.PdbWriteOptions(minimal=True)
    return AssembledComplex(complex_structure.make_pdb_string(options), "pdb", chain_map)


def _read_pdb(text: str, label: str) -> gemmi.Structure:
    try:
        structure = gemmi.read_pdb_string(text)
    except (RuntimeError, ValueError) as error:
        raise EngineError(f"{label}: cannot be read as PDB ({error})") from error
    structure.remove_empty_chains()
    if len(structure) == 0:
        raise EngineError(f"{label}: contains no atoms")
    return structure
