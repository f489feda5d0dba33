"""The S3 backend (aioboto3): the SeaweedFS S3 gateway, MinIO or AWS S3.

Files up to :data:`MULTIPART_THRESHOLD` go up in one ``PutObject``, larger ones as a
multipart upload of :data:`PART_SIZE` parts, so an upload keeps at most one part in
memory. Every request carries ``Content-MD5``, which the server checks, and every
returned ETag is compared with the MD5 computed here: a single-part ETag is the MD5 of
the content, a multipart ETag is the MD5 of the parts' binary MD5s followed by
``-<number of parts>``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
from pathlib import Path
from typing import Any

import aioboto3
import aiohttp
import botocore
import botocore.config
import botocore.exceptions

from peptide_opt.errors import StorageError
from peptide_opt.storage.base import (
    CHUNK_SIZE,
    DownloadTarget,
    FileDigest,
    ObjectInfo,
    ObjectNotFoundError,
    ProgressCallback,
    RetryPolicy,
    Storage,
    TransientStorageError,
    check_download,
    not_found,
    plain_md5,
    too_large,
)

#: Files larger than this (16 MiB) are sent as a multipart upload.
MULTIPART_THRESHOLD = 16 * 1024 * 1024

#: Part size of multipart uploads (8 MiB; S3 requires at least 5 MiB but the last part).
PART_SIZE = 8 * 1024 * 1024

#: Keys per DeleteObjects request, the S3 maximum.
_DELETE_BATCH = 1000

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}

_NETWORK_ERRORS = (
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.ConnectionError,
    botocore.exceptions.IncompleteReadError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
)


class S3Storage(Storage):
    """Objects in an S3 bucket; path-style addressing, as SeaweedFS and MinIO need."""

    backend = "s3"

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key: str = "",
        secret_key: str = "",
        retry: RetryPolicy | None = None,
        region: str = "us-east-1",
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        list_page_size: int = 1000,
    ) -> None:
        super().__init__(bucket, retry)
        if part_size < 5 * 1024 * 1024:
            raise ValueError(f"part_size must be at least 5 MiB, got {part_size}")
        self.endpoint = endpoint.rstrip("/")
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.list_page_size = list_page_size
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        self._client: Any = None
        self._exit_stack = contextlib.AsyncExitStack()
        self._client_lock = asyncio.Lock()

    def describe(self) -> str:
        return f"S3 {self.endpoint} bucket {self.bucket!r}"

    async def close(self) -> None:
        await self._exit_stack.aclose()
        self._client = None

    async def _s3(self) -> Any:
        """Return the client, created on first use inside the running event loop."""
        async with self._client_lock:
            if self._client is None:
                self._client = await self._exit_stack.enter_async_context(
                    self._make_client()
                )
        return self._client

    def _make_client(self) -> Any:
        options: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            # Retries are ours (RetryPolicy), so that they are bounded and logged.
            "retries": {"total_max_attempts": 1},
            "connect_timeout": 5,
            "read_timeout": 60,
            # Content-MD5 is sent explicitly; the newer default CRC32 trailers are
            # not needed and not supported by every S3-compatible server.
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        credentials: dict[str, str] = {}
        if self._access_key:
            credentials = {
                "aws_access_key_id": self._access_key,
                "aws_secret_access_key": self._secret_key,
            }
        else:
            # Without keys, send unsigned requests rather than search the machine for
            # AWS credentials.
            options["signature_version"] = botocore.UNSIGNED
        return aioboto3.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self._region,
            config=botocore.config.Config(**options),
            **credentials,
        )

    async def _call(self, operation: str, key: str, **kwargs: Any) -> dict[str, Any]:
        """Call an S3 operation, mapping its errors to ours."""
        client = await self._s3()
        try:
            return await getattr(client, operation)(**kwargs)
        except botocore.exceptions.ClientError as error:
            raise self._client_error(key, error) from error
        except _NETWORK_ERRORS as error:
            raise TransientStorageError(f"{type(error).__name__}: {error}") from error

    def _client_error(
        self, key: str, error: botocore.exceptions.ClientError
    ) -> Exception:
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(
            error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        )
        if status >= 500:
            return TransientStorageError(f"HTTP {status} {code}: {error}")
        if code in _NOT_FOUND_CODES or status == 404:
            if code == "NoSuchBucket":
                return StorageError(
                    f"bucket {self.bucket!r} not found at {self.endpoint}"
                )
            return not_found(key, self)
        return StorageError(f"S3 rejected the request for {key!r}: {error}")

    # -- primitives --------------------------------------------------------------------

    async def _ensure_bucket(self) -> None:
        try:
            await self._call("head_bucket", self.bucket, Bucket=self.bucket)
            return
        except StorageError:
            pass
        try:
            await self._call("create_bucket", self.bucket, Bucket=self.bucket)
        except StorageError as error:
            if "BucketAlreadyOwnedByYou" not in str(error):
                raise

    async def _upload_file(
        self, path: Path, key: str, on_progress: ProgressCallback | None
    ) -> ObjectInfo:
        size = path.stat().st_size
        if size <= self.multipart_threshold:
            data, digest = await asyncio.to_thread(_read_and_hash, path)
            info = await self._put(key, data, digest)
            if on_progress is not None:
                on_progress(len(data))
            return info
        return await self._upload_multipart(path, key, size, on_progress)

    async def _write_bytes(self, key: str, data: bytes) -> ObjectInfo:
        digest = FileDigest()
        digest.update(data)
        return await self._put(key, data, digest)

    async def _put(self, key: str, data: bytes, digest: FileDigest) -> ObjectInfo:
        reply = await self._call(
            "put_object",
            key,
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentMD5=digest.md5_base64,
        )
        _check_etag(key, reply.get("ETag"), digest.md5)
        await self._check_size(key, digest.size)
        return ObjectInfo(key, digest.size, digest.md5, digest.sha256)

    async def _upload_multipart(
        self, path: Path, key: str, size: int, on_progress: ProgressCallback | None
    ) -> ObjectInfo:
        created = await self._call(
            "create_multipart_upload", key, Bucket=self.bucket, Key=key
        )
        upload_id = created["UploadId"]
        try:
            digest, parts = await self._upload_parts(path, key, upload_id, on_progress)
            reply = await self._retrying(
                "complete upload",
                key,
                lambda: self._call(
                    "complete_multipart_upload",
                    key,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
        except BaseException:
            await self._abort(key, upload_id)
            raise
        if digest.size != size:
            raise StorageError(
                f"{str(path)!r} changed while it was uploaded to {key!r}: "
                f"{size} bytes before, {digest.size} bytes sent"
            )
        expected = hashlib.md5(
            b"".join(bytes.fromhex(part["ETag"].strip('"')) for part in parts),
            usedforsecurity=False,
        ).hexdigest()
        stored_etag = str(reply.get("ETag", "")).strip('"')
        if stored_etag and stored_etag != f"{expected}-{len(parts)}":
            raise TransientStorageError(
                f"S3 completed {key!r} with ETag {stored_etag}, expected "
                f"{expected}-{len(parts)} from the parts sent"
            )
        await self._check_size(key, digest.size)
        return ObjectInfo(key, digest.size, digest.md5, digest.sha256)

    async def _upload_parts(
        self, path: Path, key: str, upload_id: str, on_progress: ProgressCallback | None
    ) -> tuple[FileDigest, list[dict[str, Any]]]:
        """Send the file's parts in order; each part is retried on its own."""
        digest = FileDigest()
        parts: list[dict[str, Any]] = []

        def read_part(reader) -> tuple[bytes, Any]:
            chunk = reader.read(self.part_size)
            digest.update(chunk)
            return chunk, hashlib.md5(chunk, usedforsecurity=False)

        reader = await asyncio.to_thread(open, path, "rb")
        try:
            while True:
                chunk, part_md5 = await asyncio.to_thread(read_part, reader)
                if not chunk:
                    break
                number = len(parts) + 1
                put_part = functools.partial(
                    self._put_part, key, upload_id, number, chunk, part_md5
                )
                etag = await self._retrying(f"upload part {number}", key, put_part)
                parts.append({"PartNumber": number, "ETag": etag})
                if on_progress is not None:
                    on_progress(digest.size)
        finally:
            await asyncio.to_thread(reader.close)
        return digest, parts

    async def _put_part(
        self, key: str, upload_id: str, number: int, data: bytes, part_md5: Any
    ) -> str:
        reply = await self._call(
            "upload_part",
            key,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ContentMD5=_base64(part_md5.digest()),
        )
        _check_etag(f"{key} part {number}", reply.get("ETag"), part_md5.hexdigest())
        return f'"{part_md5.hexdigest()}"'

    async def _abort(self, key: str, upload_id: str) -> None:
        # Best effort: an abandoned upload only costs space until the server expires it.
        with contextlib.suppress(StorageError, TransientStorageError):
            await self._call(
                "abort_multipart_upload",
                key,
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
            )

    async def _check_size(self, key: str, size: int) -> None:
        head = await self._call("head_object", key, Bucket=self.bucket, Key=key)
        if int(head["ContentLength"]) != size:
            raise TransientStorageError(
                f"S3 stored {head['ContentLength']} bytes for {key!r}, {size} were sent"
            )

    async def _download_file(self, key: str, path: Path) -> Path:
        reply = await self._call("get_object", key, Bucket=self.bucket, Key=key)
        body = reply["Body"]
        async with body, DownloadTarget(path) as target:
            try:
                while chunk := await body.read(CHUNK_SIZE):
                    await target.write(chunk)
            except _NETWORK_ERRORS as error:
                raise TransientStorageError(
                    f"{type(error).__name__}: {error}"
                ) from error
            return await target.commit(
                key, int(reply["ContentLength"]), plain_md5(reply.get("ETag"))
            )

    async def _read_bytes(self, key: str, max_bytes: int) -> bytes:
        head = await self._call("head_object", key, Bucket=self.bucket, Key=key)
        if int(head["ContentLength"]) > max_bytes:
            raise too_large(key, int(head["ContentLength"]), max_bytes)
        reply = await self._call("get_object", key, Bucket=self.bucket, Key=key)
        body = reply["Body"]
        try:
            async with body:
                data = await body.read()
        except _NETWORK_ERRORS as error:
            raise TransientStorageError(f"{type(error).__name__}: {error}") from error
        digest = FileDigest()
        digest.update(data)
        check_download(
            key, digest, int(reply["ContentLength"]), plain_md5(reply.get("ETag"))
        )
        return data

    async def _exists(self, key: str) -> bool:
        try:
            await self._call("head_object", key, Bucket=self.bucket, Key=key)
        except ObjectNotFoundError:
            return False
        return True

    async def _size(self, key: str) -> int:
        head = await self._call("head_object", key, Bucket=self.bucket, Key=key)
        return int(head["ContentLength"])

    async def _list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            request: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": prefix + "/",
                "MaxKeys": self.list_page_size,
            }
            if token:
                request["ContinuationToken"] = token
            page = await self._call("list_objects_v2", prefix, **request)
            keys.extend(item["Key"] for item in page.get("Contents", []))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return keys

    async def _delete(self, key: str) -> None:
        await self._call("delete_object", key, Bucket=self.bucket, Key=key)

    async def _delete_prefix(self, prefix: str) -> int:
        keys = await self._list_keys(prefix)
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            reply = await self._call(
                "delete_objects",
                prefix,
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            errors = reply.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"S3 could not delete {len(errors)} keys under {prefix!r}, "
                    f"first {first.get('Key')!r}: {first.get('Code')} "
                    f"{first.get('Message')}"
                )
        return len(keys)


def _check_etag(label: str, etag: str | None, md5: str) -> None:
    stored = plain_md5(etag)
    if etag and stored != md5:
        raise TransientStorageError(
            f"S3 stored {label!r} with ETag {etag}, the bytes sent have MD5 {md5}"
        )


def _read_and_hash(path: Path) -> tuple[bytes, FileDigest]:
    data = path.read_bytes()
    digest = FileDigest()
    digest.update(data)
    return data, digest


def _base64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
