"""What a task handler receives: the task, its working directory and its cores."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path


@dataclasses.dataclass
class TaskContext:
    """One attempt of one task, as a handler running in a pool process sees it.

    ``report_step(step, progress_percent)`` records a finished step: the worker stores
    the progress (0-100), the step name and the step's duration on the task row.
    """

    task_id: str
    task_type: str
    user_id: str
    job_dir: str
    attempt: int
    max_attempts: int
    worker_id: str
    workdir: Path
    cores: int
    report_step: Callable[[str, float], None]
