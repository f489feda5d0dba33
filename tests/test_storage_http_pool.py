"""The Filer's keep-alive client: reuse, closed connections, timeouts, replies.

Reuse runs against the real SeaweedFS Filer. The faults that SeaweedFS cannot be made
to produce (a connection closed as a request arrives, a 503, a wrong Content-MD5, a
reply that never comes) come from a scripted HTTP server on a loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from peptide_opt.errors import StorageError
from peptide_opt.storage import RetryPolicy
from peptide_opt.storage.filer import FilerStorage, _is_direct_http
from peptide_opt.storage.http_pool import HttpConnectionError, HttpPool

#: Three attempts with waits of 0.01 and 0.02 s keep the retry tests quick.
FAST_RETRY = RetryPolicy(attempts=3, base_delay_s=0.01)

#: A reply script. It gets the request's 1-based number on its connection, its head and
#: its body. It returns the raw reply, or None to close the connection without one.
Reply = Callable[[int, bytes, bytes], Awaitable[bytes | None]]


def filer_reply(
    body: bytes, status: str = "201 Created", md5: bytes | None = None
) -> bytes:
    """Return the Filer's reply to a write of ``body``: its size and Content-MD5."""
    content = json.dumps({"name": "x", "size": len(body)}).encode()
    digest = base64.b64encode(md5 or hashlib.md5(body).digest()).decode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-MD5: {digest}\r\nContent-Length: {len(content)}\r\n\r\n"
    ).encode() + content


class ScriptedServer:
    """An HTTP/1.1 server on loopback whose replies come from a function."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.n_requests = 0
        self.server: asyncio.Server | None = None
        self.url = ""
        self._handlers: set[asyncio.Task] = set()

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        for handler in self._handlers:
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            for number in range(1, 1000):
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                body = await reader.readexactly(_content_length(head))
                self.n_requests += 1
                reply = await self.reply(number, head, body)
                if reply is None:
                    return
                writer.write(reply)
                await writer.drain()
        finally:
            writer.close()


def _content_length(head: bytes) -> int:
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            return int(value)
    return 0


@pytest.fixture
async def filer(seaweedfs) -> AsyncIterator[FilerStorage]:
    async with FilerStorage(seaweedfs.filer_url, seaweedfs.bucket) as storage:
        yield storage


# -- the real Filer --------------------------------------------------------------------


async def test_writes_reuse_one_connection(filer):
    prefix = f"tests/{uuid.uuid4().hex}"

    for index in range(5):
        await filer.write_text(f"{prefix}/file{index}.txt", f"content {index}\n")

    # Five writes one after another need one connection, kept alive between them.
    assert filer._pool is not None
    assert filer._pool.n_connections_opened == 1
    assert await filer.read_text(f"{prefix}/file4.txt") == "content 4\n"


async def test_concurrent_writes_all_verified(filer):
    prefix = f"tests/{uuid.uuid4().hex}"
    payloads = {
        f"{prefix}/f{index}.bin": bytes([index]) * (1000 * index)
        for index in range(1, 31)
    }

    infos = await asyncio.gather(
        *(filer.write_bytes(key, data) for key, data in payloads.items())
    )

    for info, (key, data) in zip(infos, payloads.items(), strict=True):
        assert info.size == len(data)
        assert info.md5 == hashlib.md5(data).hexdigest()
        assert await filer.read_bytes(key) == data
    # 30 writes at once need at most 30 connections, one per write in flight.
    assert filer._pool is not None
    assert filer._pool.n_connections_opened <= 30


# -- scripted faults -------------------------------------------------------------------


async def test_closed_reused_connection_sent_again():
    async def reply(number: int, head: bytes, body: bytes) -> bytes | None:
        # A server that drops its idle connection just as the second request arrives.
        return filer_reply(body) if number == 1 else None

    async with ScriptedServer(reply) as server:
        pool = HttpPool(server.url)
        first = await pool.request("PUT", "/a", b"one")
        second = await pool.request("PUT", "/b", b"two")
        await pool.close()

    assert first.status_code == 201
    assert second.status_code == 201
    # The second request went out on the reused connection, then on a new one.
    assert server.n_requests == 3
    assert pool.n_connections_opened == 2


async def test_new_connection_closed_raises():
    async def reply(number: int, head: bytes, body: bytes) -> bytes | None:
        return None

    async with ScriptedServer(reply) as server:
        pool = HttpPool(server.url)
        with pytest.raises(HttpConnectionError, match="without a response"):
            await pool.request("PUT", "/a", b"one")
        await pool.close()

    # A new connection is not tried twice: the failure goes to the caller's retries.
    assert server.n_requests == 1


async def test_reply_timeout_raises():
    async def reply(number: int, head: bytes, body: bytes) -> bytes | None:
        await asyncio.sleep(5)
        return filer_reply(body)

    async with ScriptedServer(reply) as server:
        pool = HttpPool(server.url, timeout_s=0.2)
        with pytest.raises(HttpConnectionError, match="timed out after 0.2 s"):
            await pool.request("PUT", "/a", b"one")
        await pool.close()


async def test_refused_connection_raises():
    pool = HttpPool("http://127.0.0.1:1")

    with pytest.raises(HttpConnectionError, match="cannot connect to 127.0.0.1:1"):
        await pool.request("GET", "/")


async def test_chunked_reply_and_repeated_headers():
    async def reply(number: int, head: bytes, body: bytes) -> bytes | None:
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            b"X-Part: a\r\nX-Part: b\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )

    async with ScriptedServer(reply) as server:
        pool = HttpPool(server.url)
        response = await pool.request("GET", "/")
        await pool.close()

    assert response.body == b"hello world"
    # RFC 9110 combines repeated fields into one comma-separated value.
    assert response.headers["x-part"] == "a, b"


async def test_reply_over_limit_raises():
    async def reply(number: int, head: bytes, body: bytes) -> bytes | None:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000

    async with ScriptedServer(reply) as server:
        pool = HttpPool(server.url)
        with pytest.raises(HttpConnectionError, match="exceeds the limit of 1000"):
            await pool.request("GET", "/", max_response_bytes=1000)
        await pool.close()


async def test_request_carries_host_and_length():
    heads: list[bytes] = []

    async def reply(number: int, head: bytes, body: bytes) -> bytes | None:
        heads.append(head)
        return filer_reply(body)

    async with ScriptedServer(reply) as server:
        pool = HttpPool(server.url + "/filer")
        await pool.request(
            "PUT", "/buckets/b/k%20x", b"12345", {"Content-Type": "text/plain"}
        )
        await pool.close()

    lines = heads[0].decode("latin-1").split("\r\n")
    # The endpoint's path comes before the target, and Host is the endpoint's netloc.
    assert lines[0] == "PUT /filer/buckets/b/k%20x HTTP/1.1"
    assert f"Host: {server.url.removeprefix('http://')}" in lines
    assert "Content-Length: 5" in lines
    assert "Content-Type: text/plain" in lines


async def test_filer_503_retried_then_stored():
    async def reply(number: int, head: bytes, body: bytes) -> bytes | None:
        if number == 1:
            return b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"
        return filer_reply(body)

    async with ScriptedServer(reply) as server:
        async with FilerStorage(server.url, "bucket", FAST_RETRY) as storage:
            info = await storage.write_bytes("jobs/a/input/x.txt", b"payload")

    assert info.size == 7
    assert info.md5 == hashlib.md5(b"payload").hexdigest()
    # One 503, then the retry on the same kept-alive connection.
    assert server.n_requests == 2


async def test_filer_wrong_md5_fails_after_retries():
    async def reply(number: int, head: bytes, body: bytes) -> bytes | None:
        return filer_reply(body, md5=hashlib.md5(b"other bytes").digest())

    async with ScriptedServer(reply) as server:
        async with FilerStorage(server.url, "bucket", FAST_RETRY) as storage:
            with pytest.raises(StorageError) as caught:
                await storage.write_bytes("jobs/a/input/x.txt", b"payload")

    message = str(caught.value)
    assert "failed after 3 attempts" in message
    assert hashlib.md5(b"other bytes").hexdigest() in message
    assert server.n_requests == 3


async def test_filer_rejection_not_retried():
    async def reply(number: int, head: bytes, body: bytes) -> bytes | None:
        return b"HTTP/1.1 400 Bad Request\r\nContent-Length: 7\r\n\r\nbad key"

    async with ScriptedServer(reply) as server:
        async with FilerStorage(server.url, "bucket", FAST_RETRY) as storage:
            with pytest.raises(StorageError, match="rejected .* HTTP 400: bad key"):
                await storage.write_bytes("jobs/a/input/x.txt", b"payload")

    assert server.n_requests == 1


async def test_filer_without_server_fails_after_retries():
    async with FilerStorage("http://127.0.0.1:1", "bucket", FAST_RETRY) as storage:
        with pytest.raises(StorageError) as caught:
            await storage.write_text("jobs/a/input/peptide.fasta", ">p\nACDE\n")

    assert "failed after 3 attempts" in str(caught.value)
    assert "cannot connect to 127.0.0.1:1" in str(caught.value)


# -- which endpoints use the pool ------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "environment", "direct"),
    [
        ("http://filer:8888", {}, True),
        ("https://filer:8888", {}, False),
        ("http://filer:8888", {"HTTP_PROXY": "http://proxy:3128"}, False),
        ("http://filer:8888", {"ALL_PROXY": "http://proxy:3128"}, False),
        (
            "http://filer:8888",
            {"HTTP_PROXY": "http://proxy:3128", "NO_PROXY": "filer"},
            True,
        ),
    ],
)
def test_direct_http_endpoints(monkeypatch, endpoint, environment, direct):
    for name in ("HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    assert _is_direct_http(endpoint) is direct
