"""A keep-alive HTTP/1.1 client for requests whose body is already in memory.

The Filer backend sends its writes from memory through this client instead of httpx.
A py-spy profile of ``bench/api_submit.py`` put about 60 % of the API's CPU in httpx
0.29 and httpcore 1.0.9. Their pool checks the socket of every pooled connection on
each request, with a system call per connection. This client keeps idle connections
in a stack and drops those that the event loop has seen closed, which reads flags
only. docs/benchmarks.md has the figures.

It is deliberately small: plain ``http://`` only (no TLS, no proxy), one request at a
time per connection (no pipelining), and idempotent methods only. Responses are
parsed by httptools (llhttp). Every failure to get a complete response is an
:class:`HttpConnectionError`; the caller decides whether to retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from urllib.parse import urlsplit

import httptools

#: Methods that RFC 9110 defines as idempotent, so a request can be sent again.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

#: Maximum connections open at once, as in httpx's default limits. Others wait.
MAX_CONNECTIONS = 100
#: Seconds an idle connection is kept before it is closed, httpx's default too.
KEEPALIVE_EXPIRY_S = 5.0
#: Largest response body read into memory, in bytes.
MAX_RESPONSE_BYTES = 1024 * 1024
READ_SIZE = 64 * 1024
NO_RESPONSE = "the server closed the connection without a response"


class HttpConnectionError(Exception):
    """A request got no complete response: a failed connect, a reset, a timeout or a
    malformed reply."""


@dataclasses.dataclass
class HttpResponse:
    """A complete response, with lower-case header names."""

    status_code: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class _Connection:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def is_reusable(self, now: float) -> bool:
        """Tell whether the peer may still read a request on this connection.

        The event loop marks a connection closed when the peer sends FIN or RST, so
        the check reads flags only. A server may still close it while the request is
        on its way, which :meth:`HttpPool.request` handles by one more attempt.
        """
        return (
            now - self.idle_since < KEEPALIVE_EXPIRY_S
            and not self.writer.is_closing()
            and not self.reader.at_eof()
            and self.reader.exception() is None
        )

    def close(self) -> None:
        self.writer.close()


class _ResponseParser:
    """httptools callbacks that collect one response."""

    __slots__ = (
        "headers", "chunks", "size", "status_code", "keep_alive", "complete", "parser"
    )

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.size = 0
        self.status_code = 0
        self.keep_alive = False
        self.complete = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        # Repeated fields combine into one comma-separated value (RFC 9110 5.3).
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self.chunks.append(chunk)

    def on_message_complete(self) -> None:
        # llhttp resets its state once the callback returns, so the status and
        # keep-alive flag are read here.
        self.status_code = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True


class HttpPool:
    """Keep-alive connections to one ``http://host:port`` origin.

    ``timeout_s`` bounds a whole request, ``connect_timeout_s`` the TCP connect.
    """

    def __init__(
        self,
        endpoint: str,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(
                f"HttpPool needs an http://host[:port] URL, got {endpoint!r}"
            )
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path_prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._host_header = f"Host: {parts.netloc}\r\n"
        #: Connections opened so far, reused ones not counted again.
        self.n_connections_opened = 0
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> HttpResponse:
        """Send one request to ``target`` (a quoted path, with any query string).

        A request on a reused connection that the server closed before it replied is
        sent once more on a new connection. Raises :class:`HttpConnectionError` when
        no complete response arrives within ``timeout_s``.
        """
        if method not in IDEMPOTENT_METHODS:
            raise ValueError(f"HttpPool sends idempotent methods only, got {method}")
        if self._closed:
            raise HttpConnectionError("the connection pool is closed")
        head = self._request_head(method, target, len(body), headers)
        try:
            async with self._slots, asyncio.timeout(self.timeout_s):
                return await self._send(head, body, max_response_bytes)
        except TimeoutError:
            raise HttpConnectionError(
                f"{method} {target} timed out after {self.timeout_s:g} s"
            ) from None

    async def _send(
        self, head: bytes, body: bytes, max_response_bytes: int
    ) -> HttpResponse:
        connection, reused = await self._connection()
        try:
            return await self._exchange(connection, head, body, max_response_bytes)
        except _ClosedBeforeReply:
            if not reused:
                raise HttpConnectionError(NO_RESPONSE) from None
        # RFC 9112 9.6 lets a server close an idle connection at any time, so a
        # request may meet a connection that was closed as it was sent.
        connection, _ = await self._connection(fresh=True)
        try:
            return await self._exchange(connection, head, body, max_response_bytes)
        except _ClosedBeforeReply:
            raise HttpConnectionError(NO_RESPONSE) from None

    async def close(self) -> None:
        """Close the idle connections; later requests raise."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _request_head(
        self, method: str, target: str, length: int, headers: dict[str, str] | None
    ) -> bytes:
        lines = [f"{method} {self.path_prefix}{target} HTTP/1.1\r\n", self._host_header]
        if headers:
            lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        if length or method in ("PUT", "POST"):
            lines.append(f"Content-Length: {length}\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    async def _connection(self, fresh: bool = False) -> tuple[_Connection, bool]:
        """Return an idle connection, or a new one, and whether it was reused."""
        now = time.monotonic()
        while self._idle and not fresh:
            connection = self._idle.pop()
            if connection.is_reusable(now):
                return connection, True
            connection.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=READ_SIZE),
                self.connect_timeout_s,
            )
        except TimeoutError:
            raise HttpConnectionError(
                f"connect to {self.host}:{self.port} timed out after "
                f"{self.connect_timeout_s:g} s"
            ) from None
        except OSError as error:
            raise HttpConnectionError(
                f"cannot connect to {self.host}:{self.port}: {error}"
            ) from error
        self.n_connections_opened += 1
        return _Connection(reader, writer), False

    async def _exchange(
        self, connection: _Connection, head: bytes, body: bytes, max_bytes: int
    ) -> HttpResponse:
        """Send the request and read the reply, then pool or close the connection."""
        response = _ResponseParser()
        received = 0
        try:
            connection.writer.write(head)
            if body:
                connection.writer.write(body)
            await connection.writer.drain()
            while not response.complete:
                data = await connection.reader.read(READ_SIZE)
                if not data:
                    break
                received += len(data)
                response.parser.feed_data(data)
                if response.size > max_bytes:
                    connection.close()
                    raise HttpConnectionError(
                        f"response body exceeds the limit of {max_bytes} bytes"
                    )
        except (OSError, httptools.HttpParserError) as error:
            connection.close()
            if received == 0 and isinstance(error, ConnectionError):
                raise _ClosedBeforeReply from error
            raise HttpConnectionError(f"{type(error).__name__}: {error}") from error
        except BaseException:
            # Cancelled or failed mid-exchange: the connection's state is unknown.
            connection.close()
            raise

        if not response.complete:
            connection.close()
            if received == 0:
                raise _ClosedBeforeReply
            raise HttpConnectionError(
                f"the server closed the connection after {received} bytes of a response"
            )
        if response.keep_alive and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        body = b"".join(response.chunks)
        return HttpResponse(response.status_code, response.headers, body)


class _ClosedBeforeReply(Exception):
    """The connection ended before any byte of a response arrived."""
