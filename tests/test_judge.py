"""Judging: verdict parsing, rubric checks on hand-written explanations, both-order verdicts,
retry-then-invalid counting, the ensemble, and the judge_pairs stage."""

from __future__ import annotations

import json
import re

import polars as pl
import pytest

from recxplain.checks import Catalogue
from recxplain.config import JudgeConfig
from recxplain.judging import (
    judge_explanation_pair,
    judge_explanation_pairs,
    judge_stats,
    make_pair_judge,
    parse_score,
    parse_verdict,
)
from recxplain.prompts import read_templates
from recxplain.schemas import write_cases
from tasks.judge import judge_pairs
from tests.scripted import GENRES, GOOD, TECHNICAL, TITLES, ScriptedModel, toy_case

CATALOGUE = Catalogue(titles=TITLES, genres=GENRES)
SCORES = '{"relevance": %d, "diversity": 3, "explainability": 4, "faithfulness": 5}'


def answer(choice: str, a: int = 4, b: int = 2) -> str:
    return f'{{"A": {SCORES % a}, "B": {SCORES % b}, "choice": "{choice}", "reasoning": "r"}}'


# ------------------------------------------------------------------ parsing


def test_parse_valid_fenced_and_prose_wrapped_json():
    verdict = parse_verdict(answer("A"))
    assert verdict.choice == "a" and verdict.a.relevance == 4 and verdict.b.relevance == 2
    assert verdict.a.quality == pytest.approx((4 + 3 + 4 + 5) / 20)
    fenced = "Sure! Here is my verdict:\n```json\n" + answer("B") + "\n```\nHope this helps."
    assert parse_verdict(fenced).choice == "b"
    prose = "I think {this} matters. " + answer("Option B") + " That's all."
    assert parse_verdict(prose).choice == "b"
    keys = '{"option_a": {"Relevance Score": 1, "diversity": 1, "explainability": 1}, "Option B": ' \
           '{"relevance": 5, "diversity": 5, "explainability": 5}, "Chosen": "b"}'
    verdict = parse_verdict(keys)
    assert verdict.choice == "b" and verdict.a.relevance == 1 and verdict.a.faithfulness is None


def test_parse_a_bare_choice_without_scores():
    for text, choice in (("A", "a"), ("Option B.", "b"), ("You can choose option A.", "a"), ("tie", "tie"),
                         ("Both bad", "both_bad"), ('"B"', "b")):
        verdict = parse_verdict(text)
        assert verdict.choice == choice and verdict.a is None and verdict.b is None
    with pytest.raises(ValueError, match="no JSON object found"):
        parse_verdict("A is better because it names more movies the user liked.")


def test_parse_tie_and_both_bad():
    assert parse_verdict(answer("tie")).choice == "tie"
    assert parse_verdict(answer("both_bad")).choice == "both_bad"
    assert parse_verdict(answer("Both bad")).choice == "both_bad"
    assert parse_verdict(answer("neither")).choice == "both_bad"


@pytest.mark.parametrize("text, message", [
    ("I prefer the first one.", "no JSON object found"),
    ("{not json at all", "no JSON object found"),
    ('{"A": {"relevance": 1, "diversity": 1, "explainability": 1}, "choice": "A"}', "lacks 'b'"),
    (answer("C"), 'must be "A", "B", "tie" or "both_bad"'),
    (answer("A", a=7), r"A.RELEVANCE: Input should be less than or equal to 5"),
    ('{"A": 3, "B": 4, "choice": "A"}', '"A" must be an object of scores'),
])
def test_parse_malformed_raises_actionable_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_verdict(text)


def test_parse_reclaif_text_format():
    text = """Option A Evaluation:
- Relevance Score: 4 The options match.
- Diversity Score: 2 Not much variety.
- Explainability Score: 5 Clear.

Option B Evaluation:
- Relevance Score: 1 Off target.
- Diversity Score: 3 Some variety.
- Explainability Score: 2 Vague.

Decision:
- Chosen Option: B
- Reasoning: B is more varied."""
    verdict = parse_verdict(text)
    assert verdict.choice == "b"
    assert (verdict.a.relevance, verdict.a.diversity, verdict.a.explainability) == (4, 2, 5)
    assert (verdict.b.relevance, verdict.b.diversity, verdict.b.explainability) == (1, 3, 2)
    assert verdict.reasoning == "B is more varied."


def test_swapped_maps_a_b_back():
    verdict = parse_verdict(answer("A", a=5, b=1)).swapped()
    assert verdict.choice == "b" and verdict.a.relevance == 1 and verdict.b.relevance == 5
    assert parse_verdict(answer("tie")).swapped().choice == "tie"


def test_parse_score():
    assert parse_score('{"score": 73, "reason": "clear"}') == 73
    assert parse_score("Score: 88/100") == 88
    assert parse_score(" 42 ") == 42
    with pytest.raises(ValueError, match="from 1 to 100"):
        parse_score('{"score": 0}')
    with pytest.raises(ValueError, match="no score found"):
        parse_score("great explanation")


# ------------------------------------------------------------------ verdicts


def scripted_judge(choose):
    """A judge whose answer depends on which text is shown as Option A: `choose(first, second)`."""

    def reply(messages, j):
        prompt = messages[1]["content"] if len(messages) > 1 else messages[0]["content"]
        first = re.search(r"Option A: (.*)\n\nOption B:", prompt).group(1)
        second = re.search(r"Option B: (.*)\n\nScore each", prompt).group(1)
        return choose(first, second, messages)

    return ScriptedModel(reply)


LLM = JudgeConfig(kind="llm", max_parse_retries=1)
TEMPLATES = read_templates("judge_pair.j2", "explainability.j2")


def test_order_consistent_verdict_is_kept():
    # prefers the text "GOOD" wherever it is shown
    model = scripted_judge(lambda first, second, m: answer("A") if first == "GOOD" else answer("B", a=2, b=4))
    items = [(toy_case(), "GOOD", "meh"), (toy_case(), "meh", "GOOD")]
    first, second = judge_explanation_pairs(items, judge=LLM, templates=TEMPLATES, model=model)
    assert (first.verdict, second.verdict) == ("a", "b")
    assert first.order_consistent and first.llm_ab.choice == "a" and first.llm_ba.choice == "a"
    assert first.score_a == pytest.approx(0.8) and first.score_b == pytest.approx(0.7)
    assert len(model.prompts) == 4  # both orders of both pairs


def test_position_bias_is_inconsistent_and_rejected():
    model = scripted_judge(lambda first, second, m: answer("A"))  # always the first shown
    judgement = judge_explanation_pair(toy_case(), "x", "y", judge=LLM, templates=TEMPLATES, model=model)
    assert judgement.verdict == "inconsistent" and not judgement.kept
    assert judgement.order_consistent is False
    bare = scripted_judge(lambda first, second, m: "A")  # what SmolLM2-135M answers
    judgement = judge_explanation_pair(toy_case(), "x", "y", judge=LLM, templates=TEMPLATES, model=bare)
    assert judgement.verdict == "inconsistent" and judgement.score_a is None
    stats = judge_stats([judgement])
    assert stats["position_bias_rate"] == 1.0 and stats["order_inconsistent"] == 1 and stats["kept"] == 0


def test_tie_and_both_bad_are_rejected():
    for choice, verdict in (("tie", "tie"), ("both_bad", "both_bad")):
        model = scripted_judge(lambda first, second, m, choice=choice: answer(choice))
        judgement = judge_explanation_pair(toy_case(), "x", "y", judge=LLM, templates=TEMPLATES, model=model)
        assert judgement.verdict == verdict and not judgement.kept


def test_malformed_is_retried_then_counted_invalid():
    # order (A=x, B=y) answers prose forever; order (y, x) is malformed once, then valid
    def choose(first, second, messages):
        if first == "x":
            return "I like both."
        return answer("B") if any(m["role"] == "assistant" for m in messages) else "{broken"

    model = scripted_judge(choose)
    judgement = judge_explanation_pair(toy_case(), "x", "y", judge=LLM, templates=TEMPLATES, model=model)
    assert judgement.verdict == "invalid" and judgement.llm_ab is None
    assert judgement.raw_ab == ["I like both.", "I like both."]  # 1 + max_parse_retries attempts
    assert judgement.llm_ba.choice == "a" and len(judgement.raw_ba) == 2
    retry = [p for p in model.prompts if len(p) == 4][0]
    assert "no JSON object found" in retry[3]["content"]
    stats = judge_stats([judgement])
    assert stats["invalid"] == 1 and stats["validity_ratio"] == 0.5 and stats["position_bias_rate"] is None


def test_rubric_judge_prefers_the_verifiable_explanation():
    rubric = JudgeConfig(kind="rubric")
    judgement = judge_explanation_pair(toy_case(), TECHNICAL, GOOD, judge=rubric, catalogue=CATALOGUE)
    assert judgement.verdict == "b" and judgement.llm_choice is None
    assert judgement.score_b == 1.0 and judgement.score_a == pytest.approx((7 + 2 / 3) / 9)
    assert judge_explanation_pair(toy_case(), GOOD, GOOD, judge=rubric).verdict == "tie"
    bad = judge_explanation_pair(toy_case(), "Hmm.", "node node", judge=rubric, catalogue=CATALOGUE)
    assert bad.verdict == "both_bad"


def test_ensemble_falls_back_to_the_rubric_when_the_llm_is_position_biased():
    ensemble = JudgeConfig(kind="ensemble", llm_weight=0.3)
    biased = scripted_judge(lambda first, second, m: answer("A"))
    judgement = judge_explanation_pair(toy_case(), TECHNICAL, GOOD, judge=ensemble, templates=TEMPLATES,
                                       model=biased, catalogue=CATALOGUE)
    assert judgement.llm_choice == "inconsistent" and judgement.verdict == "b"
    # a consistent LLM vote outweighs a small rubric difference: margin 0.3 * 1 + 0.7 * (-0.222) > 0
    fan = scripted_judge(lambda first, second, m: answer("A" if first == TECHNICAL else "B"))
    judgement = judge_explanation_pair(toy_case(), TECHNICAL, GOOD, judge=ensemble, templates=TEMPLATES,
                                       model=fan, catalogue=CATALOGUE)
    assert judgement.llm_choice == "a" and judgement.verdict == "a"


def test_ensemble_asks_the_llm_only_where_its_vote_can_change_the_verdict():
    model = scripted_judge(lambda first, second, m: answer("A"))
    items = [(toy_case(), "Hmm.", "node node"),  # both fail the rubric's gate: both-bad whatever the vote
             (toy_case(), GOOD, GOOD),  # the same text: its two orders cannot agree on one of them
             (toy_case(), TECHNICAL, GOOD)]  # rubric margin 0.7 * -0.148: a vote of 0.3 can flip it
    ensemble = JudgeConfig(kind="ensemble", llm_weight=0.3)
    judged = judge_explanation_pairs(items, judge=ensemble, templates=TEMPLATES, model=model, catalogue=CATALOGUE)
    assert [j.verdict for j in judged] == ["both_bad", "tie", "b"]
    assert [j.llm_choice for j in judged] == [None, None, "inconsistent"]
    assert len(model.prompts) == 2  # one pair, both orders
    assert judge_stats(judged)["position_bias_rate"] == 1.0
    # with llm_weight 0.1 the rubric margin 0.9 * -0.222 outweighs any vote: nothing to ask
    light = JudgeConfig(kind="ensemble", llm_weight=0.05)
    [judged] = judge_explanation_pairs(items[2:], judge=light, templates=TEMPLATES, model=model, catalogue=CATALOGUE)
    assert judged.verdict == "b" and judged.llm_choice is None and len(model.prompts) == 2


def test_tournament_judge_answers_both_orders(tmp_path):
    """The evaluation tournament's judge: the llm judge's orders as shown (its position bias
    visible: the tournament scores it a tie); the ensemble's order-free verdict for both."""
    biased = scripted_judge(lambda first, second, m: answer("A"))
    pairs = [(toy_case(), TECHNICAL, GOOD), (toy_case(), GOOD, TECHNICAL)]
    llm = make_pair_judge(LLM, tmp_path, tmp_path, templates=TEMPLATES, model=biased)
    assert llm(pairs) == [("a", "a"), ("a", "a")]
    ensemble = make_pair_judge(JudgeConfig(kind="ensemble", llm_weight=0.3), tmp_path, tmp_path, templates=TEMPLATES,
                               catalogue=CATALOGUE, model=biased)
    assert ensemble(pairs) == [("b", "a"), ("a", "b")]  # GOOD wins wherever it is shown
    one_order = make_pair_judge(JudgeConfig(kind="rubric", both_orders=False), tmp_path, tmp_path, catalogue=CATALOGUE)
    assert one_order(pairs) == [("b", None), ("a", None)]


def test_judge_pairs_stage_writes_trl_preferences(tmp_path):
    cases, pairs, out = tmp_path / "cases", tmp_path / "pairs", tmp_path / "out"
    for folder in (cases, pairs, out):
        folder.mkdir()
    write_cases([toy_case("1-2"), toy_case("3-2"), toy_case("4-2")], cases / "train.jsonl")
    (cases / "catalogue.json").write_text(json.dumps({"titles": TITLES, "genres": GENRES}))
    prompt = [{"role": "user", "content": "Explain Babe."}]
    pl.DataFrame({
        "case_id": ["1-2", "3-2", "4-2"],
        "text_a": [TECHNICAL, GOOD, "Hmm."],
        "text_b": [GOOD, GOOD + " Enjoy!", "node node"],
        "source": ["teacher"] * 3,
        "prompt": [json.dumps(prompt)] * 3,
    }).write_parquet(pairs / "pairs.parquet")
    judge_pairs(out, judge=JudgeConfig(kind="rubric"), cases=cases, pairs=pairs,
                templates=read_templates("judge_pair.j2"), artifacts_dir=tmp_path)

    rows = [json.loads(line) for line in (out / "preferences.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    assert rows[0]["prompt"] == prompt and rows[0]["case_id"] == "1-2"
    assert rows[0]["chosen"] == [{"role": "assistant", "content": GOOD}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": TECHNICAL}]
    assert rows[0]["scores"]["chosen"] == 1.0
    verdicts = pl.read_parquet(out / "verdicts.parquet")
    assert verdicts["verdict"].to_list() == ["b", "tie", "both_bad"]
    assert verdicts["kept"].to_list() == [True, False, False]
    assert json.loads(verdicts["rubric_a"][0])["technical_terms"] == ["cosine", "KNN", "neighbour", "raw weight"]
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["pairs_judged"], stats["kept"], stats["ties"], stats["both_bad"], stats["invalid"]) == (3, 1, 1, 1, 0)


def test_judge_pairs_rejects_unknown_cases(tmp_path):
    cases, pairs = tmp_path / "cases", tmp_path / "pairs"
    cases.mkdir(), pairs.mkdir()
    write_cases([toy_case("1-2")], cases / "train.jsonl")
    pl.DataFrame({"case_id": ["9-9"], "text_a": ["a"], "text_b": ["b"], "source": ["teacher"],
                  "prompt": ["[]"]}).write_parquet(pairs / "pairs.parquet")
    with pytest.raises(ValueError, match=r"case_id\(s\) \['9-9'\] are not in"):
        judge_pairs(tmp_path, judge=JudgeConfig(kind="rubric"), cases=cases, pairs=pairs, templates={},
                    artifacts_dir=tmp_path)


def test_judge_pairs_that_keep_nothing_write_their_files_then_say_so(tmp_path):
    cases, pairs, out = tmp_path / "cases", tmp_path / "pairs", tmp_path / "out"
    for folder in (cases, pairs, out):
        folder.mkdir()
    write_cases([toy_case("1-2")], cases / "train.jsonl")
    (cases / "catalogue.json").write_text(json.dumps({"titles": TITLES, "genres": GENRES}))
    pl.DataFrame(schema={"case_id": pl.String, "text_a": pl.String, "text_b": pl.String, "source": pl.String,
                         "prompt": pl.String}).write_parquet(pairs / "pairs.parquet")
    (pairs / "stats.json").write_text(json.dumps({"pairs": 0, "identical_dropped": 1}))
    with pytest.raises(ValueError, match="no preference pair kept.*0 pairs judged.*1 dropped as identical twins"):
        judge_pairs(out, judge=JudgeConfig(kind="rubric"), cases=cases, pairs=pairs, templates={},
                    artifacts_dir=tmp_path)
    assert (out / "preferences.jsonl").read_text() == ""
    verdicts = pl.read_parquet(out / "verdicts.parquet")
    assert verdicts.height == 0 and {"case_id", "verdict", "kept", "source"} <= set(verdicts.columns)
    assert json.loads((out / "stats.json").read_text())["pairs_judged"] == 0
