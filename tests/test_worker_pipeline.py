"""The peptide_optimization handler in a real worker: rows the way the platform
inserts them, inputs in the platform's storage layout (local backend)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from tests.fixtures.postgres import wait_for_workers

pytestmark = pytest.mark.services

BUCKET = "astramolecula"


def _job_folder(storage_root: Path, job_id: str) -> Path:
    return storage_root / BUCKET / "jobs" / "peptide_optimization" / job_id


def _store_1czy_job(storage_root: Path, examples_dir: Path, job_id: str, config: str):
    folder = _job_folder(storage_root, job_id)
    (folder / "input").mkdir(parents=True)
    shutil.copy(examples_dir / "1czy" / "1czy_complex.pdb", folder / "input")
    (folder / "input" / "peptide.fasta").write_text(">peptide\nPQQATDD\n")
    (folder / "optimization_config.txt").write_text(config)
    return folder


def _worker_env(storage_root: Path) -> dict[str, str]:
    return {
        "STORAGE_BACKEND": "local",
        "STORAGE_LOCAL_ROOT": str(storage_root),
        "SEAWEED_BUCKET": BUCKET,
        "MAX_ATTEMPTS": "1",
    }


def test_bad_rows_fail_clearly(queue_db, start_worker, tmp_path, examples_dir):
    storage_root = tmp_path / "storage"
    worker = start_worker(**_worker_env(storage_root))
    wait_for_workers(queue_db, 1)
    user = queue_db.add_user()
    malformed_id = str(uuid.uuid4())
    _store_1czy_job(
        storage_root,
        examples_dir,
        malformed_id,
        "n_poses=abc\nreceptor_pdb_filename=1czy_complex.pdb\n",
    )

    nowhere = queue_db.add_task("peptide_optimization", user, "/nowhere/at/all")
    missing = queue_db.add_task(
        "peptide_optimization", user, "jobs/peptide_optimization/no-such-job"
    )
    malformed = queue_db.add_task(
        "peptide_optimization",
        user,
        f"/tmp/astramolecula/jobs/peptide_optimization/{malformed_id}",
    )
    rows = {
        name: queue_db.wait_for_status(task_id, "failed", timeout=120)
        for name, task_id in (
            ("nowhere", nowhere),
            ("missing", missing),
            ("malformed", malformed),
        )
    }
    after = queue_db.add_task("peptide_opt.noop", user)

    assert "job_dir must end in jobs/<task type>/<job id>" in rows["nowhere"]["error"]
    assert rows["missing"]["error"] == (
        "job input 'jobs/peptide_optimization/no-such-job/input/peptide.fasta' is "
        "missing from storage"
    )
    assert "n_poses" in rows["malformed"]["error"]
    assert "'abc'" in rows["malformed"]["error"]
    for row in rows.values():
        assert not row["error"].startswith("internal error")
    assert queue_db.wait_for_status(after, "finished", timeout=30)
    assert worker.process.poll() is None


@pytest.mark.slow
def test_platform_row_runs_1czy(queue_db, start_worker, tmp_path, examples_dir):
    storage_root = tmp_path / "storage"
    job_id = str(uuid.uuid4())
    folder = _store_1czy_job(
        storage_root,
        examples_dir,
        job_id,
        "cores=12\ncleanup=True\nproteinmpnn_enabled=True\nn_poses=2\n"
        "num_seq_per_target=4\nproteinmpnn_seed=37\nn_iterations=1\n"
        "peptide_sequence=PQQATDD\nreceptor_pdb_filename=1czy_complex.pdb\n"
        f"storage_prefix=jobs/peptide_optimization/{job_id}\n"
        "site_chain=B\nreceptor_chains=A\n",
    )
    start_worker(
        TASK_TIMEOUT="3000",
        LEASE_SECONDS="30",
        WORKER_CORES="2",
        **_worker_env(storage_root),
    )
    wait_for_workers(queue_db, 1)
    user = queue_db.add_user()

    queue_db.connection.execute(
        "INSERT INTO tasks (id, user_id, task_type, job_dir, status) "
        "VALUES (%s, %s, 'peptide_optimization', %s, 'pending')",
        (job_id, user, f"jobs/peptide_optimization/{job_id}"),
    )
    row = queue_db.wait_for_status(job_id, {"finished", "failed"}, timeout=2400)

    assert row["status"] == "finished", row["error"]
    assert row["progress"] == 100
    assert row["finished_at"] >= row["started_at"]
    assert {"dock", "analyze", "upload"} <= set(row["step_timings"])
    output = folder / "output"
    header = (output / "result.csv").read_text().splitlines()[0]
    assert header.startswith("Index,")
    assert (output / "complex1.pdb").is_file()
    assert (output / "complex2.pdb").is_file()
    assert (output / "manifest.json").is_file()
    assert (
        row["result_summary"]["storage_prefix"] == f"jobs/peptide_optimization/{job_id}"
    )
    assert "result.csv" in row["result_summary"]["outputs"]
