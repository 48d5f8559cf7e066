"""Run independent stage tasks at the same time, on the flow's task runner (threads, Dask, Ray).

`StageLog.run` (flows/summary.py) calls a stage in the flow's own thread, one after another.
Stages that do not depend on each other (the teacher's SFT answers and the teacher's preference
pairs, the explanations of several students, one evaluation per explainer) can instead be
submitted together:

    done = run_parallel(log, {
        "teacher_generate": (TEACHER_GENERATE, {"teacher": cfg.teacher, "cases": cases, ...}),
        "sample_pairs": (SAMPLE_PAIRS, {"pairs": cfg.pairs, "cases": cases, ...}),
    })
    sft, pairs = done["teacher_generate"], done["sample_pairs"]

Each call becomes a task run on the flow's task runner (flows/runners.py), with the same
content-addressed cache as `StageLog.run`, and is recorded in the same log (stage, state,
seconds, folder) in the order the calls were given. `seconds` is the wall time from submission
to completion, so parallel stages overlap.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.futures import PrefectFuture, as_completed

from flows.summary import StageLog
from recxplain.stage import bind_task


def submit_stage(stage_task: Task, artifacts_dir: Path, label: str | None = None, **inputs: Any) -> PrefectFuture:
    """Submit one stage task to the current flow's task runner, its task run named `label`;
    the future resolves to its folder."""
    return bind_task(stage_task, artifacts_dir, label).submit(Path(artifacts_dir), inputs)


def run_parallel(log: StageLog, calls: dict[str, tuple[Task, dict[str, Any]]]) -> dict[str, Path]:
    """Submit every (task, inputs) at once, wait for all, record them in `log`; label -> folder.

    When one fails, the others still finish (and are cached for the rerun), then the first
    failure in `calls` order is raised with the stage's own exception.
    """
    started = time.perf_counter()
    futures = {label: submit_stage(task, log.artifacts_dir, label, **inputs) for label, (task, inputs) in calls.items()}
    seconds: dict[str, float] = {}
    labels = {future.task_run_id: label for label, future in futures.items()}
    for future in as_completed(list(futures.values())):
        seconds[labels[future.task_run_id]] = round(time.perf_counter() - started, 2)
    results: dict[str, Path] = {}
    failures: list[str] = []
    for label, future in futures.items():
        future.wait()  # records the final state in the future (else `.state` asks the API)
        state = future.state
        log.rows.append(
            {
                "stage": label,
                "state": state.name,
                "seconds": seconds[label],
                "folder": None if state.is_failed() else str(state.result()),
            }
        )
        if state.is_failed():
            failures.append(label)
        else:
            results[label] = state.result()
    if failures:
        futures[failures[0]].result()  # raises the stage's own exception
    return results
