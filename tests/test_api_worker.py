"""Tasks submitted through the API and run to the end by a real worker process.

The job is 1CZY (TRAF2 with its peptide PQQATDD; chain B marks the site) with small
settings, 2 poses and 2 designs per pose, so that one run takes a few minutes on
two cores. The client commands drive it as a user would.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys

import pytest

from tests.fixtures.api import wait_for_status
from tests.test_api import COMPLEX, fetch_rows, storage_call, submit
from tests.test_api_schema import run_schemathesis

pytestmark = [pytest.mark.services, pytest.mark.slow]

PEPTIDE = os.fspath(COMPLEX.parent / "peptide.fasta")
#: Upper bound (s) for the small 1CZY job on a loaded two-core machine.
JOB_TIMEOUT_S = 900
STEPS_WITH_TIMINGS = ("prepare", "model", "site", "dock", "score", "assemble", "design")


def run_client(
    server, user, *args: str, timeout: float = 120, cwd=None
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PEPTIDE_OPT_URL": server.url,
        "PEPTIDE_OPT_KEY": user.key,
    }
    return subprocess.run(
        [sys.executable, "-m", "peptide_opt.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def test_task_runs_end_to_end(api_server, api_users, api_worker, database_url, tmp_path):
    user = api_users("end-to-end")
    worker = api_worker()

    # The server accepts no space in a file name, so the client sends another name.
    receptor = tmp_path / "my receptor.pdb"
    receptor.write_bytes(COMPLEX.read_bytes())
    submitted = run_client(
        api_server, user, "submit", "--receptor", str(receptor), "--peptide", PEPTIDE,
        "--poses", "2", "--designs", "2", "--site-chain", "B",
    )
    assert submitted.returncode == 0, submitted.stderr
    assert "is sent as 'my_receptor.pdb'" in submitted.stderr
    task_id = submitted.stdout.strip()
    waited = run_client(
        api_server, user, "wait", task_id, "--interval", "2",
        "--timeout", str(JOB_TIMEOUT_S), timeout=JOB_TIMEOUT_S + 60,
    )
    assert waited.returncode == 0, waited.stdout + waited.stderr + worker.log_tail()
    assert "status:   finished" in waited.stdout

    with api_server.client(user) as client:
        task = client.get(f"/v1/tasks/{task_id}").json()
        result = client.get(f"/v1/tasks/{task_id}/result")
        csv_file = client.get(f"/v1/tasks/{task_id}/files/result.csv")
        complex_file = client.get(f"/v1/tasks/{task_id}/files/complex1.pdb")
        outside = client.get(f"/v1/tasks/{task_id}/files/../optimization_config.txt")
        not_listed = client.get(f"/v1/tasks/{task_id}/files/input/peptide.fasta")
        metrics = client.get("/metrics").text.splitlines()

    assert task["status"] == "finished"
    assert task["progress"] == 100
    assert task["attempts"] == 1
    assert task["error"] is None
    for step in STEPS_WITH_TIMINGS:
        assert task["step_timings"][step] >= 0, step
    # Timings come in pipeline order, whatever order the JSONB column keeps.
    assert list(task["step_timings"])[:4] == ["prepare", "model", "site", "dock"]
    for name in ("result.csv", "result.json", "complex1.pdb", "complex2.pdb"):
        assert name in task["files"], name

    assert result.status_code == 200
    document = result.json()
    # One platform row per pose, in rank order.
    assert [row["rank"] for row in document["results"]] == [1, 2]
    assert document["results"][0]["originalSequence"] == "PQQATDD"
    # Vina affinities of a bound peptide are negative (kcal/mol).
    assert document["results"][0]["originalSequenceAffinityScore"] < 0
    for pose in document["poses"]:
        assert 1 <= len(pose["designs"]) <= 2
        for design in pose["designs"]:
            assert design["score"] > 0

    rows = list(csv.reader(io.StringIO(csv_file.text)))
    assert rows[0][0] == "Index"
    assert [row[0] for row in rows[1:]] == [
        "Input peptide property", "Docking result rank 1", "Docking result rank 2",
    ]

    manifest = storage_call(
        api_server.env, "read_text", f"{task['job_dir']}/output/manifest.json"
    )
    digests = {entry["name"]: entry["sha256"] for entry in json.loads(manifest)["files"]}
    assert complex_file.status_code == 200
    assert hashlib.sha256(complex_file.content).hexdigest() == digests["complex1.pdb"]
    # Only names listed in manifest.json are served.
    assert outside.status_code == 404
    assert not_listed.status_code == 404

    assert 'peptide_opt_tasks{status="finished"} 1.0' in metrics
    assert "peptide_opt_task_duration_seconds_count 1.0" in metrics
    assert 'peptide_opt_finished_step_tasks{step="dock"} 1.0' in metrics
    live = [line for line in metrics if line.startswith("peptide_opt_live_workers{")]
    assert sum(float(line.split()[-1]) for line in live) >= 1

    # Without --output-dir, each task's files go to a folder of their own.
    output_dir = tmp_path / "output" / task_id
    downloaded = run_client(api_server, user, "download", task_id, cwd=tmp_path)
    assert downloaded.returncode == 0, downloaded.stderr
    stored = storage_call(
        api_server.env, "read_text", f"{task['job_dir']}/optimization_config.txt"
    )
    assert "receptor_pdb_filename=my_receptor.pdb" in stored.splitlines()
    for name, sha256 in digests.items():
        path = output_dir / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256, name

    # With a finished task to read, the fuzzer reaches the result and file routes.
    fuzzed = run_schemathesis(
        api_server, user, [task_id], sorted(digests), tmp_path
    )
    assert fuzzed.returncode == 0, fuzzed.stdout[-6000:]

    rows = fetch_rows(database_url, "SELECT status FROM tasks WHERE id = $1", task_id)
    if rows and rows[0]["status"] == "finished":
        with api_server.client(user) as client:
            assert client.delete(f"/v1/tasks/{task_id}").status_code == 204
    assert storage_call(api_server.env, "list_keys", task["job_dir"]) == []


def test_cancel_processing_task(api_server, api_users, api_worker):
    user = api_users("canceller")
    worker = api_worker()
    with api_server.client(user) as client:
        response = submit(client, n_poses="2", num_seq_per_target="2", site_chain="B")
        task_id = response.json()["id"]
        wait_for_status(client, task_id, ("processing",), 120, worker)
        requested = client.post(f"/v1/tasks/{task_id}/cancel")
        assert requested.status_code == 200
        assert requested.json()["cancel_requested"] is True
        task = wait_for_status(client, task_id, ("cancelled",), 120, worker)
        again = client.post(f"/v1/tasks/{task_id}/cancel")
    assert task["finished_at"] is not None
    assert again.status_code == 409
