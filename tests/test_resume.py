"""Step checkpoints: a task killed during design resumes after dock on its retry."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tests.fixtures.postgres import wait_for_workers

pytestmark = [pytest.mark.services, pytest.mark.slow]

BUCKET = "astramolecula"
CONFIG = (
    "n_poses=2\nnum_seq_per_target=2\nsite_chain=B\nreceptor_chains=A\n"
    "selection=mpnn\nreceptor_pdb_filename=1czy_complex.pdb\n"
)


def store_job(storage_root: Path, examples_dir: Path, job_id: str) -> Path:
    folder = storage_root / BUCKET / "jobs" / "peptide_optimization" / job_id
    (folder / "input").mkdir(parents=True)
    shutil.copy(examples_dir / "1czy" / "1czy_complex.pdb", folder / "input")
    (folder / "input" / "peptide.fasta").write_text(">peptide\nPQQATDD\n")
    (folder / "optimization_config.txt").write_text(CONFIG)
    return folder


def wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.2)


def test_retry_skips_dock_after_kill_in_design(queue_db, start_worker, tmp_path, examples_dir):
    storage_root = tmp_path / "storage"
    worker = start_worker(
        STORAGE_BACKEND="local",
        STORAGE_LOCAL_ROOT=str(storage_root),
        SEAWEED_BUCKET=BUCKET,
        MAX_ATTEMPTS="2",
        LEASE_SECONDS="20",
        WORKER_CORES="2",
    )
    wait_for_workers(queue_db, 1)
    user = queue_db.add_user()
    job_id = str(uuid.uuid4())
    folder = store_job(storage_root, examples_dir, job_id)
    task_id = queue_db.add_task(
        "peptide_optimization", user, f"jobs/peptide_optimization/{job_id}"
    )

    # The assemble checkpoint in storage means design has begun: kill the task process.
    wait_for_file(folder / "work" / "assemble" / "done", timeout=600)
    children = psutil.Process(worker.pid).children(recursive=True)
    assert children, "the worker runs its task in a child process"
    for child in children:
        child.kill()

    row = queue_db.wait_for_status(task_id, {"finished", "failed"}, timeout=600)
    assert row["status"] == "finished", row.get("error")
    result = json.loads((folder / "output" / "result.json").read_text())
    # The second attempt loaded every step up to assemble from storage.
    assert result["resumed_steps"] == ["prepare", "model", "site", "dock", "score", "assemble"]
    assert "dock" not in result["timings"]
    assert "design" in result["timings"]
    assert len(result["results"]) == 2
    # cleanup=True (the default): the checkpoints are gone once the task finished.
    assert not (folder / "work").exists()
