"""teacher_generate and sample_pairs: explanation parsing, retries, best-of-n, pairs; the output
files; and (with the real local model) the stages end to end through load_chat_model."""

from __future__ import annotations

import json

import polars as pl
import pytest

import tasks.teacher as teacher_module
from recxplain.config import JudgeConfig, PairsConfig, SamplingConfig, TeacherConfig, TrainingConfig
from recxplain.prompts import explain_messages, read_templates
from recxplain.schemas import write_cases
from tasks.teacher import clean_explanation, parse_explanation, sample_pairs, student_llm, teacher_generate
from tests.scripted import GENRES, GOOD, TECHNICAL, TITLES, ScriptedModel, toy_case

TEMPLATES = read_templates("explain_seed.j2", "explainability.j2")


def test_clean_explanation():
    assert clean_explanation('Explanation: "You will love Babe."') == "You will love Babe."
    assert clean_explanation("```\nYou will love Babe.\n```") == "You will love Babe."
    assert clean_explanation("You will love Babe. It is warm and") == "You will love Babe."
    assert clean_explanation("You will love Babe and") == "You will love Babe and"  # nothing complete to keep
    assert clean_explanation("Babe   is\n\nfun!") == "Babe is fun!"


def test_parse_explanation_reasons():
    assert parse_explanation(GOOD, min_words=5, max_words=60) == GOOD
    with pytest.raises(ValueError, match="the answer is empty"):
        parse_explanation("  ", min_words=5, max_words=60)
    with pytest.raises(ValueError, match="has 2 words; write at least 5"):
        parse_explanation("Watch Babe.", min_words=5, max_words=60)
    with pytest.raises(ValueError, match="has 30 words; write at most 20"):
        parse_explanation(GOOD, min_words=5, max_words=20)
    with pytest.raises(ValueError, match='repeats itself \\("babe is a fun movie"\\)'):
        parse_explanation("Babe is a fun movie. Babe is a fun movie. Babe is a fun movie.", min_words=5, max_words=60)


@pytest.fixture
def cases_dir(tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    write_cases([toy_case("1-2"), toy_case("3-2"), toy_case("4-2")], folder / "train.jsonl")
    (folder / "catalogue.json").write_text(json.dumps({"titles": TITLES, "genres": GENRES}))
    return folder


def use_model(monkeypatch, model):
    monkeypatch.setattr(teacher_module, "_load", lambda cfg, artifacts_dir, cache_path: model)


def test_teacher_generate_keeps_valid_answers_only(tmp_path, cases_dir, monkeypatch):
    # first answers in case order: 1-2 good; 3-2 too short, then good when re-asked; 4-2 short forever
    script = iter([GOOD, "Too short.", "Nope."])

    def scripted(messages, j):
        if any(m["role"] == "assistant" for m in messages):
            return GOOD if messages[-2]["content"] == "Too short." else "Nope."
        return next(script)

    model = ScriptedModel(scripted)
    use_model(monkeypatch, model)
    teacher = TeacherConfig(max_parse_retries=2, min_words=5, max_words=60)
    out = tmp_path / "out"
    out.mkdir()
    teacher_generate(out, teacher=teacher, cases=cases_dir, templates=TEMPLATES, artifacts_dir=tmp_path)

    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert [r["case_id"] for r in rows] == ["1-2", "3-2"]
    assert rows[0]["messages"][:-1] == explain_messages(toy_case(), "explain_seed.j2")
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": GOOD}
    assert rows[1]["messages"][-1]["content"] == GOOD
    generations = pl.read_parquet(out / "generations.parquet")
    assert generations["attempts"].to_list() == [1, 2, 3]
    assert generations["valid"].to_list() == [True, True, False]
    assert generations["error"][2] == "the explanation has 1 words; write at least 5"
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["cases"], stats["sft_rows"], stats["valid_first_try"], stats["retries"]) == (3, 2, 1, 3)
    assert stats["validity_ratio"] == pytest.approx(2 / 3, abs=1e-4)
    assert stats["usage"]["calls"] == 6 and len(stats["template_hash"]) == 16


def test_best_of_keeps_the_answer_the_judge_prefers(tmp_path, cases_dir, monkeypatch):
    # three samples per case; the third stays one word long when re-asked
    model = ScriptedModel(lambda messages, j: "Babe." if len(messages) > 2 else [TECHNICAL, GOOD, "Babe."][j])
    use_model(monkeypatch, model)
    out = tmp_path / "out"
    out.mkdir()
    teacher = TeacherConfig(best_of=3, min_words=5)
    with pytest.raises(ValueError, match="best_of > 1 needs the judge"):
        teacher_generate(out, teacher=teacher, cases=cases_dir, templates=TEMPLATES, artifacts_dir=tmp_path)
    teacher_generate(out, teacher=teacher, cases=cases_dir, templates=TEMPLATES, artifacts_dir=tmp_path,
                     judge=JudgeConfig(kind="rubric"))
    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in rows] == [GOOD] * 3
    generations = pl.read_parquet(out / "generations.parquet").filter(pl.col("case_id") == "1-2")
    assert generations["kept"].to_list() == [False, True, False]
    assert generations["score"][0] == pytest.approx((4 + 2 / 3) / 6) and generations["score"][1] == 1.0
    assert generations["valid"].to_list() == [True, True, False]  # "Babe." is 1 word


def test_sample_pairs_from_the_teacher(tmp_path, cases_dir, monkeypatch):
    # case 5-2 (recommending Heat) gets the same text twice: no preference, dropped
    identical = toy_case("5-2").model_copy(update={"item": toy_case().item.model_copy(update={"title": "Heat"})})
    write_cases([toy_case("1-2"), identical], cases_dir / "train.jsonl")
    model = ScriptedModel(lambda messages, j: GOOD if '"Heat"' in messages[1]["content"] else [GOOD, TECHNICAL + " and"][j])
    use_model(monkeypatch, model)
    out = tmp_path / "out"
    out.mkdir()
    pairs = PairsConfig(sampling=SamplingConfig(temperature=1.0, top_p=0.95, seed=3))
    sample_pairs(out, pairs=pairs, teacher=TeacherConfig(min_words=5), training=TrainingConfig(),
                 cases=cases_dir, student=None, templates=TEMPLATES, artifacts_dir=tmp_path)
    frame = pl.read_parquet(out / "pairs.parquet")
    assert frame["case_id"].to_list() == ["1-2"]  # 5-2's two samples were identical
    assert frame["text_a"][0] == GOOD and frame["text_b"][0] == TECHNICAL  # unfinished " and" cut
    assert frame["source"][0] == "teacher" and frame["valid_a"][0] and frame["valid_b"][0]
    assert json.loads(frame["prompt"][0]) == explain_messages(toy_case(), "explain_seed.j2")
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["pairs"], stats["identical_dropped"]) == (1, 1)


def test_student_pairs_need_a_student(tmp_path, cases_dir):
    with pytest.raises(ValueError, match="no student folder"):
        sample_pairs(tmp_path, pairs=PairsConfig(source="student"), teacher=TeacherConfig(), training=TrainingConfig(),
                     cases=cases_dir, student=None, templates=TEMPLATES, artifacts_dir=tmp_path)
    student = tmp_path / "sft"
    (student / "adapter").mkdir(parents=True)
    cfg = student_llm(TrainingConfig(base_model="smollm2"), student)
    assert (cfg.provider, cfg.model, cfg.adapter) == ("local", "smollm2", student / "adapter")
    with pytest.raises(FileNotFoundError, match="no adapter/ or merged/"):
        student_llm(TrainingConfig(), tmp_path)
