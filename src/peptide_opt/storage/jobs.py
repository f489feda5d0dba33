"""A job's files in storage: fetching its inputs, storing them, uploading its outputs.

The layout is the platform's, under a job prefix ``jobs/peptide_optimization/<id>``::

    PREFIX/optimization_config.txt
    PREFIX/input/peptide.fasta
    PREFIX/input/<receptor_pdb_filename>
    PREFIX/output/<every output file>
    PREFIX/output/manifest.json        (written last)

A task's outputs are complete only when ``PREFIX/output/manifest.json`` exists.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peptide_opt.config import parse_config_text, parse_file_name
from peptide_opt.errors import InputError, StorageError
from peptide_opt.settings import Settings
from peptide_opt.storage.base import (
    ObjectInfo,
    ObjectNotFoundError,
    Storage,
    log_event,
)
from peptide_opt.storage.factory import get_storage
from peptide_opt.storage.keys import join_key, validate_key

CONFIG_NAME = "optimization_config.txt"
PEPTIDE_NAME = "peptide.fasta"
MANIFEST_NAME = "manifest.json"
RECEPTOR_SUFFIXES = (".pdb", ".cif")

#: Output files uploaded at the same time.
UPLOAD_CONCURRENCY = 4


class InvalidManifestError(StorageError):
    """A manifest.json that is not JSON or does not list files with size and sha256."""


#: Called with an output's key and the bytes of it sent so far.
OutputProgress = Callable[[str, int], None]


# -- inputs ----------------------------------------------------------------------------


async def fetch_job_inputs(storage: Storage, prefix: str, dest_dir: Path | str) -> Path:
    """Download a job's inputs into the flat job folder ``dest_dir`` and return it.

    The folder receives ``peptide.fasta``, the receptor and, when the job has one,
    ``optimization_config.txt``. The receptor is the file the config names in
    ``receptor_pdb_filename``, or else the only ``*.pdb`` or ``*.cif`` under
    ``PREFIX/input/``. A missing input raises :class:`InputError` naming its key.
    """
    prefix = validate_key(prefix, "job prefix")
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)

    receptor_name = await _fetch_config(storage, prefix, dest_dir)
    await _fetch_input(storage, join_key(prefix, "input", PEPTIDE_NAME), dest_dir)

    if receptor_name is None:
        receptor_name = await _find_receptor(storage, prefix)
    await _fetch_input(storage, join_key(prefix, "input", receptor_name), dest_dir)
    return dest_dir


async def _fetch_config(storage: Storage, prefix: str, dest_dir: Path) -> str | None:
    """Download the optional config; return the receptor file name it sets, if any."""
    key = join_key(prefix, CONFIG_NAME)
    path = dest_dir / CONFIG_NAME
    try:
        await storage.download_file(key, path)
    except ObjectNotFoundError:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"job config {key!r} is not UTF-8 text: {error}") from error
    name = parse_config_text(text, source=key).get("receptor_pdb_filename", "")
    if not name:
        return None
    name = parse_file_name("receptor_pdb_filename", name)
    if name in (PEPTIDE_NAME, CONFIG_NAME):
        raise InputError(
            f"receptor_pdb_filename must name the receptor file, got {name!r}"
        )
    return name


async def _fetch_input(storage: Storage, key: str, dest_dir: Path) -> Path:
    name = key.rsplit("/", 1)[-1]
    try:
        return await storage.download_file(key, dest_dir / name)
    except ObjectNotFoundError as error:
        raise InputError(f"job input {key!r} is missing from storage") from error


async def _find_receptor(storage: Storage, prefix: str) -> str:
    """Return the name of the only receptor file under ``PREFIX/input/``."""
    input_prefix = join_key(prefix, "input")
    names = [
        key[len(input_prefix) + 1 :] for key in await storage.list_keys(input_prefix)
    ]
    candidates = [
        name
        for name in names
        if "/" not in name and name.lower().endswith(RECEPTOR_SUFFIXES)
    ]
    if len(candidates) != 1:
        found = ", ".join(candidates) if candidates else "none"
        raise InputError(
            f"job {prefix!r} sets no receptor_pdb_filename, so {input_prefix}/ must "
            f"contain exactly one *.pdb or *.cif file; found {found}"
        )
    return parse_file_name("receptor file name", candidates[0])


async def store_job_inputs(
    storage: Storage,
    prefix: str,
    receptor_path: Path | str,
    peptide_text: str,
    config_text: str | None = None,
) -> list[str]:
    """Write a job's inputs in the platform's layout; return the keys written.

    ``peptide_text`` is FASTA or a bare sequence (stored as a one-record FASTA). The
    receptor keeps its file name, which must be a plain file name, and a config that
    names a different ``receptor_pdb_filename`` is rejected.
    """
    prefix = validate_key(prefix, "job prefix")
    receptor_path = Path(receptor_path)
    receptor_name = parse_file_name("receptor file name", receptor_path.name)
    if receptor_name in (PEPTIDE_NAME, CONFIG_NAME):
        raise InputError(f"receptor file name must not be {receptor_name!r}")
    if config_text is not None:
        named = parse_config_text(config_text).get("receptor_pdb_filename", "")
        if named and named != receptor_name:
            raise InputError(
                f"receptor_pdb_filename in the config is {named!r}, but the receptor "
                f"file is {receptor_name!r}"
            )

    receptor_key = join_key(prefix, "input", receptor_name)
    peptide_key = join_key(prefix, "input", PEPTIDE_NAME)
    await storage.upload_file(receptor_path, receptor_key)
    await storage.write_text(peptide_key, _as_fasta(peptide_text))
    keys = [receptor_key, peptide_key]
    if config_text is not None:
        config_key = join_key(prefix, CONFIG_NAME)
        await storage.write_text(config_key, config_text)
        keys.append(config_key)
    return keys


def _as_fasta(peptide_text: str) -> str:
    text = peptide_text.strip()
    if not text:
        raise InputError("peptide must be a sequence or FASTA text, got an empty text")
    if not text.startswith(">"):
        text = f">peptide\n{text}"
    return text + "\n"


# -- outputs ---------------------------------------------------------------------------


async def upload_outputs(
    storage: Storage,
    prefix: str,
    output_dir: Path | str,
    on_progress: OutputProgress | None = None,
) -> dict[str, Any]:
    """Upload every output file to ``PREFIX/output/`` and then, last, the manifest.

    A ``manifest.json`` already in ``output_dir`` is checked against the bytes sent
    (size and SHA-256 of every file it lists) and uploaded as it is. Without one, a
    manifest is written. A manifest left by an earlier attempt is deleted first. Outputs
    of an earlier attempt that this one lacks are deleted before the new manifest.
    Hidden files and folders (names starting with ``.``, such as ``.work/``) and
    symbolic links are skipped. Returns the manifest.
    """
    started = time.monotonic()
    prefix = validate_key(prefix, "job prefix")
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise StorageError(f"output folder {str(output_dir)!r} does not exist")
    output_prefix = join_key(prefix, "output")
    manifest_key = join_key(output_prefix, MANIFEST_NAME)

    names = _output_names(output_dir)
    local_manifest = output_dir / MANIFEST_NAME
    listed = _read_local_manifest(local_manifest) if local_manifest.is_file() else None
    if listed is not None:
        _check_listed_files_exist(local_manifest, listed, names)

    # Until the new manifest is written, the outputs must not look complete.
    await storage.delete(manifest_key)
    uploaded = await _upload_files(
        storage, output_prefix, output_dir, names, on_progress
    )
    if listed is not None:
        _check_against_manifest(local_manifest, listed, uploaded)
    await _delete_stale_outputs(storage, output_prefix, set(uploaded) | {MANIFEST_NAME})

    if listed is not None:
        await storage.upload_file(local_manifest, manifest_key)
        manifest = json.loads(local_manifest.read_text(encoding="utf-8"))
    else:
        manifest = build_manifest(uploaded)
        await storage.write_text(manifest_key, json.dumps(manifest, indent=2) + "\n")

    log_event(
        logging.INFO,
        "storage_outputs_uploaded",
        f"uploaded {len(uploaded)} outputs and the manifest to {output_prefix}/",
        prefix=prefix,
        n_files=len(uploaded),
        n_bytes=sum(info.size for info in uploaded.values()),
        duration_s=round(time.monotonic() - started, 3),
    )
    return manifest


def _output_names(output_dir: Path) -> list[str]:
    """Return the relative paths of the files to upload, without the manifest."""
    names = []
    for path in sorted(output_dir.rglob("*")):
        relative = path.relative_to(output_dir)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_symlink() or not path.is_file():
            continue
        if relative.as_posix() == MANIFEST_NAME:
            continue
        names.append(relative.as_posix())
    return names


async def _upload_files(
    storage: Storage,
    output_prefix: str,
    output_dir: Path,
    names: list[str],
    on_progress: OutputProgress | None,
) -> dict[str, ObjectInfo]:
    limit = asyncio.Semaphore(UPLOAD_CONCURRENCY)

    async def upload(name: str) -> ObjectInfo:
        key = join_key(output_prefix, name)

        def progress(sent: int) -> None:
            if on_progress is not None:
                on_progress(key, sent)

        async with limit:
            return await storage.upload_file(output_dir / name, key, progress)

    infos = await asyncio.gather(*(upload(name) for name in names))
    return dict(zip(names, infos))


async def _delete_stale_outputs(
    storage: Storage, output_prefix: str, keep: set[str]
) -> None:
    for key in await storage.list_keys(output_prefix):
        if key[len(output_prefix) + 1 :] not in keep:
            await storage.delete(key)


def build_manifest(uploaded: dict[str, ObjectInfo]) -> dict[str, Any]:
    """Return the manifest of uploaded outputs: every file's name, size and SHA-256."""
    return {
        "created_at": datetime.datetime.now(datetime.UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        ),
        "files": [
            {"name": name, "size": info.size, "sha256": info.sha256}
            for name, info in sorted(uploaded.items())
        ],
    }


def manifest_entries(manifest: Any, source: str) -> dict[str, tuple[int, str]]:
    """Return ``{name: (size, sha256)}`` from a manifest.

    ``files`` is a list of ``{"name" (or "path"), "size", "sha256"}`` objects or a
    mapping of names to ``{"size", "sha256"}``.
    """
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(files, dict):
        files = [
            {"name": name, **entry} if isinstance(entry, dict) else entry
            for name, entry in files.items()
        ]
    if not isinstance(files, list):
        raise InvalidManifestError(f"{source} has no 'files' list")
    entries = {}
    for entry in files:
        try:
            name = entry.get("name") or entry["path"]
            entries[str(name)] = (int(entry["size"]), str(entry["sha256"]).lower())
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise InvalidManifestError(
                f"{source} has an invalid entry {entry!r}: each needs name, size and "
                "sha256"
            ) from error
    return entries


def _read_local_manifest(path: Path) -> dict[str, tuple[int, str]]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise InvalidManifestError(
            f"{str(path)!r} is not valid JSON: {error}"
        ) from error
    return manifest_entries(manifest, str(path))


def _check_listed_files_exist(
    manifest_path: Path, listed: dict[str, tuple[int, str]], names: list[str]
) -> None:
    missing = sorted(set(listed) - set(names))
    if missing:
        raise StorageError(
            f"{str(manifest_path)!r} lists {len(missing)} files that are not in the "
            f"output folder: {', '.join(missing[:10])}"
        )
    unlisted = sorted(set(names) - set(listed))
    if unlisted:
        log_event(
            logging.WARNING,
            "storage_outputs_unlisted",
            f"{len(unlisted)} output files are not in {manifest_path.name} and are "
            f"uploaded anyway: {', '.join(unlisted[:10])}",
            n_files=len(unlisted),
        )


def _check_against_manifest(
    manifest_path: Path,
    listed: dict[str, tuple[int, str]],
    uploaded: dict[str, ObjectInfo],
) -> None:
    for name, (size, sha256) in listed.items():
        info = uploaded[name]
        if info.size != size or info.sha256 != sha256:
            raise StorageError(
                f"output {name!r} does not match {manifest_path.name}: it lists "
                f"{size} bytes with SHA-256 {sha256}, the file sent has {info.size} "
                f"bytes with SHA-256 {info.sha256}"
            )


async def read_manifest(storage: Storage, prefix: str) -> dict[str, Any]:
    """Return a task's uploaded manifest; raises :class:`StorageError` when missing."""
    key = join_key(validate_key(prefix, "job prefix"), "output", MANIFEST_NAME)
    data = await storage.read_bytes(key)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except ValueError as error:
        raise InvalidManifestError(f"{key!r} is not valid JSON: {error}") from error
    manifest_entries(manifest, key)
    return manifest


async def outputs_complete(
    storage: Storage, prefix: str, check_sizes: bool = False
) -> bool:
    """Tell whether a task's outputs are complete, that is, a valid manifest exists.

    With ``check_sizes``, every file the manifest lists must also exist in storage
    with the listed size. A manifest that is not valid JSON, or lists no files, counts
    as incomplete and is logged.
    """
    try:
        manifest = await read_manifest(storage, prefix)
    except ObjectNotFoundError:
        return False
    except InvalidManifestError as error:
        log_event(
            logging.WARNING,
            "storage_manifest_invalid",
            f"outputs under {prefix} count as incomplete: {error}",
            prefix=prefix,
        )
        return False
    if not check_sizes:
        return True
    output_prefix = join_key(prefix, "output")
    for name, (size, _) in manifest_entries(manifest, MANIFEST_NAME).items():
        try:
            if await storage.size(join_key(output_prefix, name)) != size:
                return False
        except ObjectNotFoundError:
            return False
    return True


# -- synchronous wrappers for the command line -----------------------------------------


def fetch_job_inputs_sync(
    settings: Settings, prefix: str, dest_dir: Path | str
) -> Path:
    """Run :func:`fetch_job_inputs` with the settings' backend in a new event loop."""

    async def run() -> Path:
        async with get_storage(settings) as storage:
            return await fetch_job_inputs(storage, prefix, dest_dir)

    return asyncio.run(run())


def upload_outputs_sync(
    settings: Settings, prefix: str, output_dir: Path | str
) -> dict[str, Any]:
    """Run :func:`upload_outputs` with the settings' backend in a new event loop."""

    async def run() -> dict[str, Any]:
        async with get_storage(settings) as storage:
            return await upload_outputs(storage, prefix, output_dir)

    return asyncio.run(run())
