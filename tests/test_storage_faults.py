"""Storage faults against real SeaweedFS servers: stopped, killed, objects deleted.

Also checks that transfers stream: a 200 MB upload or download must not raise peak
memory by more than 50 MB over a 1 MB one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import botocore.exceptions
import httpx
import pytest

from peptide_opt.errors import InputError, StorageError
from peptide_opt.storage import (
    ObjectNotFoundError,
    RetryPolicy,
    Storage,
    fetch_job_inputs,
    job_prefix,
    outputs_complete,
    store_job_inputs,
    upload_outputs,
)
from peptide_opt.storage.base import TransientStorageError
from peptide_opt.storage.filer import FilerStorage, _raise_for_server_error
from peptide_opt.storage.s3 import S3Storage

pytestmark = pytest.mark.services

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "5ffg"

#: Short waits keep the fault tests quick; 3 attempts wait 0.05 + 0.1 s in total.
FAST_RETRY = RetryPolicy(attempts=3, base_delay_s=0.05)

MIB = 1024 * 1024


def build_storage(server, backend: str, retry: RetryPolicy = FAST_RETRY) -> Storage:
    if backend == "filer":
        return FilerStorage(server.filer_url, server.bucket, retry)
    return S3Storage(
        server.s3_url, server.bucket, server.access_key, server.secret_key, retry
    )


def make_outputs(folder: Path, large_bytes: int = 0) -> Path:
    folder.mkdir(parents=True)
    (folder / "result.csv").write_text("Index,Original sequence affinity score\n")
    (folder / "complex1.pdb").write_text("REMARK pose 1\nEND\n")
    if large_bytes:
        (folder / "complex2.pdb").write_bytes(random.Random(11).randbytes(large_bytes))
    return folder


async def filer_delete(server, key: str) -> None:
    """Delete a key through the Filer HTTP API, without our storage layer."""
    async with httpx.AsyncClient(base_url=server.filer_url) as client:
        response = await client.delete(f"/buckets/{server.bucket}/{key}")
    response.raise_for_status()


def retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if getattr(record, "event", "") == "storage_retry"
    ]


@pytest.mark.parametrize("backend", ["filer", "s3"])
async def test_stopped_server_fails_after_retries(
    seaweedfs_factory, backend, tmp_path, caplog
):
    server = seaweedfs_factory()
    prefix = job_prefix("stopped-before")
    output_dir = make_outputs(tmp_path / "output")
    async with build_storage(server, backend) as storage:
        await storage.write_text(f"{prefix}/input/peptide.fasta", ">p\nACDE\n")
    server.stop()
    caplog.set_level(logging.WARNING, logger="peptide_opt.storage")

    async with build_storage(server, backend) as storage:
        with pytest.raises(StorageError) as caught:
            await upload_outputs(storage, prefix, output_dir)

    message = str(caught.value)
    assert f"{prefix}/output/" in message
    assert "failed after 3 attempts" in message
    # Two retries, each logged, before the third and last attempt fails.
    assert len(retry_records(caplog)) == 2

    server.start()
    async with build_storage(server, backend) as storage:
        assert await outputs_complete(storage, prefix) is False
        # The restarted server kept what was written before the stop.
        assert await storage.list_keys(prefix) == [f"{prefix}/input/peptide.fasta"]


@pytest.mark.parametrize("backend", ["filer", "s3"])
async def test_server_killed_during_upload(seaweedfs_factory, backend, tmp_path):
    server = seaweedfs_factory()
    prefix = job_prefix("killed-during")
    async with build_storage(server, backend) as storage:
        # A complete earlier attempt: its manifest must not survive the failed one.
        await upload_outputs(storage, prefix, make_outputs(tmp_path / "first"))
        assert await outputs_complete(storage, prefix) is True

        # 40 MiB: S3 sends it as a multipart upload, the Filer as one stream.
        output_dir = make_outputs(tmp_path / "second", large_bytes=40 * MIB)
        sent_when_killed: list[int] = []

        def kill_after_8_mib(key: str, sent: int) -> None:
            if (
                key.endswith("complex2.pdb")
                and sent >= 8 * MIB
                and not sent_when_killed
            ):
                sent_when_killed.append(sent)
                server.kill()

        with pytest.raises(StorageError) as caught:
            await upload_outputs(
                storage, prefix, output_dir, on_progress=kill_after_8_mib
            )

    assert sent_when_killed, "the server was never killed: the upload did not stream"
    assert f"{prefix}/output/complex2.pdb" in str(caught.value)
    assert "failed after 3 attempts" in str(caught.value)

    server.start()
    async with build_storage(server, backend) as storage:
        assert await outputs_complete(storage, prefix) is False
        assert not await storage.exists(f"{prefix}/output/manifest.json")
        # The restarted server kept the files written before the kill.
        assert await storage.read_text(f"{prefix}/output/complex1.pdb") == (
            "REMARK pose 1\nEND\n"
        )


@pytest.mark.parametrize("backend", ["filer", "s3"])
async def test_upload_recovers_after_restart(
    seaweedfs_factory, backend, tmp_path, caplog
):
    server = seaweedfs_factory()
    prefix = job_prefix("back-again")
    output_dir = make_outputs(tmp_path / "output")
    server.stop()
    caplog.set_level(logging.WARNING, logger="peptide_opt.storage")
    # Waits of 0.5, 1 and then 2 s: about 11 s in all, longer than a restart (4 s).
    patient = RetryPolicy(attempts=8, base_delay_s=0.5, max_delay_s=2.0)

    async with build_storage(server, backend, patient) as storage:
        upload = asyncio.create_task(upload_outputs(storage, prefix, output_dir))
        await asyncio.to_thread(server.start)
        manifest = await upload

        assert await outputs_complete(storage, prefix, check_sizes=True) is True
        assert await storage.read_text(f"{prefix}/output/result.csv") == (
            "Index,Original sequence affinity score\n"
        )
    assert [entry["name"] for entry in manifest["files"]] == [
        "complex1.pdb",
        "result.csv",
    ]
    assert len(retry_records(caplog)) >= 1


async def test_download_after_s3_delete_names_key(seaweedfs, tmp_path):
    key = f"tests/{uuid.uuid4().hex}/input/5ffg.pdb"
    async with FilerStorage(seaweedfs.filer_url, seaweedfs.bucket, FAST_RETRY) as filer:
        await filer.upload_file(EXAMPLE / "5ffg.pdb", key)
        seaweedfs.s3_client().delete_object(Bucket=seaweedfs.bucket, Key=key)

        with pytest.raises(ObjectNotFoundError) as caught:
            await filer.download_file(key, tmp_path / "5ffg.pdb")

    assert key in str(caught.value)
    assert not (tmp_path / "5ffg.pdb").exists()


async def test_download_after_filer_delete_names_key(seaweedfs, tmp_path):
    key = f"tests/{uuid.uuid4().hex}/output/result.csv"
    async with build_storage(seaweedfs, "s3") as s3:
        await s3.write_text(key, "Index\n")
        await filer_delete(seaweedfs, key)

        with pytest.raises(ObjectNotFoundError) as caught:
            await s3.download_file(key, tmp_path / "result.csv")

    assert key in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("backend", ["filer", "s3"])
async def test_fetch_after_receptor_deleted(seaweedfs, backend, tmp_path):
    prefix = job_prefix(f"deleted-{uuid.uuid4().hex}")
    async with build_storage(seaweedfs, backend) as storage:
        await store_job_inputs(
            storage,
            prefix,
            EXAMPLE / "5ffg.pdb",
            "GNGVPNLRGDLQVLGQRVGRT",
            "receptor_pdb_filename=5ffg.pdb\n",
        )
        # Deleted through the other API, as an operator or a retention job would.
        if backend == "filer":
            seaweedfs.s3_client().delete_object(
                Bucket=seaweedfs.bucket, Key=f"{prefix}/input/5ffg.pdb"
            )
        else:
            await filer_delete(seaweedfs, f"{prefix}/input/5ffg.pdb")

        with pytest.raises(InputError, match=f"'{prefix}/input/5ffg.pdb' is missing"):
            await fetch_job_inputs(storage, prefix, tmp_path / "job")


# -- which failures are retried ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retried"), [(500, True), (503, True), (404, False), (400, False)]
)
def test_filer_status_retried(status, retried):
    response = httpx.Response(status, text="status text")

    if retried:
        with pytest.raises(TransientStorageError, match=f"HTTP {status}"):
            _raise_for_server_error(response)
    else:
        _raise_for_server_error(response)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (500, "InternalError", TransientStorageError),
        (503, "SlowDown", TransientStorageError),
        (404, "NoSuchKey", ObjectNotFoundError),
        (403, "AccessDenied", StorageError),
    ],
)
def test_s3_error_classified(status, code, expected):
    error = botocore.exceptions.ClientError(
        {
            "Error": {"Code": code, "Message": code},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "GetObject",
    )
    storage = S3Storage("http://127.0.0.1:1", "astramolecula")

    mapped = storage._client_error("jobs/x/key", error)

    assert type(mapped) is expected
    if expected is not TransientStorageError:
        assert "jobs/x/key" in str(mapped)


async def test_s3_wrong_secret_not_retried(seaweedfs, caplog):
    caplog.set_level(logging.WARNING, logger="peptide_opt.storage")
    async with S3Storage(
        seaweedfs.s3_url,
        seaweedfs.bucket,
        seaweedfs.access_key,
        "wrong-secret",
        FAST_RETRY,
    ) as storage:
        with pytest.raises(
            StorageError, match="S3 rejected the request for 'tests/denied'"
        ):
            await storage.write_text("tests/denied", "x")

    assert retry_records(caplog) == []


# -- memory while streaming --------------------------------------------------------

PROBE = """
import asyncio, json, resource, sys
from pathlib import Path
from peptide_opt.settings import Settings
from peptide_opt.storage import get_storage

async def transfer(env, operation, path, key):
    async with get_storage(Settings.from_env(env)) as storage:
        await storage.ensure_bucket()
        if operation == "upload":
            await storage.upload_file(path, key)
        else:
            await storage.download_file(key, path)

env = json.loads(sys.argv[1])
asyncio.run(transfer(env, sys.argv[2], Path(sys.argv[3]), sys.argv[4]))
print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

#: Allowed rise in peak resident memory from a 1 MB to a 200 MB transfer, in MiB.
MAX_EXTRA_MIB = 50


def peak_rss_mib(env: dict, operation: str, path: Path, key: str) -> float:
    """Run one transfer in a fresh Python and return its peak resident memory in MiB."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(env), operation, str(path), key],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_kib"] / 1024


@pytest.fixture(scope="module")
def transfer_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("transfer-files")
    files = {}
    for label, size in (("1MB", 1_000_000), ("200MB", 200_000_000)):
        path = folder / f"{label}.bin"
        generator = random.Random(size)
        with open(path, "wb") as handle:
            handle.writelines(
                generator.randbytes(1_000_000) for _ in range(size // 1_000_000)
            )
        files[label] = path
    return files


@pytest.mark.parametrize(
    "backend",
    [pytest.param("local", marks=pytest.mark.services), "filer", "s3"],
)
def test_200mb_transfer_streams(seaweedfs, backend, transfer_files, tmp_path):
    env = seaweedfs.env(backend, local_root=tmp_path / "store")
    prefix = f"tests/{uuid.uuid4().hex}"
    peaks = {}
    for label, path in transfer_files.items():
        key = f"{prefix}/{label}.bin"
        peaks[f"upload {label}"] = peak_rss_mib(env, "upload", path, key)
        copy = tmp_path / f"{label}-copy.bin"
        peaks[f"download {label}"] = peak_rss_mib(env, "download", copy, key)
        assert copy.stat().st_size == path.stat().st_size

    summary = ", ".join(f"{name} {value:.0f} MiB" for name, value in peaks.items())
    assert peaks["upload 200MB"] - peaks["upload 1MB"] <= MAX_EXTRA_MIB, summary
    assert peaks["download 200MB"] - peaks["download 1MB"] <= MAX_EXTRA_MIB, summary
