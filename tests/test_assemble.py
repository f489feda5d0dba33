"""Complex assembly: peptide chain A, receptor chains renamed, coordinates unchanged."""

from pathlib import Path

import gemmi
import numpy as np

from peptide_opt.config import build_config
from peptide_opt.pipeline.assemble import _long_chain_id, assemble_complex, receptor_chain_map
from peptide_opt.pipeline.prepare import prepare_receptor
from peptide_opt.pipeline.types import Pose, Receptor

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def crystal_peptide_pdb() -> str:
    """Chain B of 1CZY (the crystal pose of PQQATDD) renamed A."""
    structure = gemmi.read_structure(str(EXAMPLES / "1czy" / "1czy_complex.pdb"))
    model = structure[0]
    for index in reversed(range(len(model))):
        if model[index].name != "B":
            del model[index]
    model["B"].name = "A"
    return structure.make_pdb_string(gemmi.PdbWriteOptions(minimal=True))


def chain_xyz(structure: gemmi.Structure, chain: str) -> np.ndarray:
    return np.array([atom.pos.tolist() for residue in structure[0][chain] for atom in residue])


def test_crystal_pose_assembled_with_renamed_receptor():
    receptor = prepare_receptor(EXAMPLES / "1czy" / "1czy_complex.pdb", build_config({"site_chain": "B"}))
    pose = Pose(peptide_pdb=crystal_peptide_pdb(), docking_affinity=0.0, rank=1)
    assembled = assemble_complex(receptor, pose)

    assert assembled.format == "pdb"
    assert assembled.chain_map == {"A": "peptide", "B": "A"}
    structure = gemmi.read_pdb_string(assembled.text)
    assert [chain.name for chain in structure[0]] == ["A", "B"]
    assert gemmi.one_letter_code([r.name for r in structure[0]["A"]]) == "PQQATDD"
    prepared = gemmi.read_pdb_string(receptor.pdb_text)
    # The receptor is copied atom for atom: PDB keeps 3 decimals, so 1e-3 Å.
    np.testing.assert_allclose(chain_xyz(structure, "B"), chain_xyz(prepared, "A"), atol=1e-3)


def test_chain_ids_after_pdb_run_out():
    receptor = Receptor(pdb_text="", chain_ids=tuple(f"X{i}" for i in range(70)))
    mapping = receptor_chain_map(receptor)
    # 70 receptor chains plus the peptide exceed PDB's 62 IDs: two-character IDs follow.
    assert len(set(mapping.values())) == 70
    assert _long_chain_id(62) == "AA"
    assert _long_chain_id(1) == "B"


def test_many_chains_written_as_mmcif():
    # 70 one-residue receptor chains: more than PDB's 62 single-character chain IDs.
    source = gemmi.read_structure(str(EXAMPLES / "1czy" / "1czy_complex.pdb"))
    residue = source[0]["A"][0]
    structure = gemmi.Structure()
    model = gemmi.Model("1")
    chain_ids = []
    for index in range(70):
        chain = gemmi.Chain(f"{'abcdefgh'[index // 10]}{index % 10}")
        chain.add_residue(residue)
        model.add_chain(chain)
        chain_ids.append(chain.name)
    structure.add_model(model)
    # gemmi writes two-character chain IDs into PDB columns 21-22.
    pdb_text = structure.make_pdb_string(gemmi.PdbWriteOptions(minimal=True))
    receptor = Receptor(pdb_text=pdb_text, chain_ids=tuple(chain_ids))
    pose = Pose(peptide_pdb=crystal_peptide_pdb(), docking_affinity=0.0, rank=1)
    assembled = assemble_complex(receptor, pose)
    assert assembled.format == "cif"
    assert "71 chains exceed PDB's 62 chain IDs" in assembled.warnings[0]
    document = gemmi.cif.read_string(assembled.text)
    rebuilt = gemmi.make_structure_from_block(document.sole_block())
    assert len(rebuilt[0]) == 71
    assert rebuilt[0][0].name == "A"

