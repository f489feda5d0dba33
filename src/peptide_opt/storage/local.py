"""The local-folder backend: the bucket is the folder ``<root>/<bucket>/``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

from peptide_opt.errors import StorageError
from peptide_opt.storage.base import (
    CHUNK_SIZE,
    DownloadTarget,
    FileDigest,
    ObjectInfo,
    ProgressCallback,
    RetryPolicy,
    Storage,
    is_temporary_name,
    not_found,
    open_temporary_file,
    too_large,
)


class LocalStorage(Storage):
    """Objects as files under ``<root>/<bucket>/``, in the same layout as the bucket.

    Every write goes to a temporary file in the target folder and is renamed onto the
    key, so a reader never sees a partial object.
    """

    backend = "local"

    def __init__(self, root: Path | str, bucket: str, retry: RetryPolicy | None = None):
        super().__init__(bucket, retry)
        self.root = Path(root).resolve() / self.bucket

    def describe(self) -> str:
        return f"local folder {str(self.root)!r}"

    def _path(self, key: str) -> Path:
        path = self.root / key
        # Keys are validated, so only a symbolic link inside the root can lead out.
        if not path.resolve().is_relative_to(self.root):
            raise StorageError(f"{key!r} resolves outside {str(self.root)!r}")
        return path

    async def _ensure_bucket(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    async def _copy_in(
        self, source: Path, key: str, on_progress: ProgressCallback | None
    ) -> FileDigest:
        destination = self._path(key)
        digest = FileDigest()
        handle, temporary = await asyncio.to_thread(open_temporary_file, destination)

        def copy_chunk(reader) -> int:
            chunk = reader.read(CHUNK_SIZE)
            digest.update(chunk)
            handle.write(chunk)
            return len(chunk)

        try:
            reader = await asyncio.to_thread(open, source, "rb")
            with contextlib.closing(reader):
                while await asyncio.to_thread(copy_chunk, reader):
                    if on_progress is not None:
                        on_progress(digest.size)
            await asyncio.to_thread(_flush_and_close, handle)
            await asyncio.to_thread(os.replace, temporary, destination)
        except BaseException:
            handle.close()
            temporary.unlink(missing_ok=True)
            raise
        return digest

    async def _upload_file(
        self, path: Path, key: str, on_progress: ProgressCallback | None
    ) -> ObjectInfo:
        digest = await self._copy_in(path, key, on_progress)
        stored_size = (await asyncio.to_thread(self._path(key).stat)).st_size
        if stored_size != digest.size:
            raise StorageError(
                f"upload of {key!r}: stored {stored_size} bytes, sent {digest.size}"
            )
        return ObjectInfo(key, digest.size, digest.md5, digest.sha256)

    async def _download_file(self, key: str, path: Path) -> Path:
        source = self._path(key)
        if not source.is_file():
            raise not_found(key, self)
        size = source.stat().st_size
        reader = await asyncio.to_thread(open, source, "rb")
        async with DownloadTarget(path) as target:
            with contextlib.closing(reader):
                while chunk := await asyncio.to_thread(reader.read, CHUNK_SIZE):
                    await target.write(chunk)
            return await target.commit(key, size, None)

    async def _read_bytes(self, key: str, max_bytes: int) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise not_found(key, self)
        size = path.stat().st_size
        if size > max_bytes:
            raise too_large(key, size, max_bytes)
        return await asyncio.to_thread(path.read_bytes)

    async def _write_bytes(self, key: str, data: bytes) -> ObjectInfo:
        destination = self._path(key)
        digest = FileDigest()
        digest.update(data)
        await asyncio.to_thread(_write_atomically, destination, data)
        return ObjectInfo(key, digest.size, digest.md5, digest.sha256)

    async def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    async def _size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise not_found(key, self)
        return path.stat().st_size

    async def _list_keys(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._walk, self._path(prefix))

    def _walk(self, folder: Path) -> list[str]:
        keys = []
        for directory, _, names in os.walk(folder):
            for name in names:
                if not is_temporary_name(name):
                    keys.append(
                        (Path(directory) / name).relative_to(self.root).as_posix()
                    )
        return keys

    async def _delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            raise StorageError(f"cannot delete {key!r}: it is a folder of keys")
        await asyncio.to_thread(path.unlink, True)

    async def _delete_prefix(self, prefix: str) -> int:
        folder = self._path(prefix)
        keys = await asyncio.to_thread(self._walk, folder)
        if folder.is_dir():
            await asyncio.to_thread(shutil.rmtree, folder)
        return len(keys)


def _flush_and_close(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def _write_atomically(destination: Path, data: bytes) -> None:
    handle, temporary = open_temporary_file(destination)
    try:
        handle.write(data)
        _flush_and_close(handle)
        os.replace(temporary, destination)
    except BaseException:
        handle.close()
        temporary.unlink(missing_ok=True)
        raise
