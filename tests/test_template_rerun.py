"""Editing a prompt template reruns exactly the stages that render it, through the pipeline's own
stage functions in a Prefect flow: data, recommender, paths, cases and the AI feedback (teacher
answers, teacher pairs, judged pairs). The teacher is a scripted model (tests/scripted.py) and the
judge the rubric, so no language model runs; the templates are copies in a temporary folder."""

import shutil
from pathlib import Path

import pytest
from prefect import flow

import recxplain.stage
import recxplain.teaching
from flows.pipeline import BUILD_CASES, evidence_stages, feedback_stages
from flows.summary import StageLog
from recxplain.config import load_config
from recxplain.prompts import PROMPTS_DIR, read_templates
from tests.scripted import ScriptedModel
from tests.test_console import tiny_data_settings
from tests.test_data import write_ml_latest
from tests.test_retrain import MOVIES, ratings_csv


@flow(name="toy-feedback")
def feedback_flow(overrides: list[str]) -> dict[str, str]:
    cfg = load_config("configs/default.yaml", overrides)
    log = StageLog(cfg.runtime.artifacts_dir)
    evidence = evidence_stages(cfg, log)
    cases = log.run(BUILD_CASES, cases=cfg.cases, data=evidence["data"], recommender=evidence["recommender"],
                    paths=evidence["paths"])
    feedback_stages(cfg, log, cases)
    log.wait()
    return {row["stage"]: row["state"] for row in log.rows}


def scripted_teacher(messages: list[dict], sample: int) -> str:
    """Two different answers per prompt, whatever the prompt says (so an edited template changes
    the prompts the stages record, not the answers)."""
    return [
        "You rated Movie 3 highly, and people who liked it also liked this one, a drama from the same years.",
        "This movie is a good pick for you because you like movies.",
    ][sample % 2]


@pytest.fixture
def prompts(tmp_path, monkeypatch):
    """A copy of configs/prompts that the flow reads its templates from."""
    folder = tmp_path / "prompts"
    shutil.copytree(PROMPTS_DIR, folder)
    # Stages get the templates their @reads declares through recxplain.stage (read at key time).
    monkeypatch.setattr(recxplain.stage, "read_templates", lambda *names: read_templates(*names, prompts_dir=folder))
    monkeypatch.setattr(recxplain.teaching, "load_chat_model",
                        lambda cfg, artifacts_dir, cache_path: ScriptedModel(scripted_teacher))
    return folder


def edit(template: Path) -> None:
    with open(template, "a") as fh:
        fh.write("{# edited by the test #}\n")


def test_editing_a_template_reruns_exactly_the_stages_that_render_it(tmp_path, prompts):
    ratings, _ = ratings_csv()
    source = write_ml_latest(tmp_path / "ml", ratings=ratings, movies=MOVIES)
    settings = tiny_data_settings(source, tmp_path / "artifacts", "templates") + [
        "cases.train_users=4", "cases.eval_users=2", "cases.history_length=5", "teacher.best_of=2",
        "teacher.require_checks=false", "pairs.source=teacher_samples", "judge.kind=rubric", "judge.min_words=5",
        "judge.min_rubric_score=0.0",
    ]
    evidence = {
        "prepare_data": "Cached", "train_recommender": "Cached", "mine_paths": "Cached", "build_cases": "Cached",
    }

    first = feedback_flow(settings)
    assert set(first.values()) == {"Completed"} and len(first) == 7
    assert set(feedback_flow(settings).values()) == {"Cached"}

    # A template no stage of this run renders: nothing reruns.
    edit(prompts / "reclaif_judge.j2")
    assert set(feedback_flow(settings).values()) == {"Cached"}

    # The LLM judge's template: the rubric judge of this run does not render it, nothing reruns.
    edit(prompts / "judge_pair.j2")
    assert set(feedback_flow(settings).values()) == {"Cached"}

    # The explanation template: the teacher and the pairs render it, so they rerun. The edit is a
    # comment, the prompts they render are the same, so they write the same files (template hashes
    # go to the manifest, not the content) and the judge after them stays cached.
    edit(prompts / "explain_seed.j2")
    assert feedback_flow(settings) == evidence | {
        "teacher_generate": "Completed", "sample_pairs": "Completed", "judge_pairs": "Cached"
    }
