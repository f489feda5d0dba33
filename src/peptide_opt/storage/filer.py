"""The SeaweedFS Filer backend: objects at ``/buckets/<bucket>/<key>`` over HTTP.

Facts about the Filer HTTP API used here, checked against SeaweedFS 4.48:

- ``PUT /path`` with the content as the body stores a file (parent folders are
  created) and returns 201 with ``{"name": ..., "size": ...}`` and a ``Content-MD5``
  header (base64 MD5 of the whole content, also for files it splits into chunks).
- ``GET /path?metadata=true`` returns the entry as JSON: ``FileSize``, ``Md5`` (base64)
  and ``Mode``, whose bit 31 marks a folder. A missing path gives 404.
- ``GET /folder/`` with ``Accept: application/json`` lists one folder level,
  ``limit`` entries at a time, continued by ``lastFileName``.
- ``DELETE /path`` removes a file (204, also when it is missing);
  ``?recursive=true`` removes a folder with its content.
- Paths under ``/buckets/<bucket>/`` are the same objects that the S3 gateway serves
  as bucket ``<bucket>``.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx

from peptide_opt.errors import StorageError
from peptide_opt.storage.base import (
    DownloadTarget,
    FileDigest,
    ObjectInfo,
    ProgressCallback,
    RetryPolicy,
    Storage,
    TransientStorageError,
    check_download,
    not_found,
    plain_md5,
    read_file_chunks,
    too_large,
)
from peptide_opt.storage.http_pool import HttpConnectionError, HttpPool, HttpResponse

_FOLDER_MODE_BIT = 1 << 31
#: Entries per listing request (the Filer's own limit is its -dirListLimit, 1000).
LIST_PAGE_SIZE = 1000


class FilerStorage(Storage):
    """Objects in a SeaweedFS bucket through the Filer HTTP API."""

    backend = "filer"

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        retry: RetryPolicy | None = None,
        timeout_s: float = 60.0,
        list_page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        super().__init__(bucket, retry)
        self.endpoint = endpoint.rstrip("/")
        self.list_page_size = list_page_size
        self._client = httpx.AsyncClient(
            base_url=self.endpoint,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            follow_redirects=False,
        )
        # Writes from memory take the cheaper client when httpx would connect straight
        # to the Filer too; TLS and proxies stay with httpx.
        self._pool = (
            HttpPool(self.endpoint, timeout_s, connect_timeout_s=5.0)
            if _is_direct_http(self.endpoint)
            else None
        )

    def describe(self) -> str:
        return f"Filer {self.endpoint}/buckets/{self.bucket}"

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        await self._client.aclose()

    def _url(self, key: str, folder: bool = False) -> str:
        path = f"/buckets/{self.bucket}/{key}" + ("/" if folder else "")
        return quote(path, safe="/")

    async def _send(self, method: str, url: str, **kwargs) -> httpx.Response:
        """Send a request; raise :class:`TransientStorageError` on failures to retry."""
        try:
            response = await self._client.request(method, url, **kwargs)
        except httpx.TransportError as error:
            raise _transient(error) from error
        _raise_for_server_error(response)
        return response

    # -- primitives --------------------------------------------------------------------

    async def _ensure_bucket(self) -> None:
        # The Filer creates /buckets/<bucket>/ with the first file written to it.
        return None

    async def _upload_file(
        self, path: Path, key: str, on_progress: ProgressCallback | None
    ) -> ObjectInfo:
        digest = FileDigest()
        size = path.stat().st_size
        response = await self._send(
            "PUT",
            self._url(key),
            content=read_file_chunks(path, digest, on_progress),
            # A known length lets the Filer read the body without chunked encoding.
            headers={
                "Content-Length": str(size),
                "Content-Type": "application/octet-stream",
            },
        )
        if digest.size != size:
            raise StorageError(
                f"{str(path)!r} changed while it was uploaded to {key!r}: "
                f"{size} bytes before, {digest.size} bytes sent"
            )
        return await self._check_written(key, response, digest)

    async def _write_bytes(self, key: str, data: bytes) -> ObjectInfo:
        digest = FileDigest()
        digest.update(data)
        headers = {"Content-Type": "application/octet-stream"}
        url = self._url(key)
        if self._pool is None:
            response = await self._send("PUT", url, content=data, headers=headers)
        else:
            response = await self._send_from_memory("PUT", url, data, headers)
        return await self._check_written(key, response, digest)

    async def _send_from_memory(
        self, method: str, url: str, body: bytes, headers: dict[str, str]
    ) -> HttpResponse:
        """Send a request through the pool, raising :class:`TransientStorageError` on
        failures worth retrying, as :meth:`_send` does."""
        assert self._pool is not None
        try:
            response = await self._pool.request(method, url, body, headers)
        except HttpConnectionError as error:
            raise TransientStorageError(str(error)) from error
        if response.status_code >= 500:
            raise _server_error(response.status_code, response.text)
        return response

    async def _check_written(
        self, key: str, response: httpx.Response | HttpResponse, digest: FileDigest
    ) -> ObjectInfo:
        """Verify the Filer's reply to a write against the bytes sent."""
        if response.status_code not in (200, 201):
            raise StorageError(
                f"the Filer rejected {key!r} with HTTP {response.status_code}: "
                f"{response.text.strip()[:300]}"
            )
        try:
            # The Filer leaves "size" out of its reply for an empty file.
            stored_size = int(json.loads(response.text).get("size", 0))
        except (ValueError, AttributeError, TypeError) as error:
            raise TransientStorageError(
                f"unexpected Filer reply to writing {key!r}: {response.text[:200]!r}"
            ) from error
        # httpx's headers ignore case and the pool's are lower case, so one lookup fits.
        stored_md5 = _base64_md5_to_hex(response.headers.get("content-md5"))
        if stored_md5 is None:
            entry = await self._metadata(key)
            stored_md5 = _base64_md5_to_hex(entry.get("Md5") if entry else None)
        if stored_size != digest.size:
            raise TransientStorageError(
                f"the Filer stored {stored_size} bytes for {key!r}, "
                f"{digest.size} were sent"
            )
        if stored_md5 is not None and stored_md5 != digest.md5:
            raise TransientStorageError(
                f"the Filer stored {key!r} with MD5 {stored_md5}, the bytes sent have "
                f"{digest.md5}"
            )
        return ObjectInfo(key, digest.size, digest.md5, digest.sha256)

    async def _download_file(self, key: str, path: Path) -> Path:
        request = self._client.build_request("GET", self._url(key))
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as error:
            raise _transient(error) from error
        try:
            _raise_for_server_error(response)
            if response.status_code == 404:
                raise not_found(key, self)
            _raise_unless_ok(key, response)
            expected_size = _content_length(response)
            async with DownloadTarget(path) as target:
                try:
                    # Without a chunk size httpx passes on what the socket returns;
                    # re-chunking into large pieces halves throughput (httpx 0.29).
                    async for chunk in response.aiter_raw():
                        await target.write(chunk)
                except httpx.TransportError as error:
                    raise _transient(error) from error
                return await target.commit(
                    key, expected_size, plain_md5(response.headers.get("ETag"))
                )
        finally:
            await response.aclose()

    async def _read_bytes(self, key: str, max_bytes: int) -> bytes:
        entry = await self._metadata(key)
        if entry is None or _is_folder(entry):
            raise not_found(key, self)
        if int(entry.get("FileSize", 0)) > max_bytes:
            raise too_large(key, int(entry["FileSize"]), max_bytes)
        response = await self._send("GET", self._url(key))
        if response.status_code == 404:
            raise not_found(key, self)
        _raise_unless_ok(key, response)
        check_download(
            key,
            _digest_of(response.content),
            _content_length(response),
            plain_md5(response.headers.get("ETag")),
        )
        return response.content

    async def _metadata(self, key: str) -> dict | None:
        """Return the Filer's entry for ``key``, or None when the path is missing."""
        response = await self._send("GET", self._url(key), params={"metadata": "true"})
        if response.status_code == 404:
            return None
        _raise_unless_ok(key, response)
        try:
            return response.json()
        except ValueError as error:
            raise TransientStorageError(
                f"unexpected Filer metadata for {key!r}: {response.text[:200]!r}"
            ) from error

    async def _exists(self, key: str) -> bool:
        entry = await self._metadata(key)
        return entry is not None and not _is_folder(entry)

    async def _size(self, key: str) -> int:
        entry = await self._metadata(key)
        if entry is None or _is_folder(entry):
            raise not_found(key, self)
        return int(entry.get("FileSize", 0))

    async def _list_keys(self, prefix: str) -> list[str]:
        entry = await self._metadata(prefix)
        if entry is None or not _is_folder(entry):
            return []
        keys: list[str] = []
        folders = [prefix]
        root = f"/buckets/{self.bucket}/"
        while folders:
            folder = folders.pop()
            for entry in await self._list_folder(folder):
                full_path = entry["FullPath"]
                if not full_path.startswith(root):
                    raise StorageError(
                        f"the Filer listed {full_path!r} under {folder!r}, "
                        f"outside {root}"
                    )
                key = full_path[len(root) :]
                if _is_folder(entry):
                    folders.append(key)
                else:
                    keys.append(key)
        return keys

    async def _list_folder(self, folder: str) -> list[dict]:
        """Return every entry of one folder level, following the Filer's pages."""
        entries: list[dict] = []
        last_name = ""
        while True:
            params = {"limit": str(self.list_page_size)}
            if last_name:
                params["lastFileName"] = last_name
            response = await self._send(
                "GET",
                self._url(folder, folder=True),
                params=params,
                headers={"Accept": "application/json"},
            )
            if response.status_code == 404:
                return entries
            _raise_unless_ok(folder, response)
            try:
                page = response.json()
            except ValueError as error:
                raise TransientStorageError(
                    f"unexpected Filer listing of {folder!r}: {response.text[:200]!r}"
                ) from error
            page_entries = page.get("Entries") or []
            entries.extend(page_entries)
            if not page.get("ShouldDisplayLoadMore") or not page_entries:
                return entries
            last_name = page["LastFileName"]

    async def _delete(self, key: str) -> None:
        entry = await self._metadata(key)
        if entry is None:
            return
        if _is_folder(entry):
            raise StorageError(f"cannot delete {key!r}: it is a folder of keys")
        response = await self._send("DELETE", self._url(key))
        if response.status_code != 404:
            _raise_unless_ok(key, response)

    async def _delete_prefix(self, prefix: str) -> int:
        keys = await self._list_keys(prefix)
        entry = await self._metadata(prefix)
        if entry is None or not _is_folder(entry):
            return 0
        response = await self._send(
            "DELETE",
            self._url(prefix),
            params={"recursive": "true", "ignoreRecursiveError": "true"},
        )
        if response.status_code != 404:
            _raise_unless_ok(prefix, response)
        return len(keys)


def _is_folder(entry: dict) -> bool:
    return bool(int(entry.get("Mode", 0)) & _FOLDER_MODE_BIT)


def _transient(error: httpx.TransportError) -> TransientStorageError:
    return TransientStorageError(f"{type(error).__name__}: {error}".rstrip(": "))


def _raise_for_server_error(response: httpx.Response) -> None:
    if response.status_code >= 500:
        raise _server_error(response.status_code, _body_excerpt(response))


def _server_error(status_code: int, body_text: str) -> TransientStorageError:
    return TransientStorageError(
        f"HTTP {status_code} from the Filer: {body_text.strip()[:300]}"
    )


def _is_direct_http(endpoint: str) -> bool:
    """Tell whether ``endpoint`` is plain HTTP that no proxy variable redirects.

    ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` are read as the standard library
    reads them, which may differ from httpx in rare patterns. Any doubt keeps httpx.
    """
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or not parts.hostname:
        return False
    proxies = urllib.request.getproxies()
    if not ({"http", "all"} & proxies.keys()):
        return True
    return bool(urllib.request.proxy_bypass(parts.hostname))


def _raise_unless_ok(key: str, response: httpx.Response) -> None:
    if not 200 <= response.status_code < 300:
        raise StorageError(
            f"the Filer returned HTTP {response.status_code} for {key!r}: "
            f"{_body_excerpt(response)}"
        )


def _body_excerpt(response: httpx.Response) -> str:
    try:
        return response.text.strip()[:300]
    except httpx.ResponseNotRead:
        return "(streamed response)"


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _base64_md5_to_hex(value: str | None) -> str | None:
    if not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 16 else None


def _digest_of(data: bytes) -> FileDigest:
    digest = FileDigest()
    digest.update(data)
    return digest
