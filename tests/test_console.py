"""What a person sees: the command line's stage lines and error messages (flows/cli.py,
flows/console.py), task runs named by stage label, the report and retraining artifacts in the
Prefect UI, and the CI rule for skipped browser tests."""

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter

from flows.cli import error_line, parse_arguments, run_flow
from flows.console import LIBRARY_LOGGERS, planned_stages, set_library_output
from flows.retrain import StudentDecision, decision_markdown, retrain, student_outcome
from flows.summary import StageLog, publish_run_summary
from recxplain.config import Config, RuntimeConfig, load_config
from recxplain.stage import stage
from tasks.data import DataError
from tests.stage_toys import Numbers, make_numbers
from tests.test_data import write_ml_latest
from tests.test_retrain import MOVIES, ratings_csv

ROOT = Path(__file__).resolve().parent.parent
MAKE = stage(make_numbers)


def reject_ratings(out: Path, *, numbers: Numbers, source: Path) -> None:
    raise DataError("ratings.csv: line 3: column 'rating' must be Float64, got 'good'")


def crash(out: Path, *, numbers: Numbers, source: Path) -> None:
    raise KeyError("a bug, not bad input")


REJECT = stage(reject_ratings)
CRASH = stage(crash)


@flow(name="toy-cli")
def failing_flow(config_path: str, overrides: list[str] | None = None) -> str:
    cfg = load_config(config_path, overrides or [])
    log = StageLog(cfg.runtime.artifacts_dir)
    made = log.run(MAKE, numbers=Numbers())
    failing = CRASH if cfg.runtime.run_name == "crash" else REJECT
    log.run(failing, label="read_ratings_r1", numbers=Numbers(), source=made)
    return "never"


@pytest.fixture
def prefect_logger_level():
    """Verbose runs change the libraries' log levels in this process; later tests get them back."""
    loggers = [logging.getLogger(name) for name in ("prefect", *LIBRARY_LOGGERS)]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)
    set_library_output(verbose=False)


def no_prefect_failure_logs(err: str) -> bool:
    """No traceback and none of Prefect's failure lines (`12:00:01.123 | ERROR | Task run ...`).
    Only those: a temporary Prefect server on a busy machine may warn on this stderr too."""
    return "Traceback" not in err and "| ERROR" not in err and "Finished in state Failed" not in err


def toy_config(tmp_path: Path, run_name: str = "toy") -> str:
    path = tmp_path / "toy.yaml"
    path.write_text(f"runtime: {{artifacts_dir: {tmp_path / 'artifacts'}, run_name: {run_name}}}\n")
    return str(path)


def test_set_keeps_spaces_and_overrides_split_like_a_shell():
    args = parse_arguments(["--set", "retrain.cron=15 4 * * *", "--set", "recommender.k=20"], "x", "x")
    assert args.overrides == ["retrain.cron=15 4 * * *", "recommender.k=20"]
    assert load_config("configs/smoke.yaml", args.overrides).retrain.cron == "15 4 * * *"
    # What `make flow OVERRIDES='...'` passes.
    args = parse_arguments(["--overrides", 'recommender.k=20 "retrain.cron=15 4 * * *"'], "x", "x")
    assert args.overrides == ["recommender.k=20", "retrain.cron=15 4 * * *"]
    assert parse_arguments(["--overrides", ""], "x", "x").overrides == []


def test_a_stage_failing_on_bad_input_ends_the_run_with_one_line(tmp_path, capfd, prefect_logger_level):
    code = run_flow(failing_flow, ["--config", toy_config(tmp_path)], "toy", "toy")
    out, err = capfd.readouterr()
    assert code == 1
    assert err.splitlines()[-1] == (
        "error: stage read_ratings_r1 failed: ratings.csv: line 3: column 'rating' must be Float64, got 'good'"
    )
    assert no_prefect_failure_logs(err)
    assert re.fullmatch(
        r"\[1\] make_numbers \.\.\.\n\[1\] make_numbers \.\.\. \d+ s\n"
        r"\[2\] read_ratings_r1 \.\.\.\n\[2\] read_ratings_r1 \.\.\. failed after \d+ s\n", out
    ), out

    # A bug (not bad input) names its type and where the traceback is; verbose prints it.
    config = toy_config(tmp_path, run_name="crash")
    assert run_flow(failing_flow, ["--config", config], "toy", "toy") == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines() == [
        "error: stage read_ratings_r1 failed: KeyError: 'a bug, not bad input'",
        "(--set runtime.verbose=true prints the traceback)",
    ]
    assert run_flow(failing_flow, ["--config", config, "--set", "runtime.verbose=true"], "toy", "toy") == 1
    err = capfd.readouterr().err
    assert "Traceback" in err and 'raise KeyError("a bug, not bad input")' in err
    assert err.splitlines()[-1] == "error: stage read_ratings_r1 failed: KeyError: 'a bug, not bad input'"


def test_error_line_without_a_stage():
    assert error_line(FileNotFoundError("configs/x.yaml: no such file")) == "error: configs/x.yaml: no such file"


def test_pipeline_without_its_data_folder_fails_in_prepare_data_with_one_line(tmp_path, capfd):
    from flows.pipeline import pipeline

    missing = tmp_path / "ml-32m"
    code = run_flow(pipeline, [
        "--config", "configs/smoke.yaml", "--set", "data.source=ml-latest", "--set", f"data.path={missing}",
        "--set", f"runtime.artifacts_dir={tmp_path / 'artifacts'}",
    ], "pipeline", "pipeline")
    out, err = capfd.readouterr()
    assert code == 1
    assert err.splitlines()[-1] == f"error: stage prepare_data failed: {missing}: data.path is not a folder"
    assert no_prefect_failure_logs(err)
    assert re.fullmatch(r"\[1/26\] prepare_data \.\.\.\n\[1/26\] prepare_data \.\.\. failed after \d+ s\n", out), out


def wait_for(read, check, seconds: float = 60):
    """Poll `read()` until `check(value)`: Prefect records task runs and artifacts through events."""
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if check(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


@flow(name="toy-report")
def report_flow(root: str) -> str:
    cfg = Config(runtime=RuntimeConfig(artifacts_dir=Path(root), run_name="toy"))
    log = StageLog(Path(root))
    made = log.run(MAKE, label="make_numbers_r1", numbers=Numbers(start=3))
    report = Path(root) / "report"
    report.mkdir()
    (report / "report.md").write_text("# recxplain evaluation\n\n| explainer | validity |\n|---|---|\n| sft | 0.9 |\n")
    (report / "report.html").write_text("<html></html>")
    return str(publish_run_summary(cfg, "toy.yaml", [], log, {"numbers": made, "report": report}))


def test_task_runs_are_named_by_stage_label_and_the_report_opens_from_the_ui(tmp_path):
    state = report_flow(str(tmp_path), return_state=True)
    run_dir = Path(state.result())
    with get_client(sync_client=True) as client:
        runs_filter = FlowRunFilter(id={"any_": [state.state_details.flow_run_id]})
        names = wait_for(lambda: [t.name for t in client.read_task_runs(flow_run_filter=runs_filter)],
                         lambda names: "make_numbers_r1" in names)
        assert names == ["make_numbers_r1"]
        artifacts = wait_for(lambda: {a.key: a for a in client.read_artifacts(flow_run_filter=runs_filter) if a.key},
                             lambda found: {"report", "report-html"} <= set(found))
    html = str((run_dir / "report.html").resolve())
    assert artifacts["report"].type == "markdown" and artifacts["report-html"].type == "markdown"
    assert f"`{html}`" in artifacts["report"].data and "| sft | 0.9 |" in artifacts["report"].data
    assert f"`{html}`" in artifacts["report-html"].data and "file://" not in artifacts["report-html"].data


def tiny_data_settings(source: Path, artifacts: Path, run_name: str) -> list[str]:
    """Overrides for a run on the small ml-latest folder of tests/test_retrain.py."""
    return [
        "data.source=ml-latest", f"data.path={source}", "recommender.k=5", "recommender.top_n=3",
        "recommender.sampled_negatives=5", "paths.similar_k=5", f"runtime.artifacts_dir={artifacts}",
        f"runtime.run_name={run_name}",
    ]


def test_retrain_from_the_command_line_prints_its_stages_and_an_honest_decision(tmp_path, capfd):
    ratings, _ = ratings_csv()
    source = write_ml_latest(tmp_path / "ml", ratings=ratings, movies=MOVIES)
    settings = tiny_data_settings(source, tmp_path / "artifacts", "weekly") + ["retrain.evidence_only=true"]
    assert planned_stages(load_config("configs/default.yaml", settings), retrain.name) == 3
    assert run_flow(retrain, [arg for s in settings for arg in ("--set", s)], "retrain", "retrain") == 0
    out, err = capfd.readouterr()
    lines = out.splitlines()
    assert lines[:2] == ["[1/3] prepare_data ...", lines[1]] and lines[1].startswith("[1/3] prepare_data ... ")
    assert lines[4] == "[3/3] mine_paths ..." and lines[5].endswith(" s")
    assert lines[6].startswith("run finished in ") and lines[6].endswith("summary.md")
    assert err == ""  # no library or Prefect noise
    record = json.loads((tmp_path / "artifacts" / "runs" / "weekly" / "retrain.json").read_text())
    markdown = decision_markdown(record)
    assert f"ml-latest files in {source}, 360 ratings" in markdown and "prepared again" in markdown
    assert "no earlier retraining run of this name is recorded" in markdown
    assert "student: not part of this run (retrain.evidence_only)" in markdown


def test_retrain_decision_says_a_student_existed_when_its_stages_were_cached():
    """A retraining run with no retraining record, after `make flow` trained the student on the
    same cases: every student stage is cached, and the decision says so."""
    decision = StudentDecision(True, "no student recorded by an earlier retraining run", "cases/x", None)
    rows = [{"stage": name, "state": "Cached"} for name in
            ("teacher_generate", "sample_pairs", "judge_pairs", "train_sft", "train_orpo", "train_dpo_r1")]
    outcome = student_outcome(decision, None, rows)
    assert outcome["existed_before"] and outcome["ran"] == []
    assert "an earlier run had trained one on these cases (train_sft, train_orpo, train_dpo_r1" in outcome["before"]
    assert outcome["outcome"] == "every student stage loaded from cache: the student in use was trained earlier"

    trained = student_outcome(decision, None, [dict(r, state="Completed") for r in rows])
    assert not trained["existed_before"] and trained["before"] == "none"
    assert trained["outcome"].startswith("trained: teacher_generate, sample_pairs")

    kept = StudentDecision(False, "3 new ratings (0.8%) are below the threshold", "cases/old", None)
    recorded = {"trained": "2025-01-06T03:00:00+0000", "cases": "cases/old"}
    assert student_outcome(kept, recorded, rows)["before"].startswith("trained 2025-01-06T03:00:00+0000 on `cases/old`")


def test_planned_stages_count_the_pipeline_of_each_task():
    smoke = load_config("configs/smoke.yaml")
    # 2 DPO rounds; 7 explainers (dpo: one per round), one task each, and their merge
    assert planned_stages(smoke, "recxplain-pipeline") == 26
    assert planned_stages(smoke, "recxplain-evaluate") == 15
    # shards of 2 cases: the 6 training cases in 3 (the teacher and each round's sampling, each
    # merged; the teacher's pairs are not sampled), the 3 held-out cases in 2 per explainer
    assert planned_stages(load_config("configs/smoke.yaml", ["runtime.shard_cases=2"]), "recxplain-pipeline") == 42
    assert planned_stages(load_config("configs/reclaif.yaml"), "recxplain-pipeline") == 3 + 6 + 3 * load_config(
        "configs/reclaif.yaml").training.rounds
    assert planned_stages(smoke, "some-other-flow") is None


BROWSER_SKIP = """
import pytest

@pytest.mark.browser
@pytest.mark.skip(reason="no chromium")
def test_in_a_browser():
    pass

def test_other():
    pass
"""


@pytest.mark.parametrize("ci, code", [("true", 1), ("", 0)])
def test_a_skipped_browser_test_fails_the_run_under_ci(tmp_path, ci, code):
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F401,F403\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    browser: a browser test\n")
    (tmp_path / "test_skip.py").write_text(BROWSER_SKIP)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(tmp_path / "pytest.ini"),
         "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env=os.environ | {"CI": ci, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == code, done.stdout[-2000:]
    assert ("browser test(s) skipped, which fails the run" in done.stdout) == bool(code)
