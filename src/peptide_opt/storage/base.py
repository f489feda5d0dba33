"""The storage interface that every backend implements, and its shared machinery.

A backend subclasses :class:`Storage` and implements the ``_``-prefixed primitives. The
public methods validate keys, retry transient failures with exponential backoff and
turn the last failure into a :class:`~peptide_opt.errors.StorageError` that names the
key and the cause.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO, Self, TypeVar

from peptide_opt.errors import StorageError
from peptide_opt.storage.keys import InvalidKeyError, validate_bucket, validate_key

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Bytes read or written per step when a file is streamed (4 MiB).
CHUNK_SIZE = 4 * 1024 * 1024

#: Smallest piece a download writes to disk at once (1 MiB).
WRITE_BATCH_BYTES = 1024 * 1024

#: Largest object :meth:`Storage.read_bytes` returns by default (16 MiB).
MAX_READ_BYTES = 16 * 1024 * 1024

#: Called with the bytes of the current upload sent so far.
ProgressCallback = Callable[[int], None]


class ObjectNotFoundError(StorageError):
    """The key does not exist in the bucket."""


class TransientStorageError(Exception):
    """A failure worth retrying: a connection error or a 5xx status.

    Backends raise it from their primitives; :meth:`Storage._retrying` retries them and
    never lets it escape.
    """


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a storage operation is retried.

    The n-th retry waits ``min(base_delay_s * 2**(n-1), max_delay_s)`` seconds, so the
    default policy makes 4 attempts over about 1.4 s of waiting.
    """

    attempts: int = 4
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0

    def delay_s(self, retry: int) -> float:
        """Return the wait before retry number ``retry`` (1-based), in seconds."""
        return min(self.base_delay_s * 2 ** (retry - 1), self.max_delay_s)


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """An object as stored: its key, size in bytes and the digests known for it."""

    key: str
    size: int
    md5: str | None = None
    sha256: str | None = None


class FileDigest:
    """MD5 and, unless turned off, SHA-256 of a byte stream, updated chunk by chunk."""

    def __init__(self, with_sha256: bool = True) -> None:
        self.size = 0
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256() if with_sha256 else None

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._md5.update(chunk)
        if self._sha256 is not None:
            self._sha256.update(chunk)

    @property
    def md5(self) -> str:
        return self._md5.hexdigest()

    @property
    def md5_base64(self) -> str:
        return base64.b64encode(self._md5.digest()).decode("ascii")

    @property
    def sha256(self) -> str | None:
        return self._sha256.hexdigest() if self._sha256 is not None else None


async def read_file_chunks(
    path: Path,
    digest: FileDigest,
    on_progress: ProgressCallback | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> AsyncIterator[bytes]:
    """Yield a file's bytes chunk by chunk, updating ``digest``.

    A worker thread reads and hashes the next chunk while the current one is sent
    (hashlib releases the GIL), so at most two chunks are in memory.
    """

    def read_and_hash() -> bytes:
        chunk = handle.read(chunk_size)
        digest.update(chunk)
        return chunk

    handle = await asyncio.to_thread(open, path, "rb")
    pending = asyncio.ensure_future(asyncio.to_thread(read_and_hash))
    sent = 0
    try:
        while chunk := await pending:
            pending = asyncio.ensure_future(asyncio.to_thread(read_and_hash))
            sent += len(chunk)
            if on_progress is not None:
                on_progress(sent)
            yield chunk
    finally:
        # A thread cannot be cancelled: wait for the read in flight before closing.
        with contextlib.suppress(Exception):
            await pending
        await asyncio.to_thread(handle.close)


def open_temporary_file(destination: Path) -> tuple[BinaryIO, Path]:
    """Open a new hidden file beside ``destination``, to be renamed onto it."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
    )
    return os.fdopen(descriptor, "wb"), Path(name)


def is_temporary_name(name: str) -> bool:
    """Tell whether a file name is one of :func:`open_temporary_file`'s."""
    return name.startswith(".") and name.endswith(".part")


class DownloadTarget:
    """A temporary file in the destination folder that becomes the destination.

    Use as an async context manager: :meth:`commit` checks the bytes written and
    renames the file onto the destination, and a block that ends without a commit
    removes it. Writes are batched into pieces of at least :data:`WRITE_BATCH_BYTES`,
    each hashed and written in a worker thread while the next piece arrives, so at
    most two pieces wait in memory.
    """

    def __init__(self, destination: Path) -> None:
        self.destination = Path(destination)
        # Downloads are checked against the stored MD5 only.
        self.digest = FileDigest(with_sha256=False)
        self._handle: BinaryIO | None = None
        self._path: Path | None = None
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._pending: asyncio.Future | None = None

    async def __aenter__(self) -> Self:
        self._handle, self._path = await asyncio.to_thread(
            open_temporary_file, self.destination
        )
        return self

    async def write(self, chunk: bytes) -> None:
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= WRITE_BATCH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if self._pending is not None:
            await self._pending
            self._pending = None
        pieces, self._batch, self._batch_bytes = self._batch, [], 0
        if pieces:
            self._pending = asyncio.ensure_future(
                asyncio.to_thread(self._write_and_hash, pieces)
            )

    def _write_and_hash(self, pieces: list[bytes]) -> None:
        assert self._handle is not None
        for piece in pieces:
            self.digest.update(piece)
            self._handle.write(piece)

    async def commit(self, key: str, size: int | None, md5: str | None) -> Path:
        """Check the bytes against the stored ``size`` and ``md5``, then rename."""
        assert self._handle is not None and self._path is not None
        await self._flush()
        if self._pending is not None:
            await self._pending
            self._pending = None
        check_download(key, self.digest, size, md5)
        await asyncio.to_thread(self._handle.close)
        await asyncio.to_thread(os.replace, self._path, self.destination)
        self._path = None
        return self.destination

    async def __aexit__(self, *exc_info: object) -> None:
        if self._pending is not None:
            # A thread cannot be cancelled: let the write in flight finish first.
            with contextlib.suppress(Exception):
                await self._pending
        if self._handle is not None and not self._handle.closed:
            await asyncio.to_thread(self._handle.close)
        if self._path is not None:
            await asyncio.to_thread(self._path.unlink, True)


def check_download(
    key: str, digest: FileDigest, size: int | None, md5: str | None
) -> None:
    """Raise a retryable error when the bytes differ from the stored size or MD5."""
    if size is not None and digest.size != size:
        raise TransientStorageError(
            f"download of {key!r} was cut short: got {digest.size} of {size} bytes"
        )
    if md5 is not None and digest.md5 != md5:
        raise TransientStorageError(
            f"download of {key!r} has MD5 {digest.md5}, the store reports {md5}"
        )


def plain_md5(etag: str | None) -> str | None:
    """Return an ETag's MD5 hex digest, or None when it is not a plain MD5.

    S3 and the SeaweedFS Filer give the MD5 of the content as the ETag of single-part
    objects. A multipart ETag has a ``-<parts>`` suffix and is not the content's MD5.
    """
    if not etag:
        return None
    value = etag.strip().strip('"').lower()
    if len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


class Storage(abc.ABC):
    """An asyncio object store holding one bucket; subclasses are the backends.

    Keys are relative ``/``-separated paths (see :mod:`peptide_opt.storage.keys`).
    Listing and deleting "under a prefix" treat the prefix as a folder: ``jobs/a``
    covers ``jobs/a/x`` but not ``jobs/ab``.
    """

    #: The name of the backend in ``STORAGE_BACKEND``.
    backend = ""

    def __init__(self, bucket: str, retry: RetryPolicy | None = None) -> None:
        self.bucket = validate_bucket(bucket)
        self.retry = retry or RetryPolicy()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release connections; the default has none."""

    def describe(self) -> str:
        """Return the backend and bucket as error messages name them."""
        return f"{self.backend} bucket {self.bucket!r}"

    # -- public operations -------------------------------------------------------------

    async def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist."""
        await self._retrying("create bucket", self.bucket, self._ensure_bucket)

    async def upload_file(
        self, path: Path | str, key: str, on_progress: ProgressCallback | None = None
    ) -> ObjectInfo:
        """Upload a local file to ``key``, streamed, and verify the stored size and MD5.

        ``on_progress`` is called with the bytes of the current attempt sent so far.
        Returns the stored object with the MD5 and SHA-256 of the bytes sent.
        """
        key = validate_key(key)
        path = Path(path)
        if not path.is_file():
            raise StorageError(f"cannot upload {str(path)!r} to {key!r}: not a file")
        return await self._retrying(
            "upload", key, lambda: self._upload_file(path, key, on_progress)
        )

    async def download_file(self, key: str, path: Path | str) -> Path:
        """Download ``key`` to ``path`` through a temporary file renamed on success."""
        key = validate_key(key)
        path = Path(path)
        return await self._retrying(
            "download", key, lambda: self._download_file(key, path)
        )

    async def read_bytes(self, key: str, max_bytes: int = MAX_READ_BYTES) -> bytes:
        """Return a small object's content; objects over ``max_bytes`` raise."""
        key = validate_key(key)
        return await self._retrying(
            "read", key, lambda: self._read_bytes(key, max_bytes)
        )

    async def read_text(self, key: str, max_bytes: int = MAX_READ_BYTES) -> str:
        """Return a small object's content decoded as UTF-8."""
        data = await self.read_bytes(key, max_bytes)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise StorageError(f"{key!r} is not UTF-8 text: {error}") from error

    async def write_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` at ``key`` and verify the stored size and MD5."""
        key = validate_key(key)
        return await self._retrying("write", key, lambda: self._write_bytes(key, data))

    async def write_text(self, key: str, text: str) -> ObjectInfo:
        """Store ``text`` at ``key`` as UTF-8."""
        return await self.write_bytes(key, text.encode("utf-8"))

    async def exists(self, key: str) -> bool:
        """Tell whether an object exists at ``key``; a folder of keys does not count."""
        key = validate_key(key)
        return await self._retrying("check", key, lambda: self._exists(key))

    async def size(self, key: str) -> int:
        """Return the size of the object at ``key``, in bytes."""
        key = validate_key(key)
        return await self._retrying("stat", key, lambda: self._size(key))

    async def list_keys(self, prefix: str) -> list[str]:
        """Return every key under the folder ``prefix``, sorted.

        Keys that :func:`validate_key` rejects (an S3 client may store ``a/../b``) are
        left out and logged, so callers can map listed keys to local paths.
        """
        prefix = validate_key(prefix, "storage prefix")
        keys = await self._retrying("list", prefix, lambda: self._list_keys(prefix))
        safe_keys = []
        for key in keys:
            try:
                safe_keys.append(validate_key(key))
            except InvalidKeyError as error:
                log_event(
                    logging.WARNING,
                    "storage_key_skipped",
                    f"listing of {prefix!r} skips an unsafe key: {error}",
                    prefix=prefix,
                    backend=self.backend,
                )
        return sorted(safe_keys)

    async def delete(self, key: str) -> None:
        """Delete the object at ``key``; a missing key is not an error."""
        key = validate_key(key)
        await self._retrying("delete", key, lambda: self._delete(key))

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key under the folder ``prefix``; return how many there were."""
        prefix = validate_key(prefix, "storage prefix")
        return await self._retrying(
            "delete prefix", prefix, lambda: self._delete_prefix(prefix)
        )

    # -- retries -----------------------------------------------------------------------

    async def _retrying(
        self, action: str, key: str, operation: Callable[[], Awaitable[T]]
    ) -> T:
        """Run ``operation``, retrying :class:`TransientStorageError` with backoff."""
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return await operation()
            except TransientStorageError as error:
                if attempt == self.retry.attempts:
                    raise StorageError(
                        f"{action} of {key!r} in {self.describe()} failed after "
                        f"{attempt} attempts: {error}"
                    ) from error.__cause__ or error
                delay_s = self.retry.delay_s(attempt)
                log_event(
                    logging.WARNING,
                    "storage_retry",
                    f"{action} of {key!r} failed ({error}); attempt {attempt} of "
                    f"{self.retry.attempts}, retrying in {delay_s:.1f} s",
                    key=key,
                    action=action,
                    attempt=attempt,
                    delay_s=delay_s,
                    backend=self.backend,
                )
                await asyncio.sleep(delay_s)
            except OSError as error:
                # A local file failed (disk full, permissions): retrying will not help.
                raise StorageError(
                    f"{action} of {key!r} in {self.describe()} failed: {error}"
                ) from error
        raise AssertionError("unreachable: RetryPolicy.attempts must be at least 1")

    # -- backend primitives ------------------------------------------------------------

    @abc.abstractmethod
    async def _ensure_bucket(self) -> None: ...

    @abc.abstractmethod
    async def _upload_file(
        self, path: Path, key: str, on_progress: ProgressCallback | None
    ) -> ObjectInfo: ...

    @abc.abstractmethod
    async def _download_file(self, key: str, path: Path) -> Path: ...

    @abc.abstractmethod
    async def _read_bytes(self, key: str, max_bytes: int) -> bytes: ...

    @abc.abstractmethod
    async def _write_bytes(self, key: str, data: bytes) -> ObjectInfo: ...

    @abc.abstractmethod
    async def _exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    async def _size(self, key: str) -> int: ...

    @abc.abstractmethod
    async def _list_keys(self, prefix: str) -> list[str]: ...

    @abc.abstractmethod
    async def _delete(self, key: str) -> None: ...

    @abc.abstractmethod
    async def _delete_prefix(self, prefix: str) -> int: ...


def too_large(key: str, size: int, max_bytes: int) -> StorageError:
    """Return the error for reading an object larger than ``max_bytes`` into memory."""
    return StorageError(
        f"{key!r} is {size} bytes, over the limit of {max_bytes} bytes for reading "
        "into memory; download it to a file instead"
    )


def not_found(key: str, storage: Storage) -> ObjectNotFoundError:
    """Return the error for a missing key."""
    return ObjectNotFoundError(f"{key!r} not found in {storage.describe()}")


def log_event(level: int, event: str, message: str, **fields: Any) -> None:
    """Log ``event: message`` with the event name and fields as record attributes."""
    logger.log(level, "%s: %s", event, message, extra={"event": event, **fields})
