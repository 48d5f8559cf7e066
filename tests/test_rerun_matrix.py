"""Which stages a change reruns, on the real smoke pipeline (configs/smoke.yaml, the embedded
model): for each config field or template below, the exact set of stages that execute when the
cached run is repeated with that one change, and nothing at all for an unchanged rerun.

A stage reruns when what it declares it reads (`@reads`: config fields, templates) or the content
of an input folder changed. Its output content is deterministic, so a rerun that writes the same
files leaves everything after it cached (e.g. a template edit that renders the same prompts).
Slow (the smoke pipeline, then the reruns): `make test-slow`."""

import json
import shutil
from pathlib import Path

import pytest

import recxplain.stage
from flows.pipeline import pipeline
from recxplain.prompts import PROMPTS_DIR, read_templates

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")

EVIDENCE = ["prepare_data", "train_recommender", "mine_paths", "build_cases"]
FEEDBACK = ["teacher_generate", "sample_pairs", "judge_pairs"]
SFT_ON = ["train_sft", "sample_pairs_r1", "judge_pairs_r1", "train_dpo_r1", "sample_pairs_r2", "judge_pairs_r2",
          "train_dpo_r2"]
EVALUATION = ["generate_explanations", "evaluate", "write_report", "export_arena"]
EVERY_STAGE = EVIDENCE + FEEDBACK + SFT_ON[:1] + ["train_orpo"] + SFT_ON[1:] + EVALUATION

# change -> the stages it reruns. Overrides are `--set` strings; "edit:<template>" appends a
# comment to a copy of that prompt template (the prompts it renders stay the same).
MATRIX = {
    "training.dpo.max_steps=1": ["train_dpo_r1", "sample_pairs_r2", "judge_pairs_r2", "train_dpo_r2", *EVALUATION],
    "training.sft.learning_rate=0.001": [*SFT_ON, *EVALUATION],
    "training.orpo.beta=0.2": ["train_orpo", *EVALUATION],
    "evaluation.report_examples=1": ["write_report"],
    "evaluation.bootstrap=60": ["evaluate", "write_report", "export_arena"],
    "recommender.k=5": EVERY_STAGE[1:],
    "cases.eval_users=2": EVERY_STAGE[3:],
    "arena.max_history=3": ["export_arena"],
    # the ensemble judge renders its pair prompt for the judged pairs and the tournament
    "edit:judge_pair.j2": ["judge_pairs", "judge_pairs_r1", "judge_pairs_r2", "evaluate"],
    # the explanation prompt: the teacher, every pair sampler and every explainer render it
    "edit:explain_seed.j2": ["teacher_generate", "sample_pairs", "sample_pairs_r1", "sample_pairs_r2",
                             "generate_explanations"],
}


@pytest.fixture
def prompts(tmp_path, monkeypatch):
    """A copy of configs/prompts that every stage reads its declared templates from."""
    folder = tmp_path / "prompts"
    shutil.copytree(PROMPTS_DIR, folder)
    monkeypatch.setattr(recxplain.stage, "read_templates", lambda *names: read_templates(*names, prompts_dir=folder))
    return folder


def executed(artifacts: Path, change: str | None, prompts: Path) -> list[str]:
    """Run the smoke pipeline with one change; the stages that executed (not loaded from cache)."""
    overrides = [f"runtime.artifacts_dir={artifacts}"]
    template, original = None, None
    if change and change.startswith("edit:"):
        template = prompts / change.removeprefix("edit:")
        original = template.read_text()
        template.write_text(original + "{# edited by the rerun matrix #}\n")
    elif change:
        overrides.append(change)
    try:
        run_dir = Path(pipeline(config_path=SMOKE, overrides=overrides))
    finally:
        if template is not None:
            template.write_text(original)
    summary = json.loads((run_dir / "summary.json").read_text())
    return [row["stage"] for row in summary["stages"] if row["state"] != "Cached"]


@pytest.mark.slow
def test_each_change_reruns_exactly_the_stages_that_read_it(tmp_path, prompts):
    artifacts = tmp_path / "artifacts"
    assert executed(artifacts, None, prompts) == EVERY_STAGE
    assert executed(artifacts, None, prompts) == [], "an unchanged rerun executes nothing"
    seen = {}
    for change in MATRIX:
        seen[change] = executed(artifacts, change, prompts)
        print(f"{change}: {seen[change]}", flush=True)  # pytest -s shows the matrix as it fills
    assert seen == MATRIX
