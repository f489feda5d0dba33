"""The procrastinate app and the pgqueuer factory that the benchmarks run, with the
same handlers as peptide-opt's test handlers: a no-op that may append its start time
(``key unix_time``) to a file."""

from __future__ import annotations

import asyncio
import json
import os
import time

import asyncpg
import procrastinate
from pgqueuer import Job, PgQueuer

NOOP_ENTRYPOINT = "bench_noop"


def append_start(key: str, path: str | None) -> None:
    if not path:
        return
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{key} {time.time():.6f}\n".encode())
    finally:
        os.close(descriptor)


procrastinate_app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=os.environ.get("BENCH_DATABASE_URL", "")
    )
)


@procrastinate_app.task(name=NOOP_ENTRYPOINT)
async def procrastinate_noop(key: str = "", log: str = "") -> None:
    append_start(key, log)


async def create_pgqueuer() -> PgQueuer:
    connection = await asyncpg.connect(os.environ["BENCH_DATABASE_URL"])
    pgq = PgQueuer.from_asyncpg_connection(connection)

    @pgq.entrypoint(NOOP_ENTRYPOINT)
    async def pgqueuer_noop(job: Job) -> None:
        parameters = json.loads(job.payload) if job.payload else {}
        append_start(parameters.get("key", ""), parameters.get("log"))

    return pgq


async def run_pgqueuer_worker() -> None:
    """Run one pgqueuer worker that claims one job at a time."""
    pgq = await create_pgqueuer()
    await pgq.run(batch_size=1)


if __name__ == "__main__":
    # NOTE: pgqueuer 1.6.0's `pgq run` fails before it starts (AttributeError: 'str'
    # object has no attribute 'name' in logconfig.setup_fancy_logger), so the
    # benchmarks start pgqueuer workers through its Python API instead.
    asyncio.run(run_pgqueuer_worker())
