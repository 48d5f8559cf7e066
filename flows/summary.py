"""Run bookkeeping shared by the flows: run stages in order, log what ran and what was cached,
and publish the run summary as files and as a Prefect markdown artifact."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from prefect import Task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

import flows.console
from recxplain.config import Config
from recxplain.stage import run_task


@dataclass
class StageLog:
    """Runs stage tasks one after another and records (stage, label, state, seconds, folder)."""

    artifacts_dir: Path
    rows: list[dict] = field(default_factory=list)

    def run(self, stage_task: Task, label: str | None = None, **inputs) -> Path:
        label = label or stage_task.name
        console = flows.console.CONSOLE
        number = console.started(label) if console else 0
        started = time.perf_counter()
        state = run_task(stage_task, self.artifacts_dir, label, **inputs)
        seconds = time.perf_counter() - started
        if console:
            console.finished(number, label, state.name, seconds)
        self.rows.append(
            {
                "stage": label,
                "state": state.name,
                "seconds": round(seconds, 2),
                "folder": None if state.is_failed() else str(state.result()),
            }
        )
        if state.is_failed():
            error = state.result(raise_on_failure=False)
            if isinstance(error, BaseException):
                error.stage = label  # for the command line's one-line message (flows/cli.py)
                raise error
        return state.result()  # raises the stage's own exception when it failed

    @property
    def cached(self) -> list[str]:
        return [r["stage"] for r in self.rows if r["state"] == "Cached"]

    @property
    def executed(self) -> list[str]:
        return [r["stage"] for r in self.rows if r["state"] != "Cached"]


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
