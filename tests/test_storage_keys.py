"""Key safety: keys that could leave the bucket, or are malformed, reach no backend."""

from __future__ import annotations

import logging

import pytest

from peptide_opt.errors import InputError, StorageError
from peptide_opt.settings import Settings
from peptide_opt.storage import (
    InvalidKeyError,
    RetryPolicy,
    get_storage,
    job_prefix,
    join_key,
    resolve_job_prefix,
    validate_key,
)
from peptide_opt.storage.filer import FilerStorage
from peptide_opt.storage.keys import validate_bucket
from peptide_opt.storage.local import LocalStorage
from peptide_opt.storage.s3 import S3Storage

BAD_KEYS = [
    ("", "non-empty"),
    ("/etc/passwd", "relative"),
    ("jobs/../../etc/passwd", "'..'"),
    ("..", "'..'"),
    ("jobs/./x", "'.'"),
    ("jobs//x", "empty segments"),
    ("jobs/x/", "empty segments"),
    ("jobs\\x", "backslash"),
    ("jobs/x\x00.pdb", "control characters"),
    ("jobs/x\n.pdb", "control characters"),
    ("jobs/x\x7f", "control characters"),
    ("k" * 1025, "at most 1024 bytes"),
    ("é" * 513, "at most 1024 bytes"),
]


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS)
def test_validate_key_rejects(key, reason):
    with pytest.raises(InvalidKeyError) as caught:
        validate_key(key)

    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "key",
    [
        "jobs/peptide_optimization/5f0c/input/5ffg.pdb",
        "a",
        "uploads/user-1/my file (2).pdb",
        "x/..y/z..",
        "k" * 1024,
    ],
)
def test_validate_key_accepts(key):
    assert validate_key(key) == key


def test_invalid_key_is_input_and_storage_error():
    # The command line exits with 2 for it, like any other bad input.
    error = InvalidKeyError("bad key")

    assert isinstance(error, InputError)
    assert isinstance(error, StorageError)
    assert error.exit_code == 2


def test_join_key_validates_result():
    assert join_key("jobs/peptide_optimization/a", "output", "result.csv") == (
        "jobs/peptide_optimization/a/output/result.csv"
    )
    with pytest.raises(InvalidKeyError, match="'..'"):
        join_key("jobs/peptide_optimization/a", "..", "b")
    with pytest.raises(InvalidKeyError, match="empty segments"):
        join_key("jobs/peptide_optimization/a", "")


@pytest.mark.parametrize(
    ("job_dir", "prefix"),
    [
        ("jobs/peptide_optimization/6f1a2b", "jobs/peptide_optimization/6f1a2b"),
        ("jobs/peptide_optimization/6f1a2b/", "jobs/peptide_optimization/6f1a2b"),
        (
            "/tmp/astramolecula/jobs/peptide_optimization/example-5ffg",
            "jobs/peptide_optimization/example-5ffg",
        ),
        ("/srv/jobs/jobs/peptide_optimization/j1", "jobs/peptide_optimization/j1"),
        (
            "jobs/peptide_optimization/0b6e3c1e-8f7a-4f1e-9f57-2d7c41f0a9b3",
            "jobs/peptide_optimization/0b6e3c1e-8f7a-4f1e-9f57-2d7c41f0a9b3",
        ),
    ],
)
def test_resolve_job_prefix(job_dir, prefix):
    assert resolve_job_prefix(job_dir) == prefix


@pytest.mark.parametrize(
    "job_dir",
    [
        "",
        "   ",
        "/tmp/astramolecula/peptide_optimization/j1",
        "jobs/peptide_optimization",
        "/tmp/astramolecula/jobs/peptide_optimization/../../etc",
        "jobs/peptide_optimization/..",
        "jobs/peptide_optimization/.hidden",
        "jobs/peptide_optimization/a\\b",
        "jobs/peptide_optimization/a\x00",
        "jobs/peptide_optimization/j1/input",
    ],
)
def test_resolve_job_prefix_rejects(job_dir):
    with pytest.raises(InvalidKeyError, match="job_dir"):
        resolve_job_prefix(job_dir)


def test_job_prefix_of_task_id():
    task_id = "0b6e3c1e-8f7a-4f1e-9f57-2d7c41f0a9b3"

    assert job_prefix(task_id) == f"jobs/peptide_optimization/{task_id}"


@pytest.mark.parametrize("job_id", ["", "../x", "a/b", ".x", "a..b", "a b", "x" * 129])
def test_job_prefix_rejects(job_id):
    with pytest.raises(InvalidKeyError, match="job id"):
        job_prefix(job_id)


@pytest.mark.parametrize(
    "bucket", ["ab", "Astra", "-astra", "astra-", "a..b", "a_b", ""]
)
def test_bucket_name_rejected(bucket):
    with pytest.raises(InputError, match="SEAWEED_BUCKET"):
        validate_bucket(bucket)


def test_get_storage_rejects_bad_bucket(tmp_path):
    settings = Settings.from_env(
        {"STORAGE_LOCAL_ROOT": str(tmp_path), "SEAWEED_BUCKET": "../up"}
    )

    with pytest.raises(InputError, match="SEAWEED_BUCKET"):
        get_storage(settings)


def test_get_storage_builds_each_backend(tmp_path):
    env = {
        "STORAGE_LOCAL_ROOT": str(tmp_path),
        "SEAWEED_FILER_ENDPOINT": "http://127.0.0.1:1",
        "S3_ENDPOINT": "http://127.0.0.1:2",
    }
    expected = {"local": LocalStorage, "filer": FilerStorage, "s3": S3Storage}

    for backend, cls in expected.items():
        storage = get_storage(Settings.from_env({**env, "STORAGE_BACKEND": backend}))
        assert type(storage) is cls
        assert storage.bucket == "astramolecula"


# Port 1 on loopback has no server: if a bad key reached the network, the call would
# fail with a connection error after the retries instead of the key error.
NO_SERVER = "http://127.0.0.1:1"


@pytest.fixture(params=["local", "filer", "s3"])
async def unreachable_storage(request, tmp_path):
    retry = RetryPolicy(attempts=1)
    if request.param == "local":
        storage = LocalStorage(tmp_path, "astramolecula", retry)
    elif request.param == "filer":
        storage = FilerStorage(NO_SERVER, "astramolecula", retry)
    else:
        storage = S3Storage(NO_SERVER, "astramolecula", "k", "s", retry)
    async with storage:
        yield storage


async def test_every_operation_checks_key(unreachable_storage, tmp_path):
    storage = unreachable_storage
    source = tmp_path / "file.txt"
    source.write_text("x")
    bad = "jobs/../../etc/passwd"
    operations = {
        "upload_file": lambda: storage.upload_file(source, bad),
        "download_file": lambda: storage.download_file(bad, tmp_path / "out"),
        "read_bytes": lambda: storage.read_bytes(bad),
        "read_text": lambda: storage.read_text(bad),
        "write_bytes": lambda: storage.write_bytes(bad, b"x"),
        "exists": lambda: storage.exists(bad),
        "size": lambda: storage.size(bad),
        "list_keys": lambda: storage.list_keys(bad),
        "delete": lambda: storage.delete(bad),
        "delete_prefix": lambda: storage.delete_prefix(bad),
    }

    for name, operation in operations.items():
        with pytest.raises(InvalidKeyError, match="etc/passwd") as caught:
            await operation()
        assert "'..'" in str(caught.value), name


async def test_unreachable_server_error_names_key(tmp_path):
    async with FilerStorage(
        NO_SERVER, "astramolecula", RetryPolicy(attempts=2)
    ) as filer:
        with pytest.raises(StorageError) as caught:
            await filer.read_bytes("jobs/peptide_optimization/j1/input/peptide.fasta")

    message = str(caught.value)
    assert "jobs/peptide_optimization/j1/input/peptide.fasta" in message
    assert "after 2 attempts" in message
    assert "ConnectError" in message


async def test_listing_skips_unsafe_names(tmp_path, caplog):
    # SeaweedFS 4.48 turns '\' into '/' and rejects '..' in S3 keys, but other stores
    # and a local folder keep such names, which must not become local paths.
    folder = tmp_path / "astramolecula" / "jobs" / "j1"
    folder.mkdir(parents=True)
    for name in ("safe.txt", "back\\slash.txt", "new\nline.txt"):
        (folder / name).write_text("x")
    caplog.set_level(logging.WARNING, logger="peptide_opt.storage")

    async with LocalStorage(tmp_path, "astramolecula") as storage:
        listed = await storage.list_keys("jobs/j1")

    assert listed == ["jobs/j1/safe.txt"]
    skipped = [
        r for r in caplog.records if getattr(r, "event", "") == "storage_key_skipped"
    ]
    assert len(skipped) == 2
