"""Explainers: name -> model mapping, the template explainer, attribute prediction parsing, and
the generate_explanations stage with the template and with a scripted chat model (tasks/explain.py).
The real local model runs in the slow test at the end."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from recxplain.config import EvaluationConfig, LLMConfig, SamplingConfig, TeacherConfig, TrainingConfig  # noqa: E402
from recxplain.explainers import age_bracket, attribute_truth, explainer_llm, explainer_names, student_explainers  # noqa: E402
from recxplain.prompts import explain_messages  # noqa: E402
from recxplain.schemas import Case, check_columns, write_cases  # noqa: E402
from tasks import explain as ex  # noqa: E402


def make_case(case_id="1-3", gender="F", age=30, occupation="writer", rated=True, paths=True) -> Case:
    return Case.model_validate({
        "case_id": case_id, "split": "eval", "user_id": int(case_id.split("-")[0]),
        "profile": {"gender": gender, "age": age, "occupation": occupation},
        "history": [
            {"item_id": 1, "title": "Star Wars (1977)", "year": 1977, "genres": ["Action", "Sci-Fi"], "rating": 5,
             "timestamp": 1},
            {"item_id": 2, "title": "Fargo (1996)", "year": 1996, "genres": ["Crime", "Drama"], "rating": 4,
             "timestamp": 2},
        ],
        "item": {"item_id": 3, "title": "Return of the Jedi (1983)", "year": 1983, "genres": ["Action", "Sci-Fi"]},
        "rank": 1, "score": 0.9,
        "neighbours": [{"item_id": 1, "title": "Star Wars (1977)", "weight": 0.8, "rated": 5.0 if rated else None},
                       {"item_id": 4, "title": "Alien (1979)", "weight": 0.5}],
        "paths": [{"pattern": "user-rated-movie-director-movie", "steps": ["user:1", "rated", "movie:1"],
                   "text": "You rated Star Wars 5/5; it shares a director with Return of the Jedi",
                   "score": 0.7}] if paths else [],
    })


# ---------------------------------------------------------------------------------------------
# Explainer names and models


def test_dpo_expands_to_every_round():
    evaluation = EvaluationConfig(explainers=["template", "sft", "dpo", "dpo_r1"])
    assert explainer_names(evaluation, TrainingConfig(rounds=2)) == ["template", "sft", "dpo_r1", "dpo_r2"]
    assert student_explainers(evaluation, TrainingConfig(rounds=2)) == ["sft", "dpo_r1", "dpo_r2"]
    assert explainer_names(evaluation, TrainingConfig(rounds=0)) == ["template", "sft", "dpo_r1"]


def test_unknown_explainer_is_a_config_error():
    with pytest.raises(ValueError, match="unknown explainer"):
        EvaluationConfig(explainers=["template", "gpt"])


def test_explainer_models(tmp_path):
    teacher = TeacherConfig(llm=LLMConfig(provider="openai", model="gpt-4o-mini"))
    training = TrainingConfig(base_model="smollm2")
    sft = tmp_path / "sft" / "adapter"
    sft.mkdir(parents=True)
    merged = tmp_path / "orpo" / "merged"
    merged.mkdir(parents=True)
    students = {"sft": tmp_path / "sft", "orpo": tmp_path / "orpo", "dpo_r1": tmp_path / "empty"}
    kw = {"teacher": teacher, "training": training, "students": students}
    assert explainer_llm("template", **kw) is None
    assert explainer_llm("teacher", **kw).model == "gpt-4o-mini"
    base = explainer_llm("base", **kw)
    assert (base.provider, base.model, base.adapter) == ("local", "smollm2", None)
    student = explainer_llm("sft", **kw)
    assert (student.provider, student.model, student.adapter) == ("local", "smollm2", sft)
    assert explainer_llm("orpo", **kw).model == str(merged)
    # A thinking student (Qwen3) is asked with thinking off wherever it generates.
    unthinking = kw | {"training": TrainingConfig(base_model="smollm2", thinking="off")}
    assert {explainer_llm(n, **unthinking).thinking for n in ("base", "sft", "orpo")} == {"off"}
    assert base.thinking == "default"
    with pytest.raises(FileNotFoundError, match="no adapter/ or merged/"):
        explainer_llm("dpo_r1", **kw)
    with pytest.raises(ValueError, match="dpo_r2.*student folder"):
        explainer_llm("dpo_r2", **kw)


# ---------------------------------------------------------------------------------------------
# Template explainer and validity


def test_template_explanation_renders_the_evidence():
    text = ex.template_explanation(make_case())
    assert text == ('We recommend "Return of the Jedi (1983)", an action and sci-fi movie. '
                    'It is similar to movies you rated: "Star Wars (1977)" (5/5). '
                    "You rated Star Wars 5/5; it shares a director with Return of the Jedi.")
    bare = ex.template_explanation(make_case(rated=False, paths=False))
    assert 'People who watch it also watch "Star Wars (1977)" and "Alien (1979)".' in bare


def test_validity_follows_the_teachers_format_rule():
    teacher, case = TeacherConfig(min_words=5, max_words=12), make_case()
    assert ex.is_valid("You loved Star Wars, so you will enjoy this one.", teacher, case)
    assert not ex.is_valid("Too short.", teacher, case)
    assert not ex.is_valid("word " * 13, teacher, case)
    assert not ex.is_valid("", teacher, case)


# ---------------------------------------------------------------------------------------------
# Attribute prediction


def test_age_brackets_and_truths():
    assert [age_bracket(a) for a in (7, 18, 24, 25, 44, 45, 50, 55, 56, 73)] == [
        "under 18", "18-24", "18-24", "25-34", "35-44", "45-49", "50-55", "50-55", "56 or older", "56 or older"]
    case = make_case(gender="F", age=33, occupation="Writer")
    assert attribute_truth(case, "age") == "25-34"
    assert attribute_truth(case, "gender") == "female"
    assert attribute_truth(case, "occupation") == "writer"
    assert ex.attribute_options("occupation", [case, make_case(occupation="student")]) == ["student", "writer"]


@pytest.mark.parametrize("answer, attribute, expected", [
    ("Female", "gender", "female"),
    ("The customer is male.", "gender", "male"),
    ("I think female, not male", "gender", "female"),
    ("25-34", "age", "25-34"),
    ("Probably around 47 years old", "age", "45-49"),
    ("56 or older", "age", "56 or older"),
    ("An engineer, or maybe a programmer", "occupation", "engineer"),
    ("Unknown", "occupation", None),
])
def test_parse_attribute(answer, attribute, expected):
    options = ex.attribute_options(attribute, []) or ["programmer", "engineer", "writer"]
    assert ex.parse_attribute(answer, attribute, options) == expected


def test_age_in_years_is_asked_as_a_number_where_exact_ages_exist():
    case = make_case(age=61)
    assert attribute_truth(case, "age_years") == "61" and ex.attribute_options("age_years", [case]) == []
    assert attribute_truth(make_case(age=""), "age_years") is None
    assert attribute_truth(make_case(age="25-34"), "age_years") is None  # a bracket, no exact age
    content = ex.attribute_messages(case, "age_years", [])[0]["content"]
    assert "infer the customer's age from the history" in content and "Choose one of" not in content
    assert "one number only" in content and "61" not in content
    assert ex.parse_attribute("Probably about 58 years old.", "age_years", []) == "58"
    assert ex.parse_attribute("Middle-aged", "age_years", []) is None

    class Answers58:
        def generate(self, prompts, sampling, n=1):
            return [[Generation("About 58.")] for _ in prompts]

    evaluation = EvaluationConfig(attributes=["age_years", "age"])
    cases = [case, make_case("2-3", age="")]
    rows = ex._predict_attributes(Answers58(), "base", cases, cases, evaluation)
    assert [(r["case_id"], r["attribute"], r["truth"], r["predicted"]) for r in rows] == [
        ("1-3", "age_years", "61", "58"), ("1-3", "age", "56 or older", "56 or older")]


def test_attribute_prompt_hides_the_profile():
    messages = ex.attribute_messages(make_case(age=33, occupation="writer"), "occupation", ["student", "writer"])
    content = messages[0]["content"]
    assert "Star Wars (1977) (Action, Sci-Fi)" in content and "Choose one of: student; writer" in content
    assert "33" not in content and "female" not in content


# ---------------------------------------------------------------------------------------------
# The stage


@dataclass
class Generation:
    text: str
    prompt_tokens: int = 50
    completion_tokens: int = 20
    finish_reason: str | None = "stop"


BASE = "Explanation: You will love Return of the Jedi because you loved Star Wars. And"
GOOD = ("You rated Star Wars 5/5, and people who liked it also liked Return of the Jedi. Like Fargo, which you "
        "rated 4/5, it is a movie that should suit you well.")
TECHNICAL = ("Return of the Jedi has a cosine similarity of 0.8 with Star Wars, a KNN neighbour you rated 5/5, so "
             "you will like it a lot.")


class ScriptedModel:
    """Answers attribute prompts with fixed options; explanation prompts with the worked example
    (the teacher's) with three samples: a technical one, the best one cut at max_new_tokens and
    the best one finished; other explanation prompts (the students') with BASE, the second one
    cut at max_new_tokens."""

    usage: dict = {}

    def __init__(self, config):
        self.config, self.calls, self.prompts = config, [], []

    def generate(self, prompts, sampling, n=1):
        self.calls.append((len(prompts), sampling.max_new_tokens, n))
        answers = []
        for messages in prompts:
            content = messages[-1]["content"]
            if "mission is to infer" in content:
                answer = "female" if "gender" in content else "25-34" if "age group" in content else "writer"
                answers.append([Generation(answer, completion_tokens=2)] * n)
                continue
            self.prompts.append(messages)
            if any(m["role"] == "assistant" for m in messages):
                samples = [
                    Generation(TECHNICAL), Generation(GOOD + " And it", finish_reason="length"), Generation(GOOD)
                ]
                answers.append(samples[:n])
            else:
                answers.append([Generation(BASE, finish_reason="length" if len(self.prompts) == 2 else "stop")] * n)
        return answers


def test_generate_explanations_with_template_and_scripted_models(tmp_path, monkeypatch):
    cases_dir, out = tmp_path / "cases", tmp_path / "out"
    cases_dir.mkdir(), out.mkdir()
    eval_cases = [make_case("1-3", "F", 30, "writer"), make_case("2-3", "M", 60, "student")]
    write_cases(eval_cases, cases_dir / "eval.jsonl")
    write_cases([make_case("5-3", "F", 20, "writer").model_copy(update={"split": "train"})], cases_dir / "train.jsonl")
    models = []

    def fake_load(config, artifacts_dir, cache_path):
        assert cache_path.parent == out / "cache"
        models.append(ScriptedModel(config))
        return models[-1]

    monkeypatch.setattr(ex, "load_model", fake_load)
    evaluation = EvaluationConfig(
        explainers=["template", "base", "teacher"], sampling=SamplingConfig(temperature=0, max_new_tokens=96)
    )
    teacher = TeacherConfig(llm=LLMConfig(provider="openai", model="teacher-model"), best_of=3, min_words=5)
    ex.generate_explanations(out, evaluation=evaluation, teacher=teacher, training=TrainingConfig(), cases=cases_dir,
                             artifacts_dir=tmp_path)
    base, teacher_model = models
    assert [m.config.model for m in models] == ["smollm2", "teacher-model"]
    # base: one answer per case with the evaluation's decoding, to the students' prompt (no worked example);
    # the teacher: best-of-n with its own decoding, to the prompt it wrote its SFT answers with
    assert base.calls[0] == (2, 96, 1) and teacher_model.calls[0] == (2, teacher.sampling.max_new_tokens, 3)
    assert base.prompts == [explain_messages(c, teacher.prompt, example=False) for c in eval_cases]
    assert teacher_model.prompts == [explain_messages(c, teacher.prompt) for c in eval_cases]
    frame = pd.read_parquet(out / "explanations.parquet")
    assert list(frame.columns) == ["case_id", "model", "text", "tokens", "valid", "prompt_tokens"]
    check_columns(pl.from_pandas(frame), "explanations", "explanations.parquet")
    assert len(frame) == 6 and set(frame["model"]) == {"template", "base", "teacher"}
    valid = frame.set_index(["model", "case_id"])["valid"]
    # base's second answer was still going at max_new_tokens: not valid, though its cleaned text is
    assert valid["template"].all() and valid[("base", "1-3")] and not valid[("base", "2-3")]
    # the teacher keeps the finished best answer, not its tie that was cut at max_new_tokens
    assert valid["teacher"].all()
    assert set(frame.loc[frame["model"] == "teacher", "text"]) == {GOOD}
    # Answers are cleaned as the teacher's: label and unfinished last sentence removed.
    assert set(frame.loc[frame["model"] == "base", "text"]) == {
        "You will love Return of the Jedi because you loved Star Wars."}
    assert (frame.loc[frame["model"] == "template", "tokens"] == 0).all()
    attributes = pd.read_parquet(out / "attributes.parquet")
    assert len(attributes) == 2 * 2 * 3  # LLM explainers x cases x attributes (no template)
    right = attributes[attributes["model"] == "base"].set_index(["case_id", "attribute"])
    assert right.loc[("1-3", "gender"), "predicted"] == right.loc[("1-3", "gender"), "truth"] == "female"
    assert right.loc[("2-3", "age"), "truth"] == "56 or older" and right.loc[("2-3", "age"), "predicted"] == "25-34"
    assert set(attributes.loc[attributes["attribute"] == "occupation", "n_options"]) == {2}

    # A teacher that is the base model (the embedded default) still runs as the teacher: its own
    # prompt and best-of-n, not base's answers copied.
    models.clear()
    ex.generate_explanations(out, evaluation=evaluation, teacher=TeacherConfig(best_of=3, min_words=5),
                             training=TrainingConfig(), cases=cases_dir, artifacts_dir=tmp_path)
    assert [m.config.model for m in models] == ["smollm2", "smollm2"]
    frame = pd.read_parquet(out / "explanations.parquet").set_index(["model", "case_id"])
    assert set(frame.loc["teacher", "text"]) == {GOOD} and set(frame.loc["base", "text"]) != {GOOD}
    attributes = pd.read_parquet(out / "attributes.parquet")
    assert (attributes["model"] == "teacher").sum() == (attributes["model"] == "base").sum() == 6


class CaseScriptedModel:
    """Answers each prompt from its own text only (whatever else is in the call), as a greedy model
    that batching does not change: an explanation naming the user, an attribute option."""

    usage: dict = {}

    def generate(self, prompts, sampling, n=1):
        answers = []
        for messages in prompts:
            content = messages[-1]["content"]
            if "mission is to infer" in content:
                answers.append([Generation("female" if len(content) % 2 else "male", completion_tokens=1)] * n)
            else:
                answers.append([Generation(f"{GOOD} Prompt {len(content)}.", completion_tokens=len(content) % 7)] * n)
        return answers


def test_explainers_and_shards_merge_into_the_files_of_one_call(tmp_path, monkeypatch):
    """The flow runs generate_explanations per explainer and shard of cases; merge_explanations
    writes the same bytes as one call for every explainer and case."""
    cases_dir = tmp_path / "cases"
    cases_dir.mkdir()
    ages = [30, 60, 20, 45, 25]
    write_cases([make_case(f"{i + 1}-3", "FM"[i % 2], age) for i, age in enumerate(ages)], cases_dir / "eval.jsonl")
    monkeypatch.setattr(ex, "load_model", lambda config, artifacts_dir, cache_path: CaseScriptedModel())
    evaluation = EvaluationConfig(explainers=["template", "base", "teacher"],
                                  sampling=SamplingConfig(temperature=0, max_new_tokens=96))
    common = {"evaluation": evaluation, "teacher": TeacherConfig(best_of=2, min_words=5), "training": TrainingConfig(),
              "cases": cases_dir, "artifacts_dir": tmp_path}
    whole = tmp_path / "whole"
    whole.mkdir()
    ex.generate_explanations(whole, **common)
    shards = []
    for name in ("template", "base", "teacher"):
        for k in range(3):  # shards of 2 cases: 2, 2, 1
            shards.append(tmp_path / f"{name}-{k}")
            shards[-1].mkdir()
            ex.generate_explanations(shards[-1], **common, explainer=name, shard=k, shard_cases=2)
    assert len(pd.read_parquet(shards[-1] / "explanations.parquet")) == 1
    merged = tmp_path / "merged"
    merged.mkdir()
    ex.merge_explanations(merged, evaluation=evaluation, shards=shards)
    for name in ("explanations.parquet", "attributes.parquet"):
        assert (merged / name).read_bytes() == (whole / name).read_bytes(), name


def test_generate_explanations_needs_eval_cases(tmp_path):
    (tmp_path / "cases").mkdir(), (tmp_path / "out").mkdir()
    (tmp_path / "cases" / "eval.jsonl").write_text("")
    with pytest.raises(ValueError, match="no evaluation cases"):
        ex.generate_explanations(tmp_path / "out", evaluation=EvaluationConfig(explainers=["template"]),
                                 teacher=TeacherConfig(), training=TrainingConfig(), cases=tmp_path / "cases",
                                 artifacts_dir=tmp_path)


@pytest.mark.slow
def test_real_base_model_explains_and_predicts(tmp_path):
    """SmolLM2-135M (embedded) explains two cases and predicts their attributes, for real."""
    cases_dir, out = tmp_path / "cases", tmp_path / "out"
    cases_dir.mkdir(), out.mkdir()
    write_cases([make_case("1-3"), make_case("2-3", "M", 60, "student")], cases_dir / "eval.jsonl")
    evaluation = EvaluationConfig(explainers=["base"], sampling=SamplingConfig(temperature=0, max_new_tokens=48))
    artifacts = Path(__file__).resolve().parent.parent / "artifacts"
    ex.generate_explanations(out, evaluation=evaluation, teacher=TeacherConfig(), training=TrainingConfig(),
                             cases=cases_dir, artifacts_dir=artifacts)
    frame = pd.read_parquet(out / "explanations.parquet")
    assert len(frame) == 2 and (frame["tokens"] > 0).all() and frame["text"].str.len().gt(0).all()
    assert len(pd.read_parquet(out / "attributes.parquet")) == 6
