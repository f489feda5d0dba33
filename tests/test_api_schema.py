"""Schemathesis against the API's own OpenAPI spec: no 5xx, no response off the spec.

The fuzzer draws task ids and file names from real tasks of the caller part of the time,
so the routes behind a task id run their real code rather than only the 404 branch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_api import submit

pytestmark = pytest.mark.services

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
MAX_EXAMPLES = 40
SEED = 37


def run_schemathesis(
    server, user, task_ids: list[str], file_names: list[str], folder: Path
) -> subprocess.CompletedProcess:
    """Run ``st run`` on the server's spec with the user's key; return the process."""
    config = folder / "schemathesis.toml"
    config.write_text(
        "\n".join(
            [
                "[dictionaries.task_ids]",
                f"values = {json.dumps(task_ids)}",
                "[dictionaries.file_names]",
                f"values = {json.dumps(file_names or ['result.csv'])}",
                "[parameters]",
                '"path.task_id" = { dictionary = "task_ids", probability = 0.6 }',
                '"path.name" = { dictionary = "file_names", probability = 0.6 }',
                "",
            ]
        )
    )
    st = Path(sys.executable).parent / "st"
    return subprocess.run(
        [
            str(st), "--config-file", str(config), "run", f"{server.url}/openapi.json",
            "-H", f"Authorization: Bearer {user.key}",
            "--checks", ",".join(CHECKS),
            "--max-examples", str(MAX_EXAMPLES),
            "--seed", str(SEED),
            "--workers", "1",
            "--request-timeout", "60",
            "--report", "junit", "--report-dir", str(folder / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=folder,
    )


def test_schemathesis_finds_no_violation(api_server, api_users, tmp_path):
    fuzzer = api_users("fuzzer")
    with api_server.client(fuzzer) as client:
        pending = submit(client, "PQQATDD").json()["id"]
        cancelled = submit(client, "PQQATDD").json()["id"]
        assert client.post(f"/v1/tasks/{cancelled}/cancel").status_code == 200
    result = run_schemathesis(api_server, fuzzer, [pending, cancelled], [], tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
