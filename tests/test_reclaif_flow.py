"""End to end: `task: recommend` (configs/reclaif.yaml) at tiny sizes with the real embedded
model, then again from cache. Slow: CI runs it with `make test-slow`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["reclaif.candidates.train_users=4", "reclaif.candidates.eval_users=4", "training.sft.max_steps=2",
        "training.dpo.max_steps=2", "pairs.sampling.max_new_tokens=32", "reclaif.evaluation.sampling.max_new_tokens=32",
        "reclaif.judge.sampling.max_new_tokens=32", "reclaif.evaluation.bootstrap=50", "runtime.run_name=reclaif_tiny"]


def run_flow(artifacts: Path) -> dict:
    overrides = [arg for o in [*TINY, f"runtime.artifacts_dir={artifacts}"] for arg in ("--set", o)]
    done = subprocess.run([sys.executable, "-m", "flows.pipeline", "--config", "configs/reclaif.yaml", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads((artifacts / "runs" / "reclaif_tiny" / "summary.json").read_text())


@pytest.mark.slow
def test_reclaif_flow_writes_the_comparison_report_then_is_fully_cached(tmp_path):
    artifacts = tmp_path / "artifacts"
    summary = run_flow(artifacts)
    stages = [row["stage"] for row in summary["stages"]]
    assert {"build_candidate_sets", "reclaif_template_teacher", "reclaif_train_sft", "reclaif_sample_pairs_r1",
            "reclaif_judge_pairs_r2", "reclaif_recommend", "reclaif_evaluate", "write_report"} <= set(stages)
    run_dir = artifacts / "runs" / "reclaif_tiny"
    page = (run_dir / "report.html").read_text()
    names = ["itemknn", "als", "bpr", "popular", "random", "random (expected)", "listed", "base", "sft", "dpo_r1",
             "dpo_r2"]
    for name in names:
        assert f"<th>{name}</th>" in page, name
    assert "Hit@1" in page and "NDCG@3" in page and "Precision@3" in page
    rows = json.loads((run_dir / "metrics_table.json").read_text())
    assert [r["recommender"] for r in rows] == names
    report = (run_dir / "report.md").read_text()
    assert "| itemknn | classic |" in report and "| random (expected) | chance |" in report
    assert "Position bias and reach" in report

    # The same command again: every stage from cache.
    again = run_flow(artifacts)
    assert {row["state"] for row in again["stages"]} == {"Cached"}, again["stages"]
