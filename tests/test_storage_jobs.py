"""A job's files in storage: inputs in the platform's layout, outputs and manifest."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from pathlib import Path

import pytest

from peptide_opt.errors import InputError, StorageError
from peptide_opt.settings import Settings
from peptide_opt.storage import (
    ObjectNotFoundError,
    Storage,
    fetch_job_inputs,
    fetch_job_inputs_sync,
    get_storage,
    job_prefix,
    outputs_complete,
    read_manifest,
    store_job_inputs,
    upload_outputs,
    upload_outputs_sync,
)
from peptide_opt.storage.jobs import InvalidManifestError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "5ffg"


@pytest.fixture
def prefix() -> str:
    return job_prefix(f"test-{uuid.uuid4().hex}")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def upload_platform_inputs(storage: Storage, prefix: str) -> None:
    """Lay out the 5ffg example job as the platform uploads it."""
    await storage.upload_file(
        EXAMPLE / "optimization_config.txt", f"{prefix}/optimization_config.txt"
    )
    await storage.upload_file(
        EXAMPLE / "peptide.fasta", f"{prefix}/input/peptide.fasta"
    )
    await storage.upload_file(EXAMPLE / "5ffg.pdb", f"{prefix}/input/5ffg.pdb")


def make_outputs(folder: Path, n_poses: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.csv").write_text("Index,Original sequence affinity score\n")
    (folder / "result.json").write_text('{"results": []}\n')
    for i in range(1, n_poses + 1):
        (folder / f"complex{i}.pdb").write_text(f"REMARK pose {i}\nEND\n")
    return folder


# -- inputs ----------------------------------------------------------------------------


async def test_fetch_platform_layout(object_storage: Storage, prefix, tmp_path):
    await upload_platform_inputs(object_storage, prefix)

    job_dir = await fetch_job_inputs(object_storage, prefix, tmp_path / "job")

    assert job_dir == tmp_path / "job"
    assert sorted(path.name for path in job_dir.iterdir()) == [
        "5ffg.pdb",
        "optimization_config.txt",
        "peptide.fasta",
    ]
    for name in ("5ffg.pdb", "optimization_config.txt", "peptide.fasta"):
        assert sha256_of(job_dir / name) == sha256_of(EXAMPLE / name), name


async def test_fetch_without_config_finds_receptor(object_storage, prefix, tmp_path):
    await object_storage.upload_file(
        EXAMPLE / "peptide.fasta", f"{prefix}/input/peptide.fasta"
    )
    await object_storage.upload_file(
        EXAMPLE / "5ffg.pdb", f"{prefix}/input/receptor.cif"
    )

    job_dir = await fetch_job_inputs(object_storage, prefix, tmp_path / "job")

    assert sorted(path.name for path in job_dir.iterdir()) == [
        "peptide.fasta",
        "receptor.cif",
    ]


async def test_fetch_two_receptors_without_name(object_storage, prefix, tmp_path):
    await object_storage.upload_file(
        EXAMPLE / "peptide.fasta", f"{prefix}/input/peptide.fasta"
    )
    await object_storage.write_text(f"{prefix}/input/a.pdb", "END\n")
    await object_storage.write_text(f"{prefix}/input/b.pdb", "END\n")

    with pytest.raises(
        InputError, match=r"exactly one \*\.pdb or \*\.cif file; found a.pdb, b.pdb"
    ):
        await fetch_job_inputs(object_storage, prefix, tmp_path / "job")


async def test_fetch_no_receptor(object_storage, prefix, tmp_path):
    await object_storage.upload_file(
        EXAMPLE / "peptide.fasta", f"{prefix}/input/peptide.fasta"
    )

    with pytest.raises(InputError, match="found none"):
        await fetch_job_inputs(object_storage, prefix, tmp_path / "job")


async def test_fetch_missing_peptide_names_key(object_storage, prefix, tmp_path):
    await object_storage.upload_file(EXAMPLE / "5ffg.pdb", f"{prefix}/input/5ffg.pdb")

    with pytest.raises(InputError) as caught:
        await fetch_job_inputs(object_storage, prefix, tmp_path / "job")

    assert f"{prefix}/input/peptide.fasta" in str(caught.value)
    assert "missing" in str(caught.value)


async def test_fetch_missing_named_receptor(object_storage, prefix, tmp_path):
    await upload_platform_inputs(object_storage, prefix)
    await object_storage.delete(f"{prefix}/input/5ffg.pdb")
    await object_storage.write_text(f"{prefix}/input/other.pdb", "END\n")

    # The config names 5ffg.pdb: another receptor file is not a stand-in for it.
    with pytest.raises(InputError, match=f"{prefix}/input/5ffg.pdb' is missing"):
        await fetch_job_inputs(object_storage, prefix, tmp_path / "job")


@pytest.mark.parametrize(
    "name", ["../5ffg.pdb", "/etc/passwd", "a\\b.pdb", "peptide.fasta"]
)
async def test_fetch_rejects_receptor_name(object_storage, prefix, tmp_path, name):
    await object_storage.write_text(
        f"{prefix}/optimization_config.txt", f"receptor_pdb_filename={name}\n"
    )

    with pytest.raises(InputError, match="receptor_pdb_filename"):
        await fetch_job_inputs(object_storage, prefix, tmp_path / "job")


async def test_store_then_fetch_inputs(object_storage, prefix, tmp_path):
    config = "n_poses=3\nreceptor_pdb_filename=5ffg.pdb\n"

    keys = await store_job_inputs(
        object_storage, prefix, EXAMPLE / "5ffg.pdb", "GNGVPNLRGDLQVLGQRVGRT", config
    )
    job_dir = await fetch_job_inputs(object_storage, prefix, tmp_path / "job")

    assert keys == [
        f"{prefix}/input/5ffg.pdb",
        f"{prefix}/input/peptide.fasta",
        f"{prefix}/optimization_config.txt",
    ]
    assert (
        job_dir / "peptide.fasta"
    ).read_text() == ">peptide\nGNGVPNLRGDLQVLGQRVGRT\n"
    assert (job_dir / "optimization_config.txt").read_text() == config
    assert sha256_of(job_dir / "5ffg.pdb") == sha256_of(EXAMPLE / "5ffg.pdb")


async def test_store_keeps_fasta_text(object_storage, prefix):
    await store_job_inputs(
        object_storage, prefix, EXAMPLE / "5ffg.pdb", ">mine\nACDE\n"
    )

    assert (
        await object_storage.read_text(f"{prefix}/input/peptide.fasta")
        == ">mine\nACDE\n"
    )
    assert not await object_storage.exists(f"{prefix}/optimization_config.txt")


async def test_store_rejects_mismatched_config(object_storage, prefix):
    with pytest.raises(
        InputError, match="'other.pdb', but the receptor file is '5ffg.pdb'"
    ):
        await store_job_inputs(
            object_storage,
            prefix,
            EXAMPLE / "5ffg.pdb",
            "ACDE",
            "receptor_pdb_filename=other.pdb\n",
        )

    assert await object_storage.list_keys(prefix) == []


async def test_store_rejects_empty_peptide(object_storage, prefix):
    with pytest.raises(InputError, match="empty"):
        await store_job_inputs(object_storage, prefix, EXAMPLE / "5ffg.pdb", "  \n")


# -- outputs ---------------------------------------------------------------------------


async def test_upload_outputs_writes_manifest(object_storage, prefix, tmp_path):
    output_dir = make_outputs(tmp_path / "output")
    (output_dir / "logs").mkdir()
    (output_dir / "logs" / "dock.log").write_text("docking\n")
    # Local checkpoints live in .work/, which is not an output.
    (output_dir / ".work" / "dock").mkdir(parents=True)
    (output_dir / ".work" / "dock" / "poses.pdbqt").write_text("x")

    manifest = await upload_outputs(object_storage, prefix, output_dir)

    names = [
        "complex1.pdb",
        "complex2.pdb",
        "complex3.pdb",
        "logs/dock.log",
        "result.csv",
        "result.json",
    ]
    assert [entry["name"] for entry in manifest["files"]] == names
    for entry in manifest["files"]:
        assert entry["size"] == (output_dir / entry["name"]).stat().st_size
        assert entry["sha256"] == sha256_of(output_dir / entry["name"])
    assert await object_storage.list_keys(f"{prefix}/output") == sorted(
        [f"{prefix}/output/{name}" for name in names]
        + [f"{prefix}/output/manifest.json"]
    )
    assert await read_manifest(object_storage, prefix) == manifest
    assert await outputs_complete(object_storage, prefix) is True


async def test_outputs_incomplete_without_manifest(object_storage, prefix, tmp_path):
    await object_storage.write_text(f"{prefix}/output/result.csv", "Index\n")

    assert await outputs_complete(object_storage, prefix) is False


async def test_pipeline_manifest_uploaded_as_is(object_storage, prefix, tmp_path):
    output_dir = make_outputs(tmp_path / "output")
    pipeline_manifest = {
        "files": [
            {"name": path.name, "size": path.stat().st_size, "sha256": sha256_of(path)}
            for path in sorted(output_dir.iterdir())
        ],
        "task_id": "t-1",
    }
    (output_dir / "manifest.json").write_text(json.dumps(pipeline_manifest))

    manifest = await upload_outputs(object_storage, prefix, output_dir)

    assert manifest == pipeline_manifest
    stored = await object_storage.read_bytes(f"{prefix}/output/manifest.json")
    assert stored == (output_dir / "manifest.json").read_bytes()


async def test_pipeline_manifest_mismatch_fails(object_storage, prefix, tmp_path):
    output_dir = make_outputs(tmp_path / "output")
    listed = output_dir / "result.csv"
    entry = {
        "name": "result.csv",
        "size": listed.stat().st_size,
        "sha256": sha256_of(listed),
    }
    (output_dir / "manifest.json").write_text(json.dumps({"files": [entry]}))
    listed.write_text("Index,changed after the manifest\n")

    with pytest.raises(StorageError, match="'result.csv' does not match manifest.json"):
        await upload_outputs(object_storage, prefix, output_dir)

    assert await outputs_complete(object_storage, prefix) is False


async def test_pipeline_manifest_lists_missing_file(object_storage, prefix, tmp_path):
    output_dir = make_outputs(tmp_path / "output")
    entry = {"name": "complex9.pdb", "size": 1, "sha256": "0" * 64}
    (output_dir / "manifest.json").write_text(json.dumps({"files": [entry]}))

    with pytest.raises(StorageError, match="not in the output folder: complex9.pdb"):
        await upload_outputs(object_storage, prefix, output_dir)

    assert await object_storage.list_keys(prefix) == []


async def test_retried_upload_replaces_outputs(object_storage, prefix, tmp_path):
    await upload_outputs(object_storage, prefix, make_outputs(tmp_path / "first", 3))

    second = make_outputs(tmp_path / "second", 2)
    manifest = await upload_outputs(object_storage, prefix, second)

    # complex3.pdb came from the first attempt only; the second one removes it.
    assert not await object_storage.exists(f"{prefix}/output/complex3.pdb")
    assert [entry["name"] for entry in manifest["files"]] == [
        "complex1.pdb",
        "complex2.pdb",
        "result.csv",
        "result.json",
    ]


async def test_failed_retry_removes_old_manifest(object_storage, prefix, tmp_path):
    await upload_outputs(object_storage, prefix, make_outputs(tmp_path / "first"))
    second = make_outputs(tmp_path / "second")
    entry = {"name": "result.csv", "size": 1, "sha256": "0" * 64}
    (second / "manifest.json").write_text(json.dumps({"files": [entry]}))

    with pytest.raises(StorageError):
        await upload_outputs(object_storage, prefix, second)

    # The first attempt's manifest would vouch for a mix of both attempts' files.
    assert await outputs_complete(object_storage, prefix) is False


async def test_outputs_complete_checks_sizes(object_storage, prefix, tmp_path):
    await upload_outputs(object_storage, prefix, make_outputs(tmp_path / "output"))
    await object_storage.delete(f"{prefix}/output/complex2.pdb")

    assert await outputs_complete(object_storage, prefix) is True
    assert await outputs_complete(object_storage, prefix, check_sizes=True) is False


async def test_upload_outputs_missing_folder(object_storage, prefix, tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        await upload_outputs(object_storage, prefix, tmp_path / "no-such-folder")


async def test_upload_outputs_skips_symlinks(object_storage, prefix, tmp_path):
    output_dir = make_outputs(tmp_path / "output", 1)
    (tmp_path / "private.txt").write_text("not an output")
    (output_dir / "link.txt").symlink_to(tmp_path / "private.txt")

    manifest = await upload_outputs(object_storage, prefix, output_dir)

    assert "link.txt" not in [entry["name"] for entry in manifest["files"]]
    assert not await object_storage.exists(f"{prefix}/output/link.txt")


# -- the synchronous wrappers of the command line ----------------------------------


@pytest.mark.parametrize(
    "backend", ["local", pytest.param("filer", marks=pytest.mark.services)]
)
def test_sync_wrappers_round_trip(request, backend, tmp_path, prefix):
    if backend == "local":
        env = {
            "STORAGE_BACKEND": "local",
            "STORAGE_LOCAL_ROOT": str(tmp_path / "store"),
        }
    else:
        env = request.getfixturevalue("seaweedfs").env(backend)
    settings = Settings.from_env(env)
    config = "receptor_pdb_filename=5ffg.pdb\n"
    local_job = tmp_path / "store" / "astramolecula" / prefix
    if backend == "local":
        (local_job / "input").mkdir(parents=True)
        (local_job / "input" / "5ffg.pdb").write_bytes(
            (EXAMPLE / "5ffg.pdb").read_bytes()
        )
        (local_job / "input" / "peptide.fasta").write_text(">p\nACDE\n")
        (local_job / "optimization_config.txt").write_text(config)
    else:

        async def store() -> None:
            async with get_storage(settings) as storage:
                await store_job_inputs(
                    storage, prefix, EXAMPLE / "5ffg.pdb", "ACDE", config
                )

        asyncio.run(store())

    job_dir = fetch_job_inputs_sync(settings, prefix, tmp_path / "job")
    manifest = upload_outputs_sync(
        settings, prefix, make_outputs(tmp_path / "output", 1)
    )

    assert (job_dir / "5ffg.pdb").is_file()
    assert len(manifest["files"]) == 3


async def test_invalid_manifest_is_incomplete(object_storage, prefix):
    await object_storage.write_text(f"{prefix}/output/result.csv", "Index\n")
    await object_storage.write_text(f"{prefix}/output/manifest.json", '{"files": 3}')

    with pytest.raises(InvalidManifestError, match="no 'files' list"):
        await read_manifest(object_storage, prefix)
    assert await outputs_complete(object_storage, prefix) is False


async def test_manifest_not_json_is_incomplete(object_storage, prefix):
    await object_storage.write_text(f"{prefix}/output/manifest.json", "{trunc")

    with pytest.raises(InvalidManifestError, match="not valid JSON"):
        await read_manifest(object_storage, prefix)
    assert await outputs_complete(object_storage, prefix) is False


async def test_read_manifest_missing_names_key(object_storage, prefix):
    with pytest.raises(ObjectNotFoundError, match=f"{prefix}/output/manifest.json"):
        await read_manifest(object_storage, prefix)
