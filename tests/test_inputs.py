"""Input forms, their precedence, and how the run command rejects bad input."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from peptide_opt.errors import InputError
from peptide_opt.pipeline.inputs import check_stated_prefix, load_files, load_job_folder

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def job_folder(tmp_path) -> Path:
    folder = tmp_path / "job"
    folder.mkdir()
    shutil.copy(EXAMPLES / "1czy" / "1czy_complex.pdb", folder / "receptor.pdb")
    (folder / "peptide.fasta").write_text(">p\nPQQATDD\n")
    return folder


def test_job_folder_with_config(job_folder):
    (job_folder / "optimization_config.txt").write_text(
        "n_poses=3\nsite_chain=B\npeptide_sequence=PQQATDE\ncores=12\n"
    )
    inputs = load_job_folder(job_folder)
    assert inputs.peptide == "PQQATDD"
    assert inputs.receptor_path.name == "receptor.pdb"
    assert inputs.config.n_poses == 3
    assert inputs.config.site_chain == "B"
    assert (
        "peptide_sequence PQQATDE in the config differs from the peptide file's PQQATDD; "
        "the peptide file is used"
    ) in inputs.warnings


def test_command_line_overrides_config(job_folder):
    (job_folder / "optimization_config.txt").write_text("n_poses=3\n")
    inputs = load_job_folder(job_folder, {"n_poses": "5"})
    assert inputs.config.n_poses == 5


def test_receptor_named_by_config_must_exist(job_folder):
    (job_folder / "optimization_config.txt").write_text("receptor_pdb_filename=5ffg.pdb\n")
    with pytest.raises(InputError, match="receptor_pdb_filename '5ffg.pdb' not found"):
        load_job_folder(job_folder)


def test_receptor_file_name_with_separator_rejected(job_folder):
    (job_folder / "optimization_config.txt").write_text("receptor_pdb_filename=../x.pdb\n")
    with pytest.raises(InputError, match="must be a plain file name"):
        load_job_folder(job_folder)


def test_two_receptor_candidates_rejected(job_folder):
    shutil.copy(job_folder / "receptor.pdb", job_folder / "other.cif")
    with pytest.raises(InputError, match="expected exactly one receptor file .* other.cif, receptor.pdb"):
        load_job_folder(job_folder)


def test_peptide_from_fasta_file(tmp_path):
    fasta = tmp_path / "p.fasta"
    fasta.write_text(">x\nPQQATDD\n")
    inputs = load_files(EXAMPLES / "1czy" / "1czy_complex.pdb", str(fasta))
    assert inputs.peptide == "PQQATDD"


@pytest.mark.parametrize(
    ("peptide", "message"),
    [
        # Read as a sequence, "nothere.fasta" would fail on its letter O instead.
        ("nothere.fasta", "peptide nothere.fasta: file not found"),
        ("missing/peptide", "peptide missing/peptide: file not found"),
    ],
)
def test_missing_peptide_file_reported(monkeypatch, tmp_path, peptide, message):
    monkeypatch.chdir(tmp_path)
    receptor = EXAMPLES / "1czy" / "1czy_complex.pdb"
    with pytest.raises(InputError) as caught:
        load_files(receptor, peptide)
    assert str(caught.value) == message


def test_stated_prefix_mismatch_warns(job_folder):
    (job_folder / "optimization_config.txt").write_text(
        "storage_prefix=jobs/peptide_optimization/other\n"
        "receptor_storage_key=jobs/peptide_optimization/other/input/receptor.pdb\n"
    )
    inputs = load_job_folder(job_folder)
    check_stated_prefix(inputs, "jobs/peptide_optimization/abc")
    assert len(inputs.warnings) == 2
    assert "the job's prefix is used" in inputs.warnings[0]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "peptide_opt.cli", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--peptide", "PQQZTDD"], "'Z' at position 4 is not one of the 20 standard amino acids"),
        (["--peptide", "PQQATDD", "--poses", "0"], "n_poses must be between 1 and 50, got 0"),
        (["--peptide", "PQQATDD", "--site-size", "50,20,20"], "site_size must be between 5 and 40, got 50"),
        (["--peptide", "PQQATDD", "--site-chain", "Q"], "site_chain 'Q' not found"),
        (["--peptide", "PQQATDD", "--cores", "0"], "--cores must be at least 1, got 0"),
    ],
)
def test_run_bad_input_exit_code_2(tmp_path, args, message):
    output = tmp_path / "out"
    completed = run_cli(
        "--receptor", str(EXAMPLES / "1czy" / "1czy_complex.pdb"), *args,
        "--output-dir", str(output), cwd=tmp_path,
    )
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr
    # No partial output may pass for a result.
    assert not (output / "manifest.json").exists()
    assert not (output / "result.csv").exists()


def test_run_needs_one_input_form(tmp_path):
    completed = run_cli("--input-dir", str(tmp_path), "--peptide", "PQQ", cwd=tmp_path)
    assert completed.returncode == 2
    assert "give exactly one input form" in completed.stderr


@pytest.mark.parametrize("name", ["missing.pdb", "."])
def test_run_missing_or_folder_receptor_exit_2(tmp_path, name):
    completed = run_cli("--receptor", name, "--peptide", "PQQATDD", cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert "receptor" in completed.stderr
    assert ("file not found" in completed.stderr) or ("is a folder" in completed.stderr)


def test_repeated_config_key_warns(job_folder):
    (job_folder / "optimization_config.txt").write_text("n_poses=3\nn_poses=1\n")
    inputs = load_job_folder(job_folder)
    assert inputs.config.n_poses == 1
    assert "line 2: n_poses is given again; the last value '1' is used" in inputs.warnings[0]


def test_previous_outputs_removed(tmp_path):
    from peptide_opt.pipeline.outputs import remove_previous_outputs

    for name in ("complex2.pdb", "design3.pdb", "result.csv", "manifest.json", "design_notes.pdb", "run.log"):
        (tmp_path / name).write_text("x")
    remove_previous_outputs(tmp_path)
    # Only this program's own output names go; a user's file and the log stay.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["design_notes.pdb", "run.log"]


def test_run_log_records_failed_step(tmp_path):
    # The prepare step rejects the missing site chain. run.log, the record a user reads
    # afterwards, then names the step and the error instead of ending at step_started.
    output = tmp_path / "out"
    completed = run_cli(
        "--receptor", str(EXAMPLES / "1czy" / "1czy_complex.pdb"),
        "--peptide", "PQQATDD", "--site-chain", "Q",
        "--output-dir", str(output), cwd=tmp_path,
    )
    assert completed.returncode == 2, completed.stderr
    log = (output / "run.log").read_text()
    assert "step_failed step=prepare error=site_chain 'Q' not found" in log


def test_run_pipe_as_receptor_exit_2(tmp_path):
    # A named pipe would block the reader forever, so it is rejected before it is opened.
    os.mkfifo(tmp_path / "receptor.pdb")
    completed = run_cli("--receptor", "receptor.pdb", "--peptide", "PQQATDD", cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert "receptor receptor.pdb: is not a regular file" in completed.stderr


def test_run_output_dir_is_file_exit_2(tmp_path):
    shutil.copy(EXAMPLES / "1czy" / "1czy_complex.pdb", tmp_path / "receptor.pdb")
    (tmp_path / "taken").write_text("not a folder\n")
    completed = run_cli(
        "--receptor", "receptor.pdb", "--peptide", "PQQATDD", "--output-dir", "taken",
        cwd=tmp_path,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr
    assert "output folder taken: a file of that name exists" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_local_receptor_name_with_space(tmp_path):
    # Only the platform's job layout needs plain file names; a local file may have any.
    receptor = tmp_path / "my receptor (1czy).pdb"
    shutil.copy(EXAMPLES / "1czy" / "1czy_complex.pdb", receptor)
    inputs = load_files(receptor, "PQQATDD", {"site_chain": "B"})
    assert inputs.receptor_path == receptor
    assert inputs.peptide == "PQQATDD"
