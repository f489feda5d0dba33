"""Step checkpoints mirrored to storage: upload per step, restore, delete."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from peptide_opt.storage.checkpoints import (
    delete_checkpoints,
    download_checkpoints,
    upload_checkpoint,
    upload_job_record,
)


@pytest.fixture
def prefix() -> str:
    return f"jobs/peptide_optimization/ck-{uuid.uuid4().hex[:12]}"


def make_step(output_dir: Path, step: str, done: bool = True) -> Path:
    folder = output_dir / ".work" / step
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(f'{{"step": "{step}"}}\n')
    if done:
        (folder / "done").write_text("")
    return folder


async def test_checkpoints_round_trip(object_storage, prefix, tmp_path):
    source = tmp_path / "attempt1"
    (source / ".work").mkdir(parents=True)
    (source / ".work" / "job.json").write_text('{"fingerprint": "abc"}\n')
    for step in ("prepare", "model", "dock"):
        await upload_checkpoint(object_storage, prefix, step, make_step(source, step))
    await upload_job_record(object_storage, prefix, source)

    target = tmp_path / "attempt2"
    restored = await download_checkpoints(object_storage, prefix, target)

    assert restored == ["dock", "model", "prepare"]
    assert (target / ".work" / "job.json").read_text() == '{"fingerprint": "abc"}\n'
    assert (target / ".work" / "dock" / "state.json").read_text() == '{"step": "dock"}\n'
    assert (target / ".work" / "dock" / "done").exists()


async def test_step_without_done_marker_skipped(object_storage, prefix, tmp_path):
    source = tmp_path / "attempt1"
    await upload_checkpoint(object_storage, prefix, "prepare", make_step(source, "prepare"))
    # An upload cut short before its marker: the step must not count as finished.
    await upload_checkpoint(object_storage, prefix, "dock", make_step(source, "dock", done=False))

    restored = await download_checkpoints(object_storage, prefix, tmp_path / "attempt2")

    assert restored == ["prepare"]
    assert not (tmp_path / "attempt2" / ".work" / "dock").exists()


async def test_delete_checkpoints_removes_work_prefix(object_storage, prefix, tmp_path):
    source = tmp_path / "attempt1"
    await upload_checkpoint(object_storage, prefix, "prepare", make_step(source, "prepare"))
    await object_storage.write_text(f"{prefix}/output/result.csv", "Index\n")

    deleted = await delete_checkpoints(object_storage, prefix)

    assert deleted == 2  # state.json and done
    assert await object_storage.list_keys(f"{prefix}/work") == []
    # Outputs beside the checkpoints stay.
    assert await object_storage.exists(f"{prefix}/output/result.csv")
