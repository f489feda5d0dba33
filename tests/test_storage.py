"""The storage interface: the local, Filer and S3 backends pass the same tests."""

from __future__ import annotations

import hashlib
import random
import uuid
from pathlib import Path

import httpx
import pytest

from peptide_opt.errors import StorageError
from peptide_opt.storage import ObjectNotFoundError, Storage
from peptide_opt.storage.filer import FilerStorage
from peptide_opt.storage.local import LocalStorage
from peptide_opt.storage.s3 import MULTIPART_THRESHOLD, PART_SIZE, S3Storage


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses (the SeaweedFS bucket is shared)."""
    return f"tests/{uuid.uuid4().hex}"


def write_random_file(path: Path, size: int, seed: int) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def leftover_temporary_files(folder: Path) -> list[str]:
    return [path.name for path in folder.iterdir() if path.name.endswith(".part")]


async def test_upload_download_round_trip(object_storage: Storage, prefix, tmp_path):
    data = write_random_file(tmp_path / "input.bin", 300_000, seed=1)
    key = f"{prefix}/input/input.bin"

    info = await object_storage.upload_file(tmp_path / "input.bin", key)
    target = await object_storage.download_file(key, tmp_path / "out" / "copy.bin")

    assert info.key == key
    assert info.size == len(data)
    assert info.md5 == hashlib.md5(data).hexdigest()
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert target == tmp_path / "out" / "copy.bin"
    assert target.read_bytes() == data
    assert leftover_temporary_files(target.parent) == []


async def test_large_file_round_trip(object_storage: Storage, prefix, tmp_path):
    # Over the S3 multipart threshold and not a whole number of parts, so S3 sends a
    # short last part. The Filer splits the file into its 4 MB chunks.
    size = MULTIPART_THRESHOLD + PART_SIZE // 2 + 3
    data = write_random_file(tmp_path / "large.bin", size, seed=2)
    key = f"{prefix}/large.bin"

    info = await object_storage.upload_file(tmp_path / "large.bin", key)
    target = await object_storage.download_file(key, tmp_path / "large-copy.bin")

    assert info.size == size
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert await object_storage.size(key) == size
    assert hashlib.sha256(target.read_bytes()).hexdigest() == info.sha256


async def test_empty_file_round_trip(object_storage: Storage, prefix, tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    key = f"{prefix}/empty"

    info = await object_storage.upload_file(tmp_path / "empty", key)
    target = await object_storage.download_file(key, tmp_path / "empty-copy")

    assert info.size == 0
    assert await object_storage.exists(key)
    assert target.read_bytes() == b""


async def test_progress_reports_bytes_sent(object_storage: Storage, prefix, tmp_path):
    size = MULTIPART_THRESHOLD + 1
    write_random_file(tmp_path / "file.bin", size, seed=3)
    reports: list[int] = []

    await object_storage.upload_file(
        tmp_path / "file.bin", f"{prefix}/f", reports.append
    )

    assert reports, "on_progress was never called"
    assert reports == sorted(reports)
    assert reports[-1] == size


async def test_write_and_read_bytes(object_storage: Storage, prefix):
    key = f"{prefix}/small.bin"
    payload = bytes(range(256)) * 4

    info = await object_storage.write_bytes(key, payload)

    assert info.size == 1024
    assert info.md5 == hashlib.md5(payload).hexdigest()
    assert await object_storage.read_bytes(key) == payload


async def test_write_and_read_text(object_storage: Storage, prefix):
    key = f"{prefix}/note.txt"

    await object_storage.write_text(key, "Å and ß\n")

    assert await object_storage.read_text(key) == "Å and ß\n"


async def test_read_text_rejects_binary(object_storage: Storage, prefix):
    key = f"{prefix}/binary"
    await object_storage.write_bytes(key, b"\xff\xfe\x00")

    with pytest.raises(StorageError, match="not UTF-8"):
        await object_storage.read_text(key)


async def test_overwrite_replaces_content(object_storage: Storage, prefix):
    key = f"{prefix}/twice.txt"

    await object_storage.write_text(key, "first version, longer")
    await object_storage.write_text(key, "second")

    assert await object_storage.read_text(key) == "second"
    assert await object_storage.size(key) == 6


async def test_read_bytes_limit(object_storage: Storage, prefix):
    key = f"{prefix}/eleven"
    await object_storage.write_bytes(key, b"x" * 11)

    with pytest.raises(StorageError, match="11 bytes, over the limit of 10"):
        await object_storage.read_bytes(key, max_bytes=10)


async def test_exists_object_folder_missing(object_storage: Storage, prefix):
    await object_storage.write_text(f"{prefix}/folder/file.txt", "x")

    assert await object_storage.exists(f"{prefix}/folder/file.txt") is True
    # A folder of keys is not an object: S3 has no folders, so no backend has them.
    assert await object_storage.exists(f"{prefix}/folder") is False
    assert await object_storage.exists(f"{prefix}/missing.txt") is False


async def test_size_of_object(object_storage: Storage, prefix):
    await object_storage.write_bytes(f"{prefix}/seven", b"1234567")

    assert await object_storage.size(f"{prefix}/seven") == 7


async def test_size_missing_names_key(object_storage: Storage, prefix):
    with pytest.raises(ObjectNotFoundError, match=f"{prefix}/absent"):
        await object_storage.size(f"{prefix}/absent")


async def test_list_keys_nested_sorted(object_storage: Storage, prefix):
    keys = [f"{prefix}/job/b.txt", f"{prefix}/job/a/deep/x.pdb", f"{prefix}/job/a/y"]
    for key in keys:
        await object_storage.write_text(key, key)
    # A sibling whose name starts with the prefix's last segment is not under it.
    await object_storage.write_text(f"{prefix}/jobless/z", "z")

    assert await object_storage.list_keys(f"{prefix}/job") == sorted(keys)
    assert await object_storage.list_keys(f"{prefix}/nothing-here") == []


async def test_list_keys_of_object_is_empty(object_storage: Storage, prefix):
    await object_storage.write_text(f"{prefix}/plain", "x")

    # An object is not a folder, so nothing is under it.
    assert await object_storage.list_keys(f"{prefix}/plain") == []


async def test_delete_key(object_storage: Storage, prefix):
    await object_storage.write_text(f"{prefix}/gone", "x")
    await object_storage.write_text(f"{prefix}/kept", "y")

    await object_storage.delete(f"{prefix}/gone")
    await object_storage.delete(f"{prefix}/never-existed")

    assert await object_storage.exists(f"{prefix}/gone") is False
    assert await object_storage.list_keys(prefix) == [f"{prefix}/kept"]


async def test_delete_prefix_counts_keys(object_storage: Storage, prefix):
    for name in ("a", "b/c", "b/d/e"):
        await object_storage.write_text(f"{prefix}/out/{name}", name)
    await object_storage.write_text(f"{prefix}/outer", "stays")

    deleted = await object_storage.delete_prefix(f"{prefix}/out")

    assert deleted == 3
    assert await object_storage.list_keys(f"{prefix}/out") == []
    assert await object_storage.list_keys(prefix) == [f"{prefix}/outer"]
    assert await object_storage.delete_prefix(f"{prefix}/out") == 0


async def test_download_missing_names_key(object_storage: Storage, prefix, tmp_path):
    existing = tmp_path / "kept.txt"
    existing.write_text("old content")

    with pytest.raises(ObjectNotFoundError) as caught:
        await object_storage.download_file(f"{prefix}/nope.pdb", existing)

    assert f"{prefix}/nope.pdb" in str(caught.value)
    # The failed download neither replaced the file nor left a temporary file.
    assert existing.read_text() == "old content"
    assert leftover_temporary_files(tmp_path) == []


async def test_read_missing_names_key(object_storage: Storage, prefix):
    with pytest.raises(ObjectNotFoundError, match=f"{prefix}/nope.txt"):
        await object_storage.read_bytes(f"{prefix}/nope.txt")


async def test_download_replaces_existing_file(
    object_storage: Storage, prefix, tmp_path
):
    await object_storage.write_text(f"{prefix}/new.txt", "new")
    target = tmp_path / "file.txt"
    target.write_text("older and longer content")

    await object_storage.download_file(f"{prefix}/new.txt", target)

    assert target.read_text() == "new"


async def test_key_with_space_and_unicode(object_storage: Storage, prefix):
    key = f"{prefix}/a b/Å?#%.txt"

    await object_storage.write_text(key, "odd name")

    assert await object_storage.read_text(key) == "odd name"
    assert await object_storage.list_keys(prefix) == [key]


async def test_upload_of_folder_rejected(object_storage: Storage, prefix, tmp_path):
    with pytest.raises(StorageError, match="not a file"):
        await object_storage.upload_file(tmp_path, f"{prefix}/folder")


# -- the same objects through both SeaweedFS APIs and in the local layout --------------


@pytest.mark.services
async def test_filer_object_visible_through_s3(seaweedfs, prefix):
    key = f"{prefix}/input/peptide.fasta"
    async with FilerStorage(seaweedfs.filer_url, seaweedfs.bucket) as filer:
        await filer.write_text(key, ">p\nGNGVPNLRGDLQVLGQRVGRT\n")

    s3_object = seaweedfs.s3_client().get_object(Bucket=seaweedfs.bucket, Key=key)
    assert s3_object["Body"].read() == b">p\nGNGVPNLRGDLQVLGQRVGRT\n"


@pytest.mark.services
async def test_s3_object_visible_through_filer(seaweedfs, prefix, tmp_path):
    key = f"{prefix}/output/result.csv"
    data = write_random_file(tmp_path / "result.csv", MULTIPART_THRESHOLD + 5, seed=4)
    async with S3Storage(
        seaweedfs.s3_url, seaweedfs.bucket, seaweedfs.access_key, seaweedfs.secret_key
    ) as s3:
        await s3.upload_file(tmp_path / "result.csv", key)

    async with httpx.AsyncClient(base_url=seaweedfs.filer_url) as client:
        response = await client.get(f"/buckets/{seaweedfs.bucket}/{key}")
    assert response.status_code == 200
    assert (
        hashlib.sha256(response.content).hexdigest() == hashlib.sha256(data).hexdigest()
    )


@pytest.mark.services
async def test_filer_md5_matches_s3_etag(seaweedfs, prefix, tmp_path):
    data = write_random_file(tmp_path / "x.bin", 100_000, seed=5)
    key = f"{prefix}/x.bin"
    async with FilerStorage(seaweedfs.filer_url, seaweedfs.bucket) as filer:
        info = await filer.upload_file(tmp_path / "x.bin", key)

    head = seaweedfs.s3_client().head_object(Bucket=seaweedfs.bucket, Key=key)
    assert head["ETag"].strip('"') == info.md5 == hashlib.md5(data).hexdigest()
    assert head["ContentLength"] == len(data)


async def test_local_layout_is_bucket_folder(tmp_path):
    async with LocalStorage(tmp_path / "root", "astramolecula") as storage:
        await storage.write_text(
            "jobs/peptide_optimization/j1/input/peptide.fasta", ">p\nAC\n"
        )

    path = tmp_path / "root" / "astramolecula" / "jobs/peptide_optimization/j1/input"
    assert (path / "peptide.fasta").read_text() == ">p\nAC\n"


async def test_local_rejects_symlink_out_of_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    bucket = tmp_path / "root" / "astramolecula"
    bucket.mkdir(parents=True)
    (bucket / "link").symlink_to(outside)

    async with LocalStorage(tmp_path / "root", "astramolecula") as storage:
        with pytest.raises(StorageError, match="resolves outside"):
            await storage.read_text("link/secret.txt")


@pytest.mark.services
@pytest.mark.parametrize("backend", ["filer", "s3"])
async def test_list_keys_follows_pages(seaweedfs, backend, prefix):
    # Two entries per request, so every folder level takes several pages.
    if backend == "filer":
        storage = FilerStorage(seaweedfs.filer_url, seaweedfs.bucket, list_page_size=2)
    else:
        storage = S3Storage(
            seaweedfs.s3_url,
            seaweedfs.bucket,
            seaweedfs.access_key,
            seaweedfs.secret_key,
            list_page_size=2,
        )
    keys = [f"{prefix}/k{i}" for i in range(5)] + [
        f"{prefix}/sub/s{i}" for i in range(3)
    ]
    async with storage:
        for key in keys:
            await storage.write_text(key, key)

        listed = await storage.list_keys(prefix)
        deleted = await storage.delete_prefix(prefix)
        remaining = await storage.list_keys(prefix)

    assert listed == sorted(keys)
    assert deleted == 8
    assert remaining == []
