"""Run bookkeeping shared by the flows: submit stages to the task runner, log what ran and what was cached,
and publish the run summary as files and as a Prefect markdown artifact."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import Task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run

import flows.console
from recxplain.config import Config
from recxplain.stage import MANIFEST, bind_task


@dataclass
class StageLog:
    """Submits stage tasks to the flow's task runner and records (stage, state, seconds, folder)
    of each, in the order they were submitted (the rows of the run summary).

    `submit` returns a Prefect future at once. A future among another stage's inputs (also inside
    a dict, such as `students`) is resolved by Prefect before that stage runs, and is recorded as
    its dependency: a flow lays out its stage graph and independent branches run side by side on
    the runner (threads, Dask, Ray). `run` submits one stage and waits for it.
    """

    artifacts_dir: Path
    rows: list[dict] = field(default_factory=list)
    # task run id -> (row, console number, time submitted, future), until recorded; then -> row
    pending: dict = field(default_factory=dict)
    recorded: dict = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)  # label -> the stage's own exception

    def submit(self, stage_task: Task, label: str | None = None, **inputs) -> PrefectFuture:
        """Submit one stage (its task run named `label`); the future resolves to its folder."""
        label = label or stage_task.name
        console = flows.console.CONSOLE
        number = console.started(label) if console else 0
        row = {"stage": label, "state": "Pending", "seconds": None, "folder": None}
        self.rows.append(row)
        future = bind_task(stage_task, self.artifacts_dir, label).submit(Path(self.artifacts_dir), inputs)
        self.pending[future.task_run_id] = (row, number, time.perf_counter(), future)
        return future

    def run(self, stage_task: Task, label: str | None = None, **inputs) -> Path:
        """Submit one stage and wait for it: its folder, or the stage's own exception."""
        return self.result(self.submit(stage_task, label, **inputs))

    def result(self, future: PrefectFuture) -> Path:
        """Wait for a submitted stage: its folder, or the stage's own exception."""
        row = self._record(future)
        if row["stage"] in self.errors:
            raise self.errors[row["stage"]]
        return future.result()

    def wait(self) -> None:
        """Wait for every submitted stage, recording each as it finishes. When some failed, the
        others still finish (and are cached for the rerun); then the first failure in submission
        order is raised, as the stage's own exception."""
        for future in as_completed([future for *_, future in self.pending.values()]):
            self._record(future)
        for row in self.rows:
            if row["stage"] in self.errors:
                raise self.errors[row["stage"]]

    def folders(self, named: dict) -> dict[str, Path]:
        """`named` with each future replaced by its stage's folder, once every submitted stage is done."""
        self.wait()
        return {key: self.result(value) if isinstance(value, PrefectFuture) else value for key, value in named.items()}

    def _record(self, future: PrefectFuture) -> dict:
        if future.task_run_id in self.recorded:
            return self.recorded[future.task_run_id]
        future.wait()  # records the final state in the future (else `.state` asks the API)
        row, number, submitted, _ = self.pending.pop(future.task_run_id)
        self.recorded[future.task_run_id] = row
        state = future.state
        folder = str(state.result()) if state.is_completed() else None
        row.update(state=state.name, seconds=stage_seconds(state, submitted), folder=folder)
        if state.is_failed():
            error = state.result(raise_on_failure=False)
            if not isinstance(error, BaseException):
                error = RuntimeError(f"stage {row['stage']}: {state.message}")
            error.stage = row["stage"]  # for the command line's one-line message (flows/cli.py)
            self.errors[row["stage"]] = error
        console = flows.console.CONSOLE
        if console:
            console.finished(number, row["stage"], state.name, row["seconds"])
        return row

    @property
    def cached(self) -> list[str]:
        return [r["stage"] for r in self.rows if r["state"] == "Cached"]

    @property
    def executed(self) -> list[str]:
        return [r["stage"] for r in self.rows if r["state"] != "Cached"]


def stage_seconds(state, submitted: float) -> float:
    """Seconds the stage's function ran (its manifest's, without the wait for its inputs or a heavy
    slot); 0 for a stage loaded from cache; for a failed one, the wall time since it was submitted."""
    if state.name == "Cached":
        return 0.0
    if state.is_completed():
        return json.loads((Path(state.result()) / MANIFEST).read_text())["seconds"]
    return round(time.perf_counter() - submitted, 2)


def summary_markdown(cfg: Config, config_path: str, overrides: list[str], log: StageLog) -> str:
    total = sum(r["seconds"] for r in log.rows)
    lines = [
        f"# recxplain run `{cfg.runtime.run_name}`",
        "",
        f"config `{config_path}`" + (f", overrides `{' '.join(overrides)}`" if overrides else ""),
        f"; {len(log.executed)} stage(s) executed, {len(log.cached)} cached, {total:.1f} s in stages.",
        "",
        "| stage | state | seconds | artifact |",
        "|---|---|---:|---|",
    ]
    for row in log.rows:
        lines.append(f"| {row['stage']} | {row['state']} | {row['seconds']:.2f} | `{row['folder']}` |")
    return "\n".join(lines) + "\n"


def publish_run_summary(
    cfg: Config, config_path: str, overrides: list[str], log: StageLog, artifacts: dict[str, Path]
) -> Path:
    """Write runs/<run_name>/summary.{md,json} and the same markdown as a Prefect artifact."""
    run_dir = Path(cfg.runtime.artifacts_dir) / "runs" / cfg.runtime.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    markdown = summary_markdown(cfg, config_path, overrides, log)
    (run_dir / "summary.md").write_text(markdown)
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "config": config_path,
                "overrides": overrides,
                "stages": log.rows,
                "artifacts": {k: str(v) for k, v in artifacts.items()},
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "flow_run_id": flow_run.id,  # the run's page in the Prefect UI
            },
            indent=2,
        )
    )
    create_markdown_artifact(key="run-summary", markdown=markdown, description="stages run and cached")
    if "report" in artifacts:  # the run's results, next to its summary and in the Prefect UI
        report = Path(artifacts["report"])
        for name in ("report.html", "report.md", "metrics_table.json"):
            if (report / name).exists():
                shutil.copyfile(report / name, run_dir / name)
        html = (run_dir / "report.html").resolve()
        # A path, not a file:// link: a browser on the UI's http:// page will not open file links.
        where = f"The full report (one self-contained HTML page): `{html}` on the machine that ran the flow.\n\n"
        if (report / "report.md").exists():
            create_markdown_artifact(
                key="report", markdown=where + (report / "report.md").read_text(), description="results"
            )
        if (report / "metrics_table.json").exists():
            create_table_artifact(
                key="metrics", table=json.loads((report / "metrics_table.json").read_text()),
                description="every explainer on every metric, with 95% bootstrap intervals",
            )
        create_markdown_artifact(key="report-html", markdown=where, description="where the HTML report is")
    return run_dir
