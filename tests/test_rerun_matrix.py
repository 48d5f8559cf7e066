"""The real smoke pipeline (configs/smoke.yaml, the embedded model) end to end through the command
line, then which stages a change reruns: for each config field or template below, the exact set
of stages that execute when the cached run is repeated with that one change, and nothing at all
for an unchanged rerun.

A stage reruns when what it declares it reads (`@reads`: config fields, templates) or the content
of an input folder changed. Its output content is deterministic, so a rerun that writes the same
files leaves everything after it cached (e.g. a template edit that renders the same prompts).
Slow (the smoke pipeline, then the reruns): `make test-slow`. A change to the recommender or the
cases reruns every stage after it (a whole smoke run each, which CI's time cannot hold): the fast
test below shows that only their evidence stage reads those sections, and the matrix shows that
a changed input folder reruns what reads it."""

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from prefect import Task

import flows.pipeline
import recxplain.stage
from flows.pipeline import pipeline
from recxplain.prompts import PROMPTS_DIR, read_templates
from recxplain.schemas import read_cases
from recxplain.stage import ALL, declared
from tests.smoke import LIGHTER, SMOKE, stage_digests

EVIDENCE = ["prepare_data", "train_recommender", "mine_paths", "build_cases"]
FEEDBACK = ["teacher_generate", "sample_pairs", "judge_pairs"]
SFT_ON = ["train_sft", "sample_pairs_r1", "judge_pairs_r1", "train_dpo_r1", "sample_pairs_r2", "judge_pairs_r2",
          "train_dpo_r2"]
EXPLAINERS = ["template", "teacher", "base", "sft", "orpo", "dpo_r1", "dpo_r2"]
# one generate_explanations task per explainer (the smoke run has no case shards), then the merge
EXPLAIN = {name: f"generate_explanations[{name}]" for name in EXPLAINERS}
REPORTING = ["generate_explanations", "evaluate", "write_report", "export_arena"]
EVALUATION = list(EXPLAIN.values()) + REPORTING
EVERY_STAGE = EVIDENCE + FEEDBACK + SFT_ON[:1] + ["train_orpo"] + SFT_ON[1:] + EVALUATION

# change -> the stages it reruns. Overrides are `--set` strings; "edit:<template>" appends a
# comment to a copy of that prompt template (the prompts it renders stay the same).
MATRIX = {
    # only the explainers whose student changed explain again
    "training.dpo.max_steps=1": ["train_dpo_r1", "sample_pairs_r2", "judge_pairs_r2", "train_dpo_r2",
                                 EXPLAIN["dpo_r1"], EXPLAIN["dpo_r2"], *REPORTING],
    "training.sft.learning_rate=0.001": [*SFT_ON, EXPLAIN["sft"], EXPLAIN["dpo_r1"], EXPLAIN["dpo_r2"], *REPORTING],
    "training.orpo.beta=0.2": ["train_orpo", EXPLAIN["orpo"], *REPORTING],
    "evaluation.report_examples=1": ["write_report"],
    "evaluation.bootstrap=60": ["evaluate", "write_report", "export_arena"],
    "arena.max_history=3": ["export_arena"],
    # the ensemble judge renders its pair prompt for the judged pairs and the tournament
    "edit:judge_pair.j2": ["judge_pairs", "judge_pairs_r1", "judge_pairs_r2", "evaluate"],
    # the explanation prompt: the teacher, every pair sampler and every explainer render it (the
    # explanations are the same: their merge is loaded from cache)
    "edit:explain_seed.j2": ["teacher_generate", "sample_pairs", "sample_pairs_r1", "sample_pairs_r2",
                             *EXPLAIN.values()],
}


def test_the_recommender_and_case_sections_are_read_by_their_evidence_stage_alone():
    def readers(section: str, name: str) -> list[str]:
        tasks = [t for t in vars(flows.pipeline).values() if isinstance(t, Task)]
        return sorted({t.name for t in tasks if (fields := declared(t.cache_policy.fn).fields.get(section))
                       and (name in fields or fields == ALL)})

    assert readers("recommender", "k") == ["train_recommender"]
    assert readers("cases", "eval_users") == ["build_cases"]
    assert readers("data", "min_user_ratings") == ["prepare_data"]


@pytest.fixture
def prompts(tmp_path, monkeypatch):
    """A copy of configs/prompts that every stage reads its declared templates from."""
    folder = tmp_path / "prompts"
    shutil.copytree(PROMPTS_DIR, folder)
    monkeypatch.setattr(recxplain.stage, "read_templates", lambda *names: read_templates(*names, prompts_dir=folder))
    return folder


def expected(change: str, run: dict, before: dict[str, str]) -> list[str]:
    """MATRIX[change], less what reads the explanations' merge when every explainer that explained
    again wrote the same bytes as before (`before`: the cold run's digests): a student whose weights
    changed may still give the same greedy answers on the 3 held-out cases, and then the merge, the
    evaluation and the arena bundle load from cache (the report, which reads the students' folders,
    still reruns)."""
    reruns = MATRIX[change]
    explained = [label for label in reruns if label in EXPLAIN.values()]
    digests = stage_digests(run)
    if explained and all(digests[label] == before[label] for label in explained):
        return [label for label in reruns if label not in ("generate_explanations", "evaluate", "export_arena")]
    return reruns


def executed(artifacts: Path, change: str | None, prompts: Path) -> tuple[list[str], dict]:
    """Run the smoke pipeline with one change: the stages that executed (not loaded from cache), and
    the run's summary."""
    overrides = [f"runtime.artifacts_dir={artifacts}", *LIGHTER]
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
    return [row["stage"] for row in summary["stages"] if row["state"] != "Cached"], summary


def check_outputs(summary: dict, artifacts: Path) -> None:
    """Every stage wrote what the next one reads."""
    folders = summary["artifacts"]
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
        assert json.loads((Path(folders[name]) / "run.json").read_text())["wall_time_s"] > 0
    explanations = pl.read_parquet(Path(folders["explanations"]) / "explanations.parquet")
    assert set(explanations["model"]) == {"template", "teacher", "base", "sft", "orpo", "dpo_r1", "dpo_r2"}
    assert explanations.height == 3 * 7
    metrics = pl.read_parquet(Path(folders["evaluate"]) / "metrics.parquet")
    assert set(metrics["explainer"]) >= set(explanations["model"])
    html = (artifacts / "runs" / "smoke" / "report.html").read_text()
    assert "<html" in html and "dpo_r2" in html
    assert json.loads((Path(folders["arena"]) / "bundle.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(5400)  # a cold smoke run and nine partial ones
def test_smoke_flow_then_each_change_reruns_exactly_the_stages_that_read_it(smoke_run, prompts):
    # The cold run: the command line, with the shipped templates (same text as the copy's).
    artifacts, summary = smoke_run.artifacts, smoke_run.summary
    assert [row["stage"] for row in summary["stages"] if row["state"] != "Cached"] == EVERY_STAGE
    check_outputs(summary, artifacts)
    assert executed(artifacts, None, prompts)[0] == [], "an unchanged rerun executes nothing"
    seen, want = {}, {}
    for change in MATRIX:
        seen[change], run = executed(artifacts, change, prompts)
        want[change] = expected(change, run, smoke_run.digests)
        print(f"{change}: {seen[change]}", flush=True)  # pytest -s shows the matrix as it fills
    assert seen == want
