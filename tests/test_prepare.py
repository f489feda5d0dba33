"""The prepare step: peptide and receptor validation, receptor repair with warnings."""

from pathlib import Path

import gemmi
import pytest

from peptide_opt.config import build_config
from peptide_opt.errors import InputError
from peptide_opt.pipeline.prepare import (
    check_receptor_input,
    normalize_peptide,
    prepare_receptor,
    validate_receptor_file,
)

COMPLEX = Path(__file__).resolve().parent.parent / "examples" / "1czy" / "1czy_complex.pdb"


def atom_lines(chain: str | None = None) -> list[str]:
    lines = [line for line in COMPLEX.read_text().splitlines() if line.startswith("ATOM")]
    if chain is not None:
        lines = [line for line in lines if line[21] == chain]
    return lines


def write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


def residue_atoms(pdb_text: str, chain: str, number: int) -> dict[str, str]:
    structure = gemmi.read_pdb_string(pdb_text)
    for residue in structure[0][chain]:
        if residue.seqid.num == number:
            return {atom.name: residue.name for atom in residue}
    raise AssertionError(f"residue {chain}{number} not found")


# --- peptide ---------------------------------------------------------------------


def test_peptide_fasta_and_plain_text_normalized():
    assert normalize_peptide(">p some title\npqq atd\nD\n") == "PQQATDD"
    assert normalize_peptide("  pQq a T d d ") == "PQQATDD"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no sequence found"),
        (">only a header\n", "no sequence found"),
        (">a\nPQQ\n>b\nATD\n", "FASTA holds 2 records"),
        ("PQQBTDD", "'B' at position 4 is not one of the 20 standard amino acids"),
        ("P", "peptide length 1 is outside the limits of 2 to 50"),
        ("A" * 51, "peptide length 51 is outside the limits of 2 to 50"),
    ],
)
def test_peptide_rejected_with_reason(text, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        normalize_peptide(text)


# --- receptor validation ---------------------------------------------------------


def test_receptor_empty_file(tmp_path):
    path = tmp_path / "empty.pdb"
    path.write_text("")
    with pytest.raises(InputError, match="empty.pdb: the file is empty"):
        validate_receptor_file(path)


def test_receptor_not_a_structure(tmp_path):
    path = tmp_path / "notes.pdb"
    path.write_text("this is a text file\nwith two lines\n")
    with pytest.raises(InputError, match="notes.pdb: not a PDB or mmCIF file"):
        validate_receptor_file(path)


def test_receptor_over_size_limit(tmp_path):
    path = tmp_path / "huge.pdb"
    with path.open("wb") as handle:
        handle.truncate(51 * 1024 * 1024)
    with pytest.raises(InputError, match=r"51\.0 MiB exceeds the limit of 50 MiB"):
        validate_receptor_file(path)


def test_receptor_without_protein(tmp_path):
    water = [
        "HETATM    1  O   HOH W   1       1.000   2.000   3.000  1.00  0.00           O",
        "HETATM    2  O   HOH W   2       4.000   2.000   3.000  1.00  0.00           O",
    ]
    path = write(tmp_path, "water.pdb", water)
    with pytest.raises(InputError, match="water.pdb: no protein residues found"):
        validate_receptor_file(path)


def test_receptor_ca_only(tmp_path):
    lines = [line for line in atom_lines("A") if line[12:16] == " CA "]
    path = write(tmp_path, "ca_only.pdb", lines)
    with pytest.raises(InputError, match="168 of 168 protein residues hold a single atom"):
        validate_receptor_file(path)


def test_receptor_missing_chain_named(tmp_path):
    config = build_config({"receptor_chains": "A,Q"})
    with pytest.raises(InputError, match=r"receptor_chains Q not found .* \(A, B\)"):
        prepare_receptor(COMPLEX, config)


def test_receptor_missing_site_chain_named():
    config = build_config({"site_chain": "Z"})
    with pytest.raises(InputError, match="site_chain 'Z' not found .* chains present: A, B"):
        prepare_receptor(COMPLEX, config)


# --- receptor repair -------------------------------------------------------------


def test_site_chain_marks_site_and_leaves_receptor():
    receptor = prepare_receptor(COMPLEX, build_config({"site_chain": "B"}))
    assert receptor.chain_ids == ("A",)
    # Chain B of 1CZY is PQQATDD: 54 heavy atoms in the crystal file.
    assert receptor.site_marker_xyz.shape == (54, 3)
    structure = gemmi.read_pdb_string(receptor.pdb_text)
    assert [chain.name for chain in structure[0]] == ["A"]
    assert any("site chain B marked the site" in w for w in receptor.warnings)


def test_missing_side_chains_rebuilt_and_hydrogens_added():
    # The deposited MET A2 of 1CZY stops at CB; PDBFixer must rebuild CG, SD, CE.
    receptor = prepare_receptor(COMPLEX, build_config({"site_chain": "B"}))
    atoms = residue_atoms(receptor.pdb_text, "A", 2)
    assert {"CG", "SD", "CE"} <= set(atoms)
    assert any(name.startswith("H") for name in atoms)
    assert any("rebuilt" in w and "A2 MET" in w for w in receptor.warnings)
    assert "hydrogens added at pH 7.4" in receptor.warnings


@pytest.mark.slow
def test_prepared_receptor_reproducible(examples_dir):
    # Every later step starts from the prepared receptor, so a job run again must get
    # the same atoms. On the 5FFG receptor (two rebuilt side chains, about 6,400
    # hydrogens added) the minimizations of PDBFixer and OpenMM's Modeller gave
    # different coordinates in each of three runs when they used two threads.
    config = build_config({})
    first = prepare_receptor(examples_dir / "5ffg" / "5ffg.pdb", config)
    second = prepare_receptor(examples_dir / "5ffg" / "5ffg.pdb", config)
    assert first.pdb_text == second.pdb_text


def test_overlapping_rebuilt_side_chains_reported():
    # 1CZY's deposited GLU A146 and ASP A155 lack their side chains. PDBFixer rebuilds
    # them into ARG A32 (OE2-CZ 1.62 Å) and PRO A29 (OD1-CD 1.40 Å), and the result's
    # warnings name both pairs.
    receptor = prepare_receptor(COMPLEX, build_config({"site_chain": "B"}))
    overlaps = [w for w in receptor.warnings if "overlap" in w]
    assert len(overlaps) == 1
    assert "2 residue pairs" in overlaps[0]
    assert "A146/A32" in overlaps[0]
    assert "A155/A29" in overlaps[0]


def test_rebuilt_terminal_oxygen_in_carboxylate_plane(tmp_path):
    # Without its OXT, LEU A168 (the last residue of chain A) gets one rebuilt. Placed
    # at 120 degrees from CA and O, OXT lies 1.25 Å from C and 2.40 Å from CA (with the
    # 1.52 Å C-CA bond). PDBFixer alone left it 2.04 Å from CA here and 1.78 Å in 5FFG,
    # which Meeko read as a bond. 0.05 Å allows for the deposited C-CA bond length.
    lines = [line for line in atom_lines() if line[12:16].strip() != "OXT"]
    path = write(tmp_path, "no_oxt.pdb", lines)
    receptor = prepare_receptor(path, build_config({"site_chain": "B"}))
    structure = gemmi.read_pdb_string(receptor.pdb_text)
    last = structure[0]["A"][len(structure[0]["A"]) - 1]
    oxt, carbon, alpha = (last[name][0].pos for name in ("OXT", "C", "CA"))
    assert last.seqid.num == 168
    assert oxt.dist(carbon) == pytest.approx(1.25, abs=0.01)
    assert oxt.dist(alpha) == pytest.approx(2.40, abs=0.05)


def test_several_models_first_kept(tmp_path):
    lines = atom_lines("A")
    shifted = [line[:30] + f"{float(line[30:38]) + 50:8.3f}" + line[38:] for line in lines]
    text = ["MODEL        1", *lines, "ENDMDL", "MODEL        2", *shifted, "ENDMDL"]
    path = write(tmp_path, "models.pdb", text)
    receptor = prepare_receptor(path, build_config({}))
    assert "receptor has 2 models; the first one is used" in receptor.warnings
    first_ca = next(line for line in receptor.pdb_text.splitlines() if " CA " in line)
    assert float(first_ca[30:38]) == pytest.approx(float(lines[1][30:38]), abs=1e-3)


def test_altlocs_first_kept(tmp_path):
    lines = atom_lines("A")
    index = next(i for i, line in enumerate(lines) if line[17:20] == "LEU" and line[12:16] == " CD1")
    first = lines[index][:16] + "A" + lines[index][17:54] + "  0.60" + lines[index][60:]
    second = lines[index][:16] + "B" + lines[index][17:30] + "  99.000" + lines[index][38:54] + "  0.40" + lines[index][60:]
    lines[index : index + 1] = [first, second]
    path = write(tmp_path, "altloc.pdb", lines)
    receptor = prepare_receptor(path, build_config({}))
    # The two copies of LEU CD1 (A at 0.60, B at 0.40) are both counted.
    assert any("has 2 atoms with alternate locations" in w for w in receptor.warnings)
    assert "99.000" not in receptor.pdb_text


def test_insertion_codes_reported(tmp_path):
    lines = atom_lines("A")
    lines = [line[:26] + "A" + line[27:] if line[22:26] == "  10" else line for line in lines]
    path = write(tmp_path, "icode.pdb", lines)
    receptor = prepare_receptor(path, build_config({}))
    assert any("1 residues with insertion codes (A10A)" in w for w in receptor.warnings)


def test_mse_hetatm_becomes_met(tmp_path):
    lines = atom_lines("A")
    converted = []
    for line in lines:
        if line[17:20] == "MET" and line[22:26] == "  12":
            atom = line[12:16]
            element = line[76:78]
            if atom == " SD ":
                atom, element = "SE  ", "SE"
            line = "HETATM" + line[6:12] + atom + line[16:17] + "MSE" + line[20:76] + element
        converted.append(line)
    assert any("MSE" in line for line in converted), "1CZY chain A has MET 12"
    path = write(tmp_path, "mse.pdb", converted)
    receptor = prepare_receptor(path, build_config({}))
    assert residue_atoms(receptor.pdb_text, "A", 12)["SD"] == "MET"
    assert any("MSE->MET" in w for w in receptor.warnings)


def test_missing_backbone_oxygen_rebuilt(tmp_path):
    lines = [line for line in atom_lines("A") if not (line[22:26] == "  20" and line[12:16] == " O  ")]
    path = write(tmp_path, "no_o.pdb", lines)
    receptor = prepare_receptor(path, build_config({}))
    assert "O" in residue_atoms(receptor.pdb_text, "A", 20)
    assert any("rebuilt" in w and "A20" in w for w in receptor.warnings)


def test_chain_break_reported(tmp_path):
    lines = [line for line in atom_lines("A") if line[22:26] not in ("  50", "  51")]
    path = write(tmp_path, "gap.pdb", lines)
    receptor = prepare_receptor(path, build_config({}))
    assert any("chain breaks in the receptor: A49-52" in w for w in receptor.warnings)


def test_check_receptor_input_empty_box():
    # A 6 Å cube at (7, 34, -4) Å, near a corner of the receptor's bounding box
    # (7.3, 34.9, -5.0), contains no receptor atom.
    config = build_config({"site_center": "7,34,-4", "site_size": "6,6,6"})
    with pytest.raises(InputError, match="contains no receptor atom"):
        check_receptor_input(COMPLEX, config)



@pytest.mark.parametrize(("chains", "accepted"), [("A", False), ("A,B", True)])
def test_check_receptor_input_box_counts_kept_chains(chains, accepted):
    # A 5 Å cube on THR B173 O contains no chain A atom: the nearest is 5.5 Å away,
    # beyond the cube's 4.3 Å half-diagonal.
    config = build_config(
        {
            "site_center": "-27.393,13.455,23.334",
            "site_size": "5,5,5",
            "receptor_chains": chains,
        }
    )
    if accepted:
        check_receptor_input(COMPLEX, config)
    else:
        with pytest.raises(InputError, match="contains no receptor atom"):
            check_receptor_input(COMPLEX, config)
