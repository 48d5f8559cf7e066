"""Evaluate students trained by an earlier run, under this config's evaluation settings.

    python -m flows.evaluate_only --config configs/default.yaml --set evaluation.bootstrap=5000

Nothing is trained and no AI feedback is generated: the students (SFT, ORPO, DPO rounds) are the
folders that the run named `runtime.run_name` recorded in `<artifacts>/runs/<run_name>/summary.json`
(the `evaluate` deployment takes another run's name as `students_from`). Data, recommender,
paths and cases come from the pipeline's cached stages (recomputed only when their config
changed), then the held-out explanations, metrics, report and arena bundle are written again.
The run's summary goes to `runs/<run_name>-evaluate/`, next to the training run's. With
`judge.kind: discriminator` the discriminator learns from the judged pairs that run recorded.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import flows  # noqa: F401  (quiet offline Prefect settings, before prefect is imported)

# isort: split
from prefect import flow

from flows.cli import run_flow
from flows.pipeline import BUILD_CASES, evaluation_stages, evidence_stages
from flows.runners import ConfigTaskRunner
from flows.summary import StageLog, publish_run_summary
from recxplain.config import load_config
from recxplain.explainers import STUDENT, student_explainers
from recxplain.stage import is_intact


def trained_students(artifacts_dir: Path, run_name: str, wanted: list[str]) -> dict[str, Path]:
    """The student folders named `wanted` that run `run_name` trained; a clear error if one is
    missing or was altered since."""
    summary = Path(artifacts_dir) / "runs" / run_name / "summary.json"
    if not summary.exists():
        raise FileNotFoundError(f"{summary}: no such run; train the students first (make flow) or set students_from")
    recorded = json.loads(summary.read_text()).get("artifacts", {})
    students = {name: Path(folder) for name, folder in recorded.items() if STUDENT.fullmatch(name)}
    missing = [name for name in wanted if name not in students]
    if missing:
        raise ValueError(f"{summary}: run {run_name!r} has no student(s) {missing}; it has {sorted(students)}")
    altered = [str(students[name]) for name in wanted if not is_intact(students[name])]
    if altered:
        raise ValueError(f"{summary}: student folder(s) deleted or altered since the run: {altered}")
    return {name: students[name] for name in wanted}


def judged_pairs_of_run(artifacts_dir: Path, run_name: str) -> dict[str, Path]:
    """The judge_pairs folders (`preferences`, `preferences_rN`) that run `run_name` recorded,
    for the discriminator to learn from; a clear error if there are none or one was altered."""
    summary = Path(artifacts_dir) / "runs" / run_name / "summary.json"
    recorded = json.loads(summary.read_text()).get("artifacts", {}) if summary.exists() else {}
    judged = {name: Path(folder) for name, folder in recorded.items() if re.fullmatch(r"preferences(_r\d+)?", name)}
    if not judged:
        raise ValueError(f"{summary}: run {run_name!r} recorded no judged pairs (preferences) for judge.kind "
                         "'discriminator' to learn from; run the pipeline first")
    altered = [str(folder) for folder in judged.values() if not is_intact(folder)]
    if altered:
        raise ValueError(f"{summary}: judged pairs deleted or altered since the run: {altered}")
    return judged


@flow(name="recxplain-evaluate", log_prints=True, task_runner=ConfigTaskRunner())
def evaluate_only(
    config_path: str = "configs/default.yaml", overrides: list[str] | None = None, students_from: str | None = None
) -> str:
    """Explanations, metrics and report for already trained students; return the run's folder."""
    overrides = overrides or []
    cfg = load_config(config_path, overrides)
    if cfg.task != "explain":
        raise ValueError(f"{config_path}: evaluate_only evaluates explanation students (task: explain), "
                         f"not task {cfg.task!r}; run the pipeline instead")
    log = StageLog(cfg.runtime.artifacts_dir)
    students = trained_students(
        cfg.runtime.artifacts_dir,
        students_from or cfg.runtime.run_name,
        student_explainers(cfg.evaluation, cfg.training),
    )
    artifacts = evidence_stages(cfg, log)
    artifacts["cases"] = log.run(
        BUILD_CASES, cases=cfg.cases, data=artifacts["data"], recommender=artifacts["recommender"],
        paths=artifacts["paths"],
    )
    judged = (judged_pairs_of_run(cfg.runtime.artifacts_dir, students_from or cfg.runtime.run_name)
              if cfg.judge.kind == "discriminator" else None)
    artifacts |= students | evaluation_stages(cfg, log, artifacts["cases"], students, judged=judged,
                                                              paths=artifacts["paths"])
    artifacts = log.folders(artifacts)
    runtime = cfg.runtime.model_copy(update={"run_name": f"{cfg.runtime.run_name}-evaluate"})
    run_dir = publish_run_summary(cfg.model_copy(update={"runtime": runtime}), config_path, overrides, log, artifacts)
    return str(run_dir)


def main(argv: list[str] | None = None) -> int:
    return run_flow(evaluate_only, argv, prog="python -m flows.evaluate_only", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
