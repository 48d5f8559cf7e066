"""Scheduled retraining: bring the recommender, its evidence and the explanations up to date.

    python -m flows.retrain --config configs/default.yaml --set retrain.min_new_ratings=5000

The `recxplain-retrain` deployment (deployments/prefect.yaml) runs this flow on the cron
schedule of the config's `retrain` section. One run:

1. re-prepares the data when a source file changed (prepare_data's key includes the content hash
   of the source files), then refits the recommender and mines paths again. These are the
   pipeline's own cached stages: when nothing changed, nothing is recomputed, and a changed file
   recomputes only the stages whose input content changed;
2. builds the cases of the new data (task `explain`; for task `recommend` the RecLAIF stages
   run on the new evidence instead, as in the pipeline, and the run ends there). With
   `retrain.evidence_only` the run ends after step 1: no language-model stage runs;
3. compares the new interactions with those the current student learned from. Only when the
   new ratings reach `retrain.min_new_ratings`, or `retrain.min_new_fraction` of all ratings,
   is the student trained again (teacher answers, judged pairs, SFT, ORPO, DPO rounds) on the
   new cases; otherwise the student stays the one trained on the earlier cases (its stages load
   from cache). The first run always trains one;
4. writes the held-out explanations of the new cases with the current student, evaluates them,
   and writes the report and arena bundle.

What the student learned from lives in `<artifacts>/retrain/<run_name>/state.json`; every run
appends its decision to `history.jsonl` there and publishes it as a Prefect markdown artifact.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import flows  # noqa: F401  (quiet offline Prefect settings, before prefect is imported)

# isort: split
import polars as pl
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.cli import run_flow
from flows.console import note
from flows.pipeline import (
    BUILD_CASES,
    evaluation_stages,
    evidence_stages,
    feedback_stages,
    student_stages,
)
from flows.reclaif import reclaif_stages
from flows.runners import ConfigTaskRunner
from flows.summary import StageLog, publish_run_summary
from recxplain.config import Config, RetrainConfig, load_config
from recxplain.stage import is_intact

# A rating is "the same" when user, item, value and time all match (a re-rating is new).
RATING_KEY = ["user_id", "item_id", "rating", "timestamp"]


@dataclass(frozen=True)
class DataChange:
    """Ratings of the new data that are not in an earlier data artifact."""

    new_ratings: int
    total_ratings: int

    @property
    def fraction(self) -> float:
        return self.new_ratings / self.total_ratings if self.total_ratings else 0.0


@dataclass(frozen=True)
class StudentDecision:
    """Whether the student is trained again, why, and on which cases."""

    train: bool
    reason: str
    cases: str
    change: DataChange | None


def compare_data(before: Path, after: Path) -> DataChange:
    """Count the ratings of `after/interactions.parquet` that are not in `before`'s."""
    new = pl.scan_parquet(Path(after) / "interactions.parquet").select(RATING_KEY)
    old = pl.scan_parquet(Path(before) / "interactions.parquet").select(RATING_KEY)
    added = new.join(old, on=RATING_KEY, how="anti").select(pl.len()).collect().item()
    total = new.select(pl.len()).collect().item()
    return DataChange(new_ratings=added, total_ratings=total)


def decide_student(retrain: RetrainConfig, student: dict | None, data: Path, cases: Path) -> StudentDecision:
    """Train the student again on `cases`, or keep the one recorded in `student` (see module doc).

    `student` is the state's record of the current student: the `data` and `cases` folders it
    learned from (None before the first training).
    """
    if student is None:
        return StudentDecision(
            True, "no student recorded by an earlier retraining run: the student stages run on the current "
            "cases (what an earlier run trained on the same cases loads from cache)", str(cases), None,
        )
    for kind in ("data", "cases"):
        if not is_intact(Path(student[kind])):
            return StudentDecision(
                True, f"the {kind} the student learned from ({student[kind]}) is no longer in the artifacts",
                str(cases), None,
            )
    change = compare_data(Path(student["data"]), data)
    if change.new_ratings >= retrain.min_new_ratings or change.fraction >= retrain.min_new_fraction:
        return StudentDecision(
            True,
            f"{change.new_ratings:,} new ratings ({change.fraction:.1%}) reach the threshold "
            f"({retrain.min_new_ratings:,} or {retrain.min_new_fraction:.1%})",
            str(cases),
            change,
        )
    return StudentDecision(
        False,
        f"{change.new_ratings:,} new ratings ({change.fraction:.1%}) are below the threshold "
        f"({retrain.min_new_ratings:,} or {retrain.min_new_fraction:.1%}): the student stays",
        student["cases"],
        change,
    )


def state_dir(cfg: Config) -> Path:
    return Path(cfg.runtime.artifacts_dir) / "retrain" / cfg.runtime.run_name


def read_state(folder: Path) -> dict:
    path = folder / "state.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete it to start the retraining history over") from None


def write_state(folder: Path, state: dict, record: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / "state.json.partial"
    partial.write_text(json.dumps(state, indent=2))
    partial.replace(folder / "state.json")  # atomic: a killed run leaves the old state
    with open(folder / "history.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")


def data_source(cfg: Config) -> str:
    return (
        "MovieLens-100K (embedded)" if cfg.data.source == "ml-100k" else f"{cfg.data.source} files in {cfg.data.path}"
    )


def student_outcome(decision: StudentDecision, recorded: dict | None, rows: list[dict]) -> dict:
    """What happened to the student in this run, from the decision and the states of the
    student's stages (`rows`: teacher answers, pairs, judging and training, in order)."""
    ran = [r["stage"] for r in rows if r["state"] != "Cached"]
    cached = [r["stage"] for r in rows if r["state"] == "Cached"]
    training_cached = [name for name in cached if name.startswith("train_")]
    if recorded is not None:
        before = f"trained {recorded['trained']} on `{recorded['cases']}` (recorded by retraining)"
    elif training_cached:
        before = "none recorded by retraining, but an earlier run had trained one on these cases " \
                 f"({', '.join(training_cached)} loaded from cache)"
    else:
        before = "none"
    if not ran:
        done = "every student stage loaded from cache: the student in use was trained earlier"
    elif decision.train:
        done = f"trained: {', '.join(ran)} ran" + (f"; {', '.join(cached)} loaded from cache" if cached else "")
    else:
        done = f"kept, but {', '.join(ran)} ran (their cached folders were missing or altered)"
    return {"existed_before": recorded is not None or bool(training_cached), "before": before,
            "ran": ran, "cached": cached, "outcome": done}


def decision_markdown(record: dict) -> str:
    since = record["since_previous_run"]
    lines = [
        f"# Retraining `{record['run_name']}`",
        "",
        f"- data: {record['source']}, {record['ratings']:,} ratings, `{record['data']}` "
        f"({'prepared again' if record['data_prepared'] else 'unchanged: loaded from cache'})",
        "- since the previous retraining run: "
        + (f"{since['new_ratings']:,} of {since['total_ratings']:,} ratings are new" if since
           else "no earlier retraining run of this name is recorded (or its data is gone)"),
    ]
    student = record["student"]
    if student is None:
        lines.append("- student: not part of this run (" + (
            "retrain.evidence_only" if record["evidence_only"] else "task recommend: the RecLAIF stages") + ")")
    else:
        lines += [
            f"- student before this run: {student['before']}",
            f"- decision: {'train again' if student['train'] else 'keep it'}: {student['reason']}",
            f"- student stages: {student['outcome']}",
        ]
    lines.append(
        f"- stages executed: {', '.join(record['executed']) or 'none'}; "
        f"cached: {', '.join(record['cached']) or 'none'}"
    )
    return "\n".join(lines) + "\n"


@flow(name="recxplain-retrain", log_prints=True, task_runner=ConfigTaskRunner())
def retrain(config_path: str = "configs/default.yaml", overrides: list[str] | None = None) -> str:
    """Bring data, recommender, evidence and explanations up to date; return the run's folder."""
    overrides = overrides or []
    cfg = load_config(config_path, overrides)
    log = StageLog(cfg.runtime.artifacts_dir)
    folder = state_dir(cfg)
    state = read_state(folder)

    artifacts = evidence_stages(cfg, log)
    previous = state.get("previous")
    since_previous = (
        compare_data(Path(previous["data"]), artifacts["data"])
        if previous and is_intact(Path(previous["data"]))
        else None
    )
    decision, student = None, None
    if cfg.task == "recommend" and not cfg.retrain.evidence_only:
        artifacts |= reclaif_stages(cfg, log, artifacts)
    if cfg.task == "explain" and not cfg.retrain.evidence_only:
        artifacts["cases"] = log.run(
            BUILD_CASES, cases=cfg.cases, data=artifacts["data"], recommender=artifacts["recommender"],
            paths=artifacts["paths"],
        )
        decision = decide_student(cfg.retrain, state.get("student"), artifacts["data"], artifacts["cases"])
        note(f"student: {'train again' if decision.train else 'keep it'}: {decision.reason}")
        student_cases = Path(decision.cases)
        first_student_row = len(log.rows)
        feedback = feedback_stages(cfg, log, student_cases)
        students = student_stages(cfg, log, student_cases, feedback)
        student_rows = log.rows[first_student_row:]  # filled in as the stages finish
        artifacts |= feedback | students | evaluation_stages(cfg, log, artifacts["cases"], students,
                                                             judged=feedback, paths=artifacts["paths"])
        artifacts = log.folders(artifacts)
        student = student_outcome(decision, state.get("student"), student_rows)
        if decision.train:
            state["student"] = {
                "data": str(artifacts["data"]), "cases": str(artifacts["cases"]),
                "trained": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
    finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    state["previous"] = {"data": str(artifacts["data"]), "finished": finished}
    record = {
        "run_name": cfg.runtime.run_name,
        "finished": finished,
        "data": str(artifacts["data"]),
        "source": data_source(cfg),
        "ratings": pl.scan_parquet(artifacts["data"] / "interactions.parquet").select(pl.len()).collect().item(),
        "data_prepared": log.rows[0]["state"] != "Cached",
        "evidence_only": cfg.retrain.evidence_only,
        "since_previous_run": asdict(since_previous) if since_previous else None,
        "student": None if decision is None else {
            "train": decision.train, "reason": decision.reason, "cases": decision.cases,
            "change": asdict(decision.change) if decision.change else None,
        } | student,
        "executed": log.executed,
        "cached": log.cached,
    }
    write_state(folder, state, record)
    create_markdown_artifact(
        key="retrain-decision", markdown=decision_markdown(record), description="what the retraining run did and why"
    )
    run_dir = publish_run_summary(cfg, config_path, overrides, log, artifacts)
    (run_dir / "retrain.json").write_text(json.dumps(record, indent=2))
    return str(run_dir)


def main(argv: list[str] | None = None) -> int:
    return run_flow(retrain, argv, prog="python -m flows.retrain", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
