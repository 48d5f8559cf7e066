"""teacher_generate and sample_pairs: retries, best-of-n by the checks, the students' prompt,
pairs; the output files; and (with the real local model) the stages end to end through
load_chat_model. Parsing and cleaning an answer (recxplain.checks) are tested in test_checks.py."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import recxplain.teaching
from recxplain.checks import Catalogue, check_explanation
from recxplain.config import JudgeConfig, LLMConfig, PairsConfig, SamplingConfig, TeacherConfig, TrainingConfig
from recxplain.llm import Generation
from recxplain.models import student_llm
from recxplain.prompts import RETRY_MESSAGE, explain_messages, merge_stats, read_templates
from recxplain.schemas import write_cases
from tasks.judge import judge_pairs
from tasks.pairs import merge_pairs, sample_pairs
from tasks.teacher import merge_teacher, teacher_generate
from tests.scripted import GENRES, GOOD, TECHNICAL, TITLES, ScriptedModel, toy_case

TEMPLATES = read_templates("explain_seed.j2")
RETRY = RETRY_MESSAGE.split("{")[0]


def is_retry(messages: list[dict]) -> bool:
    """Whether `messages` re-asks a failed answer (the prompt itself holds the worked example's
    assistant turn, so an assistant message alone says nothing)."""
    return messages[-1]["content"].startswith(RETRY)


@pytest.fixture
def cases_dir(tmp_path):
    folder = tmp_path / "cases"
    folder.mkdir()
    write_cases([toy_case("1-2"), toy_case("3-2"), toy_case("4-2")], folder / "train.jsonl")
    (folder / "catalogue.json").write_text(json.dumps({"titles": TITLES, "genres": GENRES}))
    return folder


def use_model(monkeypatch, model):
    monkeypatch.setattr(recxplain.teaching, "load_chat_model", lambda cfg, artifacts_dir, cache_path: model)


def test_teacher_generate_keeps_valid_answers_only(tmp_path, cases_dir, monkeypatch):
    # first answers in case order: 1-2 good; 3-2 too short, then good when re-asked; 4-2 short forever
    script = iter([GOOD, "Too short.", "Nope."])

    def scripted(messages, j):
        if is_retry(messages):
            return GOOD if messages[-2]["content"] == "Too short." else "Nope."
        return next(script)

    model = ScriptedModel(scripted)
    use_model(monkeypatch, model)
    teacher = TeacherConfig(best_of=1, max_parse_retries=2, min_words=5, max_words=60)
    out = tmp_path / "out"
    out.mkdir()
    teacher_generate(out, teacher=teacher, cases=cases_dir, templates=TEMPLATES, artifacts_dir=tmp_path)

    # the teacher is asked with the worked example; the SFT rows hold the students' prompt, without it
    assert model.prompts[0] == explain_messages(toy_case(), "explain_seed.j2")
    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert [r["case_id"] for r in rows] == ["1-2", "3-2"]
    assert rows[0]["messages"][:-1] == explain_messages(toy_case(), "explain_seed.j2", example=False)
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": GOOD}
    assert rows[1]["messages"][-1]["content"] == GOOD
    generations = pl.read_parquet(out / "generations.parquet")
    assert generations["attempts"].to_list() == [1, 2, 3]
    assert generations["valid"].to_list() == [True, True, False]
    assert generations["error"][2] == "the explanation has 1 words; write at least 5"
    assert generations["passed"].to_list() == [True, True, False] and generations["score"][2] is None
    assert generations["failed"].to_list() == [[], [], []]
    assert "latency_s" not in generations.columns and "cached" not in generations.columns
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["cases"], stats["sft_rows"], stats["valid_first_try"], stats["retries"]) == (3, 2, 1, 3)
    assert (stats["samples_passing_checks"], stats["kept_passing_checks"]) == (2, 2)
    assert stats["validity_ratio"] == pytest.approx(2 / 3, abs=1e-4)
    assert stats["usage"]["calls"] == 6 and "template_hash" not in stats  # the manifest holds it


def test_students_may_see_the_worked_example(tmp_path, cases_dir, monkeypatch):
    use_model(monkeypatch, ScriptedModel(lambda messages, j: GOOD))
    out = tmp_path / "out"
    out.mkdir()
    teacher = TeacherConfig(best_of=1, min_words=5, students_see_example=True)
    teacher_generate(out, teacher=teacher, cases=cases_dir, templates=TEMPLATES, artifacts_dir=tmp_path)
    row = json.loads((out / "sft.jsonl").read_text().splitlines()[0])
    assert row["messages"][:-1] == explain_messages(toy_case(), "explain_seed.j2")
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]


def test_best_of_keeps_the_answer_the_checks_prefer(tmp_path, cases_dir, monkeypatch):
    # three samples per case; the third stays one word long when re-asked
    model = ScriptedModel(lambda messages, j: "Babe." if is_retry(messages) else [TECHNICAL, GOOD, "Babe."][j])
    use_model(monkeypatch, model)
    out = tmp_path / "out"
    out.mkdir()
    teacher = TeacherConfig(best_of=3, min_words=5, max_parse_retries=1)
    teacher_generate(out, teacher=teacher, cases=cases_dir, templates=TEMPLATES, artifacts_dir=tmp_path)
    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in rows] == [GOOD] * 3
    generations = pl.read_parquet(out / "generations.parquet").filter(pl.col("case_id") == "1-2")
    assert generations["kept"].to_list() == [False, True, False]
    technical = check_explanation(toy_case(), TECHNICAL, catalogue=Catalogue(TITLES, GENRES), min_words=5)
    assert technical.failed == ["no_technical_terms"] and technical.specificity == pytest.approx(2 / 3)
    assert generations["score"][0] == pytest.approx((7 + 2 / 3) / 9) == technical.score
    assert generations["score"][1] == 1.0
    assert generations["failed"].to_list() == [["no_technical_terms"], [], []]
    assert generations["passed"].to_list() == [False, True, False]
    assert generations["valid"].to_list() == [True, True, False]  # "Babe." is 1 word
    assert generations["attempts"].to_list() == [1, 1, 2]


def test_teacher_samples_pair_the_kept_answer_with_the_worst_other(tmp_path, cases_dir, monkeypatch):
    # case 3-2 only ever gets TECHNICAL (no passing answer: left out, no pair); the others get
    # TECHNICAL, GOOD and "Babe." (one word, unusable: the worst)
    model = ScriptedModel(lambda messages, j: "Babe." if is_retry(messages) else
                          TECHNICAL if len(model.prompts) == 2 else [TECHNICAL, GOOD, "Babe."][j])
    use_model(monkeypatch, model)
    teacher = TeacherConfig(best_of=3, min_words=5)
    (tmp_path / "teacher").mkdir()
    teacher_generate(
        tmp_path / "teacher", teacher=teacher, cases=cases_dir, templates=TEMPLATES, artifacts_dir=tmp_path
    )
    calls = len(model.prompts)
    out = tmp_path / "pairs"
    out.mkdir()
    sample_pairs(out, pairs=PairsConfig(source="teacher_samples"), teacher=teacher, training=TrainingConfig(),
                 cases=cases_dir, student=None, templates=TEMPLATES, artifacts_dir=tmp_path,
                 teacher_samples=tmp_path / "teacher")
    assert len(model.prompts) == calls  # nothing sampled
    frame = pl.read_parquet(out / "pairs.parquet")
    assert frame["case_id"].to_list() == ["1-2", "4-2"]
    assert set(frame["text_a"]) == {GOOD} and set(frame["text_b"]) == {"Babe."}
    assert frame["valid_a"].all() and not frame["valid_b"].any()
    assert json.loads(frame["prompt"][0]) == explain_messages(toy_case(), "explain_seed.j2", example=False)
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["pairs"], stats["cases_without_kept_answer"], stats["source"]) == (2, 1, "teacher_samples")
    with pytest.raises(ValueError, match="no teacher_generate folder"):
        sample_pairs(out, pairs=PairsConfig(source="teacher_samples"), teacher=teacher, training=TrainingConfig(),
                     cases=cases_dir, student=None, templates=TEMPLATES, artifacts_dir=tmp_path)


def test_sft_answers_passing_adds_every_passing_sample_and_pairs_each(tmp_path, cases_dir, monkeypatch):
    # every case: GOOD (kept, first), the other passing answer, then "Babe." (unusable: the worst)
    other = ("You loved Toy Story and The Lion King, so Babe should suit you too: it is a warm comedy "
             "about a brave little pig.")
    use_model(monkeypatch, ScriptedModel(lambda messages, j: "Babe." if is_retry(messages) else
                                         [GOOD, other, "Babe."][j]))
    teacher = TeacherConfig(best_of=3, min_words=5, sft_answers="passing")
    (tmp_path / "teacher").mkdir()
    teacher_generate(tmp_path / "teacher", teacher=teacher, cases=cases_dir, templates=TEMPLATES,
                     artifacts_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "teacher" / "sft.jsonl").read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in rows] == [GOOD, other] * 3
    generations = pl.read_parquet(tmp_path / "teacher" / "generations.parquet")
    assert generations["kept"].to_list() == [True, False, False] * 3
    assert generations["sft"].to_list() == [True, True, False] * 3
    stats = json.loads((tmp_path / "teacher" / "stats.json").read_text())
    assert (stats["sft_cases"], stats["sft_rows"]) == (3, 6)
    out = tmp_path / "pairs"
    out.mkdir()
    sample_pairs(out, pairs=PairsConfig(source="teacher_samples"), teacher=teacher, training=TrainingConfig(),
                 cases=cases_dir, student=None, templates=TEMPLATES, artifacts_dir=tmp_path,
                 teacher_samples=tmp_path / "teacher")
    frame = pl.read_parquet(out / "pairs.parquet")
    assert frame["text_a"].to_list() == [GOOD, other] * 3 and set(frame["text_b"]) == {"Babe."}
    # "best" (the default) keeps one answer per case
    teacher_generate(tmp_path / "teacher", teacher=teacher.model_copy(update={"sft_answers": "best"}),
                     cases=cases_dir, templates=TEMPLATES, artifacts_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "teacher" / "sft.jsonl").read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in rows] == [GOOD] * 3


def test_best_of_without_a_passing_sample(tmp_path, cases_dir, monkeypatch):
    # every sample is usable, none passes every check (TECHNICAL leaks the recommender's internals)
    use_model(monkeypatch, ScriptedModel(lambda messages, j: TECHNICAL))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match="none of 3 cases has an answer that passes the checks"):
        teacher_generate(out, teacher=TeacherConfig(best_of=2, min_words=5), cases=cases_dir, templates=TEMPLATES,
                         artifacts_dir=tmp_path)
    stats = json.loads((out / "stats.json").read_text())  # written before the stage gives up
    assert (stats["valid_samples"], stats["samples_passing_checks"], stats["sft_rows"]) == (6, 0, 0)
    assert (out / "sft.jsonl").read_text() == ""
    # require_checks=False keeps the best usable answer instead
    teacher_generate(out, teacher=TeacherConfig(best_of=2, min_words=5, require_checks=False), cases=cases_dir,
                     templates=TEMPLATES, artifacts_dir=tmp_path)
    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert [r["messages"][-1]["content"] for r in rows] == [TECHNICAL] * 3
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["sft_rows"], stats["kept_passing_checks"]) == (3, 0)
    assert pl.read_parquet(out / "generations.parquet")["kept"].to_list() == [True, False] * 3


def test_a_case_without_a_passing_sample_is_left_out(tmp_path, cases_dir, monkeypatch):
    # the second case (3-2) only ever gets TECHNICAL; the others get GOOD as their second sample
    model = ScriptedModel(lambda messages, j: TECHNICAL if j == 0 or len(model.prompts) == 2 else GOOD)
    use_model(monkeypatch, model)
    out = tmp_path / "out"
    out.mkdir()
    teacher_generate(out, teacher=TeacherConfig(best_of=2, min_words=5), cases=cases_dir, templates=TEMPLATES,
                     artifacts_dir=tmp_path)
    rows = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert [(r["case_id"], r["messages"][-1]["content"]) for r in rows] == [("1-2", GOOD), ("4-2", GOOD)]
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["sft_rows"], stats["kept_passing_checks"], stats["samples_passing_checks"]) == (2, 2, 2)


def test_sample_pairs_from_the_teacher(tmp_path, cases_dir, monkeypatch):
    # case 5-2 (recommending Heat) gets the same text twice: no preference, dropped
    identical = toy_case("5-2").model_copy(update={"item": toy_case().item.model_copy(update={"title": "Heat"})})
    write_cases([toy_case("1-2"), identical], cases_dir / "train.jsonl")
    model = ScriptedModel(lambda messages, j: GOOD if "enjoy Heat." in messages[-1]["content"]
                          else [GOOD, TECHNICAL + " and"][j])
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
    # the teacher samples with the worked example; the row holds the students' prompt, without it
    assert model.prompts[0] == explain_messages(toy_case(), "explain_seed.j2")
    assert json.loads(frame["prompt"][0]) == explain_messages(toy_case(), "explain_seed.j2", example=False)
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["pairs"], stats["identical_dropped"]) == (1, 1)


def test_more_candidates_pair_the_best_with_the_worst(tmp_path, cases_dir, monkeypatch):
    blurb = "Babe is a must-watch for anyone who loves a warm comedy, and it is a great choice for the whole family."
    use_model(monkeypatch, ScriptedModel(lambda messages, j: [TECHNICAL, "Watch Babe.", GOOD, blurb][j]))
    out = tmp_path / "out"
    out.mkdir()
    pairs = PairsConfig(candidates=4)
    sample_pairs(out, pairs=pairs, teacher=TeacherConfig(min_words=5), training=TrainingConfig(),
                 cases=cases_dir, student=None, templates=TEMPLATES, artifacts_dir=tmp_path)
    frame = pl.read_parquet(out / "pairs.parquet")
    assert frame.height == 3
    assert set(frame["text_a"]) == {GOOD} and set(frame["text_b"]) == {"Watch Babe."}  # too short, not personal
    assert frame["valid_a"].all() and not frame["valid_b"].any()
    assert json.loads((out / "stats.json").read_text())["validity_ratio"] == 0.5


def test_a_candidate_cut_at_max_new_tokens_keeps_its_cut_off_end(tmp_path, cases_dir, monkeypatch):
    # The checks must see that the answer did not stop, not a tidied version of it.
    running = Generation(GOOD + " And people who liked it also", completion_tokens=64, finish_reason="length")
    use_model(monkeypatch, ScriptedModel(lambda messages, j: [GOOD, running][j]))
    out = tmp_path / "out"
    out.mkdir()
    sample_pairs(out, pairs=PairsConfig(), teacher=TeacherConfig(min_words=5), training=TrainingConfig(),
                 cases=cases_dir, student=None, templates=TEMPLATES, artifacts_dir=tmp_path)
    frame = pl.read_parquet(out / "pairs.parquet")
    assert frame["text_b"][0] == GOOD + " And people who liked it also"
    assert frame["valid_a"][0] and not frame["valid_b"][0]


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
    # A random model passes no check: keep every usable answer (require_checks off), one per case.
    return TeacherConfig(llm=llm, sampling=short, min_words=1, max_words=60, max_parse_retries=1, best_of=1,
                         require_checks=False)


def run_teacher(out: Path, teacher: TeacherConfig, cases_dir: Path, templates: dict) -> None:
    """teacher_generate, tolerating the one error a random model may cause: no usable answer at
    all (every answer stops mid-sentence), after which every file is written all the same."""
    try:
        teacher_generate(out, teacher=teacher, cases=cases_dir, templates=templates, artifacts_dir=out.parent)
    except ValueError as err:
        assert "none of 3 cases" in str(err)
        assert json.loads((out / "stats.json").read_text())["valid_samples"] == 0


def test_teacher_generate_through_load_chat_model(tmp_path, cases_dir, tiny):
    """A real (random, tiny) local model: the SFT file holds exactly the valid answers, the
    accounting adds up, and a rerun of the killed or finished stage is answered from its cache."""
    teacher, templates = tiny_teacher(tiny), read_templates("explain_seed.j2")
    out = tmp_path / "teacher"
    out.mkdir()
    run_teacher(out, teacher, cases_dir, templates)
    stats = json.loads((out / "stats.json").read_text())
    generations = pl.read_parquet(out / "generations.parquet")
    rows = (out / "sft.jsonl").read_text().splitlines()
    assert stats["cases"] == 3 and len(rows) == stats["sft_rows"] == generations["valid"].sum()
    assert stats["usage"]["calls"] == 3 + stats["retries"] and stats["usage"]["cache_hits"] == 0
    first = (out / "sft.jsonl").read_text()
    run_teacher(out, teacher, cases_dir, templates)
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

    # The random model's answers rarely end a sentence, and a pair of unusable answers is
    # both-bad whatever the vote; one known, usable pair gives the LLM a vote that matters.
    sampled = pl.read_parquet(pairs_out["teacher"] / "pairs.parquet")
    known = sampled.head(0).vstack(pl.DataFrame([{
        "case_id": "1-2", "text_a": TECHNICAL, "text_b": GOOD, "source": "teacher",
        "prompt": json.dumps(explain_messages(toy_case(), "explain_seed.j2", example=False)),
        "model": teacher.llm.model, "valid_a": True, "valid_b": True}], schema=sampled.schema))
    to_judge = tmp_path / "pairs-to-judge"
    to_judge.mkdir()
    pl.concat([sampled, known]).write_parquet(to_judge / "pairs.parquet")

    judged = tmp_path / "judged"
    judged.mkdir()
    # A lenient gate and an even weight: the random model's vote could change the known pair's
    # verdict (rubric margin 0.5 * -0.148), so the ensemble asks it (only where the vote can matter).
    judge = JudgeConfig(kind="ensemble", llm=teacher.llm, max_parse_retries=1, llm_weight=0.5, min_rubric_score=0.0,
                        min_words=1, max_words=10_000, sampling=SamplingConfig(temperature=0.0, max_new_tokens=16))
    judge_pairs(judged, judge=judge, cases=cases_dir, pairs=to_judge,
                templates=read_templates("judge_pair.j2"), artifacts_dir=tmp_path)
    verdicts = pl.read_parquet(judged / "verdicts.parquet")
    stats = json.loads((judged / "stats.json").read_text())
    preferences = [json.loads(line) for line in (judged / "preferences.jsonl").read_text().splitlines()]
    assert verdicts.height == stats["pairs_judged"] == sampled.height + 1
    # a random model writes no JSON: every LLM verdict is invalid after its retry, the rubric decides
    assert stats["llm_invalid"] == stats["llm_asked"] >= 1 and stats["validity_ratio"] == 0.0
    asked = verdicts.filter(pl.col("llm_choice").is_not_null())
    assert set(asked["attempts"]) == {4}  # (1 + 1 retry) x 2 orders
    last = verdicts.row(-1, named=True)
    assert (last["verdict"], last["llm_choice"], last["attempts"]) == ("b", "invalid", 4)
    unusable = [i for i, row in enumerate(sampled.iter_rows(named=True)) if not (row["valid_a"] or row["valid_b"])]
    assert all(verdicts["verdict"][i] == "both_bad" and verdicts["llm_choice"][i] is None for i in unusable)
    assert len(preferences) == stats["kept"] == verdicts["kept"].sum() >= 1
    assert preferences[-1]["chosen"] == [{"role": "assistant", "content": GOOD}]
    for row in preferences:
        assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"


def test_the_greedy_answer_is_a_candidate(tmp_path, cases_dir, monkeypatch):
    """pairs.greedy_candidate: the answer read at temperature 0 (the evaluation's) is one of the
    two, so its loop is paired against a sample."""
    loop = "You rated Toy Story 5/5, and people who liked it also liked Babe. Babe is a comedy, and people who " \
           "liked it also liked Babe."
    temperatures = []

    class ByTemperature(ScriptedModel):
        def generate(self, prompts, sampling, n=1):
            temperatures.append((sampling.temperature, n))
            return super().generate(prompts, sampling, n)

    model = ByTemperature(lambda messages, j: loop if temperatures[-1][0] == 0 else GOOD)
    use_model(monkeypatch, model)
    out = tmp_path / "out"
    out.mkdir()
    pairs = PairsConfig(greedy_candidate=True, sampling=SamplingConfig(temperature=0.9, top_p=0.95))
    sample_pairs(out, pairs=pairs, teacher=TeacherConfig(min_words=5), training=TrainingConfig(),
                 cases=cases_dir, student=None, templates=TEMPLATES, artifacts_dir=tmp_path)
    assert temperatures == [(0.9, 1), (0.0, 1)]
    frame = pl.read_parquet(out / "pairs.parquet")
    assert set(frame["text_a"]) == {loop} and set(frame["text_b"]) == {GOOD}


def test_the_greedy_candidate_decodes_with_greedy_sampling(tmp_path, cases_dir, monkeypatch):
    """pairs.greedy_sampling: the greedy candidate decodes as the evaluation does (its repetition
    penalty included), the other candidates at `sampling`."""
    seen = []

    class Recording(ScriptedModel):
        def generate(self, prompts, sampling, n=1):
            seen.append(sampling)
            return super().generate(prompts, sampling, n)

    use_model(monkeypatch, Recording(lambda messages, j: GOOD))
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=64, repetition_penalty=1.1)
    pairs = PairsConfig(greedy_candidate=True, greedy_sampling=greedy,
                        sampling=SamplingConfig(temperature=0.9, top_p=0.95))
    sample_pairs(tmp_path, pairs=pairs, teacher=TeacherConfig(min_words=5), training=TrainingConfig(),
                 cases=cases_dir, student=None, templates=TEMPLATES, artifacts_dir=tmp_path)
    assert seen == [pairs.sampling, greedy]


def run_in_shards(stage, merge, tmp_path, name: str, shard_cases: int, count: int, **inputs) -> Path:
    """`stage` once per shard of `shard_cases` of `count` cases, then `merge` of the shards' folders."""
    folders = []
    for k in range(-(-count // shard_cases)):
        folders.append(tmp_path / f"{name}-shard-{k}")
        folders[-1].mkdir()
        stage(folders[-1], **inputs, shard=k, shard_cases=shard_cases)
    merged = tmp_path / f"{name}-merged"
    merged.mkdir()
    merge(merged, shards=folders)
    return merged


@pytest.mark.parametrize("shard_cases", [1, 2])
def test_teacher_and_pairs_in_shards_write_what_one_call_writes(tmp_path, cases_dir, monkeypatch, shard_cases):
    """runtime.shard_cases: teacher_generate and sample_pairs run per shard of training cases and
    their merges write the bytes one call for every case writes (a fresh model per shard, as in a
    worker; its counters summed)."""
    replies = [GOOD, TECHNICAL, "Babe."]
    monkeypatch.setattr(recxplain.teaching, "load_chat_model",
                        lambda cfg, artifacts_dir, cache_path: ScriptedModel(lambda messages, j: replies[j]))
    teacher = TeacherConfig(best_of=3, min_words=5, max_parse_retries=1)
    one = tmp_path / "teacher"
    one.mkdir()
    teacher_generate(one, teacher=teacher, cases=cases_dir, templates=TEMPLATES, artifacts_dir=tmp_path)
    merged = run_in_shards(teacher_generate, merge_teacher, tmp_path, "teacher", shard_cases, 3,
                           teacher=teacher, cases=cases_dir, templates=TEMPLATES, artifacts_dir=tmp_path)
    for name in ("sft.jsonl", "generations.parquet", "stats.json"):
        assert (merged / name).read_bytes() == (one / name).read_bytes(), name
    assert json.loads((merged / "stats.json").read_text())["samples"] == 9

    pairs = PairsConfig(candidates=3, greedy_candidate=True)
    inputs = dict(pairs=pairs, teacher=teacher, training=TrainingConfig(), cases=cases_dir, student=None,
                  templates=TEMPLATES, artifacts_dir=tmp_path)
    one = tmp_path / "pairs"
    one.mkdir()
    sample_pairs(one, **inputs)
    merged = run_in_shards(sample_pairs, merge_pairs, tmp_path, "pairs", shard_cases, 3, **inputs)
    for name in ("pairs.parquet", "stats.json"):
        assert (merged / name).read_bytes() == (one / name).read_bytes(), name
    assert json.loads((merged / "stats.json").read_text())["pairs"] == 3


def test_merge_stats_sums_counts_and_keeps_settings():
    """The shards' stats.json as one: counts summed (nested too), settings and text kept, and a
    field a shard has no number for (its validity ratio when it kept no pair) left to the caller."""
    parts = [{"cases": 2, "best_of": 3, "model": "m", "validity_ratio": 0.5, "usage": {"calls": 4, "cost_usd": 0.1}},
             {"cases": 1, "best_of": 3, "model": "m", "validity_ratio": None, "usage": {"calls": 2, "cost_usd": 0.2}}]
    assert merge_stats(parts, same=("best_of",)) == {"cases": 3, "best_of": 3, "model": "m", "validity_ratio": 0.5,
                                                     "usage": {"calls": 6, "cost_usd": 0.3}}


def test_a_merge_fails_when_no_shard_kept_an_answer(tmp_path, cases_dir, monkeypatch):
    """A shard whose cases all fail the checks is no error (another shard may keep answers); the
    merge raises when none did, as one call for every case does."""
    use_model(monkeypatch, ScriptedModel(lambda messages, j: TECHNICAL))
    teacher = TeacherConfig(best_of=1, min_words=5, max_parse_retries=0)
    with pytest.raises(ValueError, match="none of 3 cases has an answer that passes the checks"):
        run_in_shards(teacher_generate, merge_teacher, tmp_path, "teacher", 2, 3,
                      teacher=teacher, cases=cases_dir, templates=TEMPLATES, artifacts_dir=tmp_path)
    assert (tmp_path / "teacher-shard-1" / "stats.json").exists()
