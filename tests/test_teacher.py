"""teacher_generate and sample_pairs: explanation parsing, retries, best-of-n, pairs; the output
files; and (with the real local model) the stages end to end through load_chat_model."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import tasks.teacher as teacher_module
from recxplain.config import JudgeConfig, LLMConfig, PairsConfig, SamplingConfig, TeacherConfig, TrainingConfig
from recxplain.prompts import explain_messages, read_templates
from recxplain.schemas import write_cases
from tasks.judge import judge_pairs
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


# ------------------------------------------------------------------ end to end, real local model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random 2-layer Llama with the SmolLM2 tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from recxplain.models import resolve_model

    artifacts = Path(__file__).resolve().parents[1] / "artifacts"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2", artifacts))
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")
    return folder


def tiny_teacher(tiny) -> TeacherConfig:
    llm = LLMConfig(model=str(tiny / "base"), dtype="float32", device="cpu", batch_size=8)
    short = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=1)
    return TeacherConfig(llm=llm, sampling=short, min_words=1, max_words=60, max_parse_retries=1)


def test_teacher_generate_through_load_chat_model(tmp_path, cases_dir, tiny):
    """A real (random, tiny) local model: the SFT file holds exactly the valid answers, the
    accounting adds up, and a rerun of the killed or finished stage is answered from its cache."""
    teacher, templates = tiny_teacher(tiny), read_templates("explain_seed.j2")
    out = tmp_path / "teacher"
    out.mkdir()
    teacher_generate(out, teacher=teacher, cases=cases_dir, templates=templates, artifacts_dir=tmp_path)
    stats = json.loads((out / "stats.json").read_text())
    generations = pl.read_parquet(out / "generations.parquet")
    rows = (out / "sft.jsonl").read_text().splitlines()
    assert stats["cases"] == 3 and len(rows) == stats["sft_rows"] == generations["valid"].sum()
    assert stats["usage"]["calls"] == 3 + stats["retries"] and stats["usage"]["cache_hits"] == 0
    first = (out / "sft.jsonl").read_text()
    teacher_generate(out, teacher=teacher, cases=cases_dir, templates=templates, artifacts_dir=tmp_path)
    again = json.loads((out / "stats.json").read_text())
    assert again["usage"]["calls"] == 0 and again["usage"]["cache_hits"] == stats["usage"]["calls"]
    assert (out / "sft.jsonl").read_text() == first


def test_pairs_and_judge_through_load_chat_model(tmp_path, cases_dir, tiny):
    """sample_pairs (teacher, then a student adapter) -> judge_pairs (ensemble with the tiny model
    as the LLM judge): every file is written and gibberish verdicts are counted, never raised."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    student = tmp_path / "sft"
    base = AutoModelForCausalLM.from_pretrained(tiny / "base")
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(student / "adapter")
    teacher, templates = tiny_teacher(tiny), read_templates("explain_seed.j2")
    pairs_out = {}
    for source, folder in (("teacher", None), ("student", student)):
        pairs_out[source] = tmp_path / f"pairs-{source}"
        pairs_out[source].mkdir()
        sample_pairs(pairs_out[source], pairs=PairsConfig(source=source, sampling=teacher.sampling), teacher=teacher,
                     training=TrainingConfig(base_model=str(tiny / "base")), cases=cases_dir, student=folder,
                     templates=templates, artifacts_dir=tmp_path)
        frame = pl.read_parquet(pairs_out[source] / "pairs.parquet")
        pair_stats = json.loads((pairs_out[source] / "stats.json").read_text())
        assert frame.height + pair_stats["identical_dropped"] == 3 and set(frame["source"]) <= {source}
    assert "+" in pl.read_parquet(pairs_out["student"] / "pairs.parquet")["model"][0]  # base + adapter

    judged = tmp_path / "judged"
    judged.mkdir()
    # A lenient gate and a heavy LLM weight: the random model's vote could change every verdict,
    # so the ensemble asks it about every pair (it asks only where the vote can matter).
    judge = JudgeConfig(kind="ensemble", llm=teacher.llm, max_parse_retries=1, llm_weight=0.9, min_rubric_score=0.0,
                        min_words=1, max_words=10_000, sampling=SamplingConfig(temperature=0.0, max_new_tokens=16))
    judge_pairs(judged, judge=judge, cases=cases_dir, pairs=pairs_out["teacher"],
                templates=read_templates("judge_pair.j2"), artifacts_dir=tmp_path)
    verdicts = pl.read_parquet(judged / "verdicts.parquet")
    stats = json.loads((judged / "stats.json").read_text())
    preferences = [json.loads(line) for line in (judged / "preferences.jsonl").read_text().splitlines()]
    assert verdicts.height == stats["pairs_judged"] == pl.read_parquet(pairs_out["teacher"] / "pairs.parquet").height
    # a random model writes no JSON: every LLM verdict is invalid after its retry, the rubric decides
    assert stats["llm_invalid"] == stats["llm_asked"] == verdicts.height and stats["validity_ratio"] == 0.0
    assert set(verdicts["attempts"]) == {4}  # (1 + 1 retry) x 2 orders
    assert len(preferences) == stats["kept"] == verdicts["kept"].sum()
    for row in preferences:
        assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
