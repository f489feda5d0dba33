"""Mirror a task's step checkpoints between its output folder and storage.

The pipeline keeps each finished step in ``OUTPUT_DIR/.work/<step>/``; a worker copies it
to ``PREFIX/work/<step>/`` as soon as the step finishes, and a retried attempt copies
them back before it starts, so it resumes after the last finished step.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from peptide_opt.settings import Settings
from peptide_opt.storage.factory import get_storage
from peptide_opt.storage.keys import join_key

logger = logging.getLogger(__name__)

WORK_PREFIX = "work"
LOCAL_WORK_DIR = ".work"
DONE_MARKER = "done"


def work_prefix(prefix: str) -> str:
    """Return ``PREFIX/work``, where a task's checkpoints live in storage."""
    return join_key(prefix, WORK_PREFIX)


async def upload_checkpoint(storage, prefix: str, step: str, folder: Path) -> int:
    """Upload one step folder, its ``done`` marker last; return the number of files."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    marker = folder / DONE_MARKER
    ordered = [path for path in files if path != marker] + (
        [marker] if marker in files else []
    )
    for path in ordered:
        relative = path.relative_to(folder).as_posix()
        await storage.upload_file(path, join_key(work_prefix(prefix), step, relative))
    return len(ordered)


async def upload_job_record(storage, prefix: str, output_dir: Path) -> None:
    """Upload ``.work/job.json`` (the fingerprint the checkpoints belong to)."""
    record = output_dir / LOCAL_WORK_DIR / "job.json"
    if record.is_file():
        await storage.upload_file(record, join_key(work_prefix(prefix), "job.json"))


async def download_checkpoints(storage, prefix: str, output_dir: Path) -> list[str]:
    """Copy every complete step checkpoint of ``PREFIX/work/`` into ``output_dir/.work``.

    A step whose ``done`` marker is missing (its upload was cut short) is skipped.
    Returns the steps restored.
    """
    root = work_prefix(prefix)
    keys = await storage.list_keys(root)
    local_root = output_dir / LOCAL_WORK_DIR
    by_step: dict[str, list[str]] = {}
    for key in keys:
        relative = key[len(root) + 1 :]
        if relative == "job.json":
            local_root.mkdir(parents=True, exist_ok=True)
            await storage.download_file(key, local_root / "job.json")
            continue
        step, _, rest = relative.partition("/")
        if rest:
            by_step.setdefault(step, []).append(rest)
    restored = []
    for step, names in sorted(by_step.items()):
        if DONE_MARKER not in names:
            continue
        for name in names:
            await storage.download_file(
                join_key(root, step, name), local_root / step / name
            )
        restored.append(step)
    return restored


async def delete_checkpoints(storage, prefix: str) -> int:
    """Remove ``PREFIX/work/``; return the number of objects deleted."""
    return await storage.delete_prefix(work_prefix(prefix))


class CheckpointMirror:
    """Synchronous calls for a task process: restore, upload per step, clean up."""

    def __init__(self, settings: Settings, prefix: str, output_dir: Path) -> None:
        self.settings = settings
        self.prefix = prefix
        self.output_dir = output_dir

    def _run(self, function, *args):
        async def call():
            async with get_storage(self.settings) as storage:
                return await function(storage, *args)

        return asyncio.run(call())

    def restore(self) -> list[str]:
        steps = self._run(download_checkpoints, self.prefix, self.output_dir)
        if steps:
            logger.info(
                "checkpoints_restored steps=%s",
                ",".join(steps),
                extra={"prefix": self.prefix},
            )
        return steps

    def upload(self, step: str, folder: Path) -> None:
        self._run(upload_job_record, self.prefix, self.output_dir)
        self._run(upload_checkpoint, self.prefix, step, folder)

    def delete(self) -> int:
        return self._run(delete_checkpoints, self.prefix)
