"""End to end: the whole pipeline on configs/smoke.yaml (tiny sizes, the real embedded model),
then again from cache. Slow: CI runs it with `make test-slow`."""

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from recxplain.schemas import read_cases

ROOT = Path(__file__).resolve().parent.parent


def run_flow(artifacts: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--config", "configs/smoke.yaml",
         "--set", f"runtime.artifacts_dir={artifacts}"],
        cwd=ROOT, capture_output=True, text=True, timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads((artifacts / "runs" / "smoke" / "summary.json").read_text())


@pytest.mark.slow
def test_smoke_flow_end_to_end_then_fully_cached(tmp_path):
    artifacts = tmp_path / "artifacts"
    summary = run_flow(artifacts)
    folders = summary["artifacts"]
    stages = {row["stage"]: row for row in summary["stages"]}
    assert {"prepare_data", "train_recommender", "mine_paths", "build_cases", "teacher_generate",
            "judge_pairs", "train_sft", "train_orpo", "train_dpo_r1", "train_dpo_r2",
            "generate_explanations", "evaluate", "write_report", "export_arena"} <= set(stages)

    data = Path(folders["data"])
    for name in ("interactions", "items", "users", "kg"):
        assert pl.read_parquet(data / f"{name}.parquet").height > 0
    assert pl.read_parquet(Path(folders["recommender"]) / "recommendations.parquet").height > 0
    assert pl.read_parquet(Path(folders["paths"]) / "paths.parquet").height > 0
    cases = Path(folders["cases"])
    assert len(read_cases(cases / "train.jsonl")) == 6 and len(read_cases(cases / "eval.jsonl")) == 3
    sft_rows = [json.loads(line) for line in open(Path(folders["teacher"]) / "sft.jsonl")]
    assert all(row["messages"][-1]["role"] == "assistant" for row in sft_rows)
    verdicts = pl.read_parquet(Path(folders["preferences"]) / "verdicts.parquet")
    assert 1 <= verdicts.height <= 6  # identical sample pairs are dropped before judging
    for name in ("sft", "orpo", "dpo_r1", "dpo_r2"):
        assert (Path(folders[name]) / "adapter" / "adapter_config.json").exists()
        assert json.loads((Path(folders[name]) / "training.json").read_text())
    explanations = pl.read_parquet(Path(folders["explanations"]) / "explanations.parquet")
    assert set(explanations["model"]) == {"template", "teacher", "base", "sft", "orpo", "dpo_r1", "dpo_r2"}
    assert explanations.height == 3 * 7
    metrics = pl.read_parquet(Path(folders["evaluate"]) / "metrics.parquet")
    assert set(metrics["explainer"]) >= set(explanations["model"])
    run_dir = artifacts / "runs" / "smoke"
    html = (run_dir / "report.html").read_text()
    assert "<html" in html and "dpo_r2" in html
    assert json.loads((Path(folders["arena"]) / "bundle.json").read_text())

    # The same command again: every stage from cache, no model call, no training step.
    again = run_flow(artifacts)
    assert {row["state"] for row in again["stages"]} == {"Cached"}, again["stages"]
