"""Toy stages for the task-runner tests (a module of its own: stage keys hash a module's source)."""

import json
import os
import time
from pathlib import Path

from pydantic import BaseModel


class Job(BaseModel):
    value: int = 1
    sleep_s: float = 0.0


def timed_double(out: Path, *, job: Job) -> None:
    """Write value * 2 with the process id and the (start, end) times of the work."""
    started = time.time()
    time.sleep(job.sleep_s)
    (out / "result.json").write_text(
        json.dumps({"value": job.value * 2, "pid": os.getpid(), "start": started, "end": time.time()})
    )
