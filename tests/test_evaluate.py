"""Evaluation metrics on hand-made cases with hand-computed values (tasks/evaluate.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from recxplain.checks import Catalogue, check_explanation  # noqa: E402
from recxplain.config import EvaluationConfig, JudgeConfig, LLMConfig  # noqa: E402
from recxplain.metrics import load_embedder, mean_cosine_distance  # noqa: E402
from recxplain.schemas import Case, write_cases  # noqa: E402
from tasks import evaluate as ev  # noqa: E402


def make_case(case_id="1-3", gender="F", age=30, occupation="writer") -> Case:
    return Case.model_validate({
        "case_id": case_id, "split": "eval", "user_id": int(case_id.split("-")[0]),
        "profile": {"gender": gender, "age": age, "occupation": occupation},
        "history": [
            {"item_id": 1, "title": "Star Wars (1977)", "year": 1977, "genres": ["Action", "Sci-Fi"], "rating": 5,
             "timestamp": 1},
            {"item_id": 2, "title": "Usual Suspects, The (1995)", "year": 1995, "genres": ["Crime", "Thriller"],
             "rating": 4, "timestamp": 2},
        ],
        "item": {"item_id": 3, "title": "Return of the Jedi (1983)", "year": 1983, "genres": ["Action", "Sci-Fi"]},
        "rank": 1, "score": 0.9,
        "neighbours": [{"item_id": 1, "title": "Star Wars (1977)", "weight": 0.8, "rated": 5.0}],
        "paths": [{"pattern": "user-rated-movie-director-movie", "steps": ["user:1", "rated", "movie:1"],
                   "text": "You rated Star Wars 5/5; it shares a director with Return of the Jedi", "score": 0.7}],
    })


CATALOGUE = Catalogue(titles=["Star Wars (1977)", "Usual Suspects, The (1995)", "Return of the Jedi (1983)",
                               "Fargo (1996)", "Heat (1995)", "Toy Story (1995)"],
                       genres=["Action", "Adventure", "Crime", "Sci-Fi", "Thriller"])


# ---------------------------------------------------------------------------------------------
# The checks' metrics (the checks themselves, title matching included: tests/test_checks.py)


def test_per_explanation_metrics_come_from_the_checks():
    texts = {
        # evidence titles (one with MovieLens' moved article) and sci-fi; "adventure" is no evidence genre
        "a": "You loved Star Wars and The Usual Suspects, so Return of the Jedi, a sci-fi adventure, is for you.",
        # a loop that also claims a rating of the recommended movie
        "b": "You rated Return of the Jedi 5/5. You rated Return of the Jedi 5/5. Watch it.",
        # an invented title and a real movie the case does not hold
        "c": 'Like Toy Story and "The Matrix", Return of the Jedi is a great movie for you.',
        "d": "You will enjoy it.",  # names nothing
    }
    explanations = pd.DataFrame([{"case_id": "1-3", "model": m, "text": t, "tokens": 5, "valid": True}
                                 for m, t in texts.items()])
    table = ev.per_explanation_metrics({"1-3": make_case()}, explanations, CATALOGUE, None, min_words=5)
    row = table.set_index("explainer")
    for model, text in texts.items():
        result = check_explanation(make_case(), text, catalogue=CATALOGUE, min_words=5)
        assert row.loc[model, "check_score"] == pytest.approx(result.score)
        assert row.loc[model, "failed_checks"] == ",".join(result.failed)
    # 3 titles, sci-fi and "you loved Star Wars" supported; "adventure" not: 5 of 6
    assert row.loc["a", "faithfulness"] == pytest.approx(5 / 6) and row.loc["a", "failed_checks"] == "grounded"
    assert row.loc["a", "hallucination_rate"] == 0.0 and row.loc["a", "mentions_item"] == 1.0  # a genre, not a title
    assert (row.loc["a", "loop"], row.loc["a", "false_rating_claims"], row.loc["a", "passes_checks"]) == (0, 0, 0)
    assert row.loc["b", "loop"] == 1.0 and row.loc["b", "false_rating_claims"] == 1.0
    assert {"no_repetition", "consistent_ratings"} <= set(row.loc["b", "failed_checks"].split(","))
    assert row.loc["c", "hallucination_rate"] == 1.0 and row.loc["c", "faithfulness"] == pytest.approx(1 / 3)
    assert np.isnan(row.loc["d", "faithfulness"]) and row.loc["d", "mentions_item"] == 0.0
    assert table["rouge_l"].isna().all() and table["diversity"].isna().all()  # no teacher, no embedder
    # the word bounds are the caller's (the stage passes the judge's)
    strict = ev.per_explanation_metrics({"1-3": make_case()}, explanations, CATALOGUE, None, min_words=50)
    assert (strict["failed_checks"].str.contains("length_ok")).all()


def test_check_metrics_of_a_passing_explanation():
    result = check_explanation(make_case(), "You rated Star Wars 5/5, and people who liked it also liked Return "
                               "of the Jedi, an action movie like The Usual Suspects, which you rated 4/5.",
                               catalogue=CATALOGUE)
    assert result.passed, result.failed
    assert ev.check_metrics(result) == {"check_score": 1.0, "passes_checks": 1.0, "loop": 0.0, "faithfulness": 1.0,
                                        "hallucination_rate": 0.0, "false_rating_claims": 0.0, "mentions_item": 1.0,
                                        "failed_checks": ""}


# ---------------------------------------------------------------------------------------------
# Style lexicons, overlap, diversity


def test_style_rates_per_hundred_words():
    # 12 words ("0.83" is two tokens): domain film, cast; technical knn, cosine, score, node + the
    # decimal weight 0.83; evaluative: great.
    rates = ev.style_rates("The film has a great cast. KNN cosine score 0.83 node.")
    assert rates["domain_terms"] == pytest.approx(2 * 100 / 12)
    assert rates["technical_terms"] == pytest.approx(5 * 100 / 12)
    assert rates["subjective_terms"] == pytest.approx(1 * 100 / 12)


def test_genre_words_are_domain_not_subjective():
    # VADER gives "comedy" a valence; it is a genre here. 6 words: love, funny, brilliant are
    # evaluative; comedy and actors are domain terms.
    rates = ev.style_rates("love this funny comedy brilliant actors")
    assert rates["subjective_terms"] == pytest.approx(3 * 100 / 6)
    assert rates["domain_terms"] == pytest.approx(2 * 100 / 6)
    assert rates["sentiment"] > 0.5


def test_multiword_terms_count_once_and_ids_are_technical():
    rates = ev.style_rates("science fiction with actor:m.0bln8 via film.film.actor")
    # words: science fiction with actor m 0bln8 via film film actor = 10; domain: "science
    # fiction" once, then actor, film, film, actor (tokens of the ids count as words too).
    assert rates["domain_terms"] == pytest.approx(5 * 100 / 10)
    assert rates["technical_terms"] == pytest.approx(2 * 100 / 10)


def test_rouge_l_on_known_strings():
    # LCS of "the cat sat on the mat" and "the cat lay on a mat" is "the cat on mat": 4 of 6.
    assert ev.rouge_l(["the cat sat on the mat", "x"], ["the cat lay on a mat", "x"]) == pytest.approx([4 / 6, 1.0])


def test_distinct_n():
    assert ev.distinct_n(["a b a b", "a c"], 1) == pytest.approx(3 / 6)
    assert ev.distinct_n(["a b a b", "a c"], 2) == pytest.approx(3 / 4)
    assert ev.distinct_n([""], 2) == 0.0


def test_mean_cosine_distance():
    rows = mean_cosine_distance(np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]))
    assert rows == pytest.approx([0.5, 1.0, 0.5])
    assert rows.mean() == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def embedder():
    return load_embedder("minilm")


def test_minilm_diversity_orders_sets(embedder):
    same = embedder.encode(["A great space adventure."] * 3)
    varied = embedder.encode(
        ["A great space adventure.", "A gloomy crime story in Minnesota.", "Cooking pasta at home."]
    )
    assert mean_cosine_distance(same).mean() == pytest.approx(0.0, abs=1e-5)
    assert mean_cosine_distance(varied).mean() > 0.5


# ---------------------------------------------------------------------------------------------
# Tournament


VERDICTS = {  # (case, model shown first, model shown second) -> verdict
    ("c1", "x", "y"): "a", ("c1", "y", "x"): "b",  # x wins, consistently
    ("c1", "x", "z"): "a", ("c1", "z", "x"): "a",  # position bias: the first shown wins -> tie
    ("c1", "y", "z"): "tie", ("c1", "z", "y"): "tie",
    ("c2", "x", "y"): "b", ("c2", "y", "x"): "a",  # y wins
    ("c2", "x", "z"): "a", ("c2", "z", "x"): "b",  # x wins
    ("c2", "y", "z"): "both_bad", ("c2", "z", "y"): "both_bad",
}


def scripted_judge(requests):  # both orders, as recxplain.judging.make_pair_judge answers
    verdicts = []
    for case, a, b in requests:
        a, b = a.split("@")[0], b.split("@")[0]
        verdicts.append((VERDICTS[(case.case_id, a, b)], VERDICTS[(case.case_id, b, a)]))
    return verdicts


def fixed_tournament() -> pd.DataFrame:
    cases = {c: make_case().model_copy(update={"case_id": c}) for c in ("c1", "c2")}
    explanations = pd.DataFrame([{"case_id": c, "model": m, "text": f"{m}@{c}"} for c in cases for m in "xyz"])
    return ev.judge_tournament(cases, explanations, ["x", "y", "z"], scripted_judge)


def test_tournament_combines_both_orders():
    table = fixed_tournament()
    assert len(table) == 6
    outcome = table.set_index(["case_id", "model_a", "model_b"])["outcome"]
    assert outcome[("c1", "x", "y")] == "a" and outcome[("c1", "x", "z")] == "tie"
    assert outcome[("c2", "x", "y")] == "b" and outcome[("c2", "y", "z")] == "both_bad"
    assert (~table["consistent"]).sum() == 1


def test_win_ratio_and_average_rank_on_fixed_verdicts():
    # Points (win 1, tie/both-bad 0.5): c1 x 1.5, y 0.5, z 1.0; c2 x 1.0, y 1.5, z 0.5.
    metrics = ev.tournament_metrics(fixed_tournament(), n_boot=200, seed=0)
    value = metrics.set_index(["explainer", "metric"])["value"]
    assert value[("x", "win_ratio")] == pytest.approx(2.5 / 4)
    assert value[("y", "win_ratio")] == pytest.approx(2.0 / 4)
    assert value[("z", "win_ratio")] == pytest.approx(1.5 / 4)
    assert value[("x", "avg_rank")] == pytest.approx(1.5)
    assert value[("y", "avg_rank")] == pytest.approx(2.0)
    assert value[("z", "avg_rank")] == pytest.approx(2.5)
    bt = metrics[metrics["metric"] == "bt_strength"].set_index("explainer")
    assert set(bt.index) == {"x", "y", "z"} and bt.loc["x", "value"] > bt.loc["z", "value"]
    assert (bt["ci_low"] <= bt["value"]).all() and (bt["value"] <= bt["ci_high"]).all()


def test_consistent_outcome_rejects_unknown_verdicts():
    assert ev.consistent_outcome("a", None) == "a"
    with pytest.raises(ValueError, match="verdict 'A'"):
        ev.consistent_outcome("A", "b")


# ---------------------------------------------------------------------------------------------
# Attributes, bias, significance


def test_attribute_accuracy_against_baselines():
    predictions = pd.DataFrame({
        "model": ["m"] * 4, "case_id": list("abcd"), "attribute": ["gender"] * 4,
        "truth": ["male", "male", "female", "male"], "predicted": ["male", "female", "female", None], "n_options": 2,
    })
    train = pd.DataFrame({"attribute": ["gender"] * 3, "truth": ["female", "female", "male"]})
    row = ev.attribute_accuracy(predictions, train).iloc[0]
    assert row["accuracy"] == 0.5 and row["random"] == 0.5
    # The majority class of the training users is female; it is right on 1 of 4 eval users.
    assert row["majority_value"] == "female" and row["majority"] == 0.25
    assert row["parsed"] == 0.75


def test_age_in_years_is_right_within_five_years():
    predictions = pd.DataFrame({
        "model": ["m"] * 4, "case_id": list("abcd"), "attribute": ["age_years"] * 4,
        "truth": ["30", "40", "22", "60"], "predicted": ["35", "46", "22", None], "n_options": 0,
    })
    train = pd.DataFrame({"attribute": ["age_years"] * 3, "truth": ["30", "31", "60"]})
    row = ev.attribute_accuracy(predictions, train).iloc[0]
    assert row["accuracy"] == 0.5 and row["parsed"] == 0.75  # 35 for 30 is right, 46 for 40 is not
    # Majority: every train age is as frequent, the first ("30") is guessed: right for 30 only.
    assert row["majority_value"] == "30" and row["majority"] == 0.25
    # Random: a random training user's age is within 5 years for 30 (2 of 3) and 60 (1 of 3).
    assert row["random"] == pytest.approx((2 / 3 + 0 + 0 + 1 / 3) / 4)


def test_length_gap_by_gender():
    gap = ev.length_gap(np.array([10, 20, 5, 7]), np.array(["F", "F", "M", "M"]), n_boot=200, seed=0)
    assert gap["difference"] == pytest.approx(15 - 6)
    assert gap["ci_low"] <= 9 <= gap["ci_high"]
    assert np.isnan(ev.length_gap(np.array([1.0]), np.array(["F"]), 10, 0)["difference"])


def test_style_significance_detects_a_real_difference_only():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({
        "explainer": ["a"] * 30 + ["b"] * 30 + ["c"] * 30,
        "domain_terms": np.concatenate([rng.normal(0, 1, 30), rng.normal(0, 1, 30) + 3, rng.normal(0, 1, 30)]),
    })
    result = ev.style_significance(table, ["domain_terms"]).set_index(["explainer_a", "explainer_b"])
    assert result.loc[("a", "b"), "significant"] and result.loc[("b", "c"), "significant"]
    assert not result.loc[("a", "c"), "significant"]
    assert (result["p_holm"] >= result["p_value"]).all()


# ---------------------------------------------------------------------------------------------
# The stage, without judge calls


def test_evaluate_stage_writes_metrics(tmp_path, embedder):
    cases_dir, expl_dir, out = tmp_path / "cases", tmp_path / "expl", tmp_path / "out"
    for d in (cases_dir, expl_dir, out):
        d.mkdir()
    cases = [make_case("1-3", "F"), make_case("2-3", "M"), make_case("4-3", "M")]
    write_cases(cases, cases_dir / "eval.jsonl")
    texts = {
        "teacher": "You loved Star Wars, so Return of the Jedi is a great sci-fi film for you.",
        "template": 'We recommend "Return of the Jedi (1983)". It is similar to movies you rated: "Star Wars" (5/5).',
        "base": 'Watch "The Matrix" and Fargo.',
        "sft": "You rated Star Wars 5/5, and people who liked it also liked Return of the Jedi, "
        "a sci-fi movie for you.",
    }
    rows = [{"case_id": c.case_id, "model": m, "text": t + (" Really." if c.profile["gender"] == "F" else ""),
             "tokens": 10, "valid": m != "base"} for c in cases for m, t in texts.items()]
    pd.DataFrame(rows).to_parquet(expl_dir / "explanations.parquet")
    attrs = [{"case_id": c.case_id, "model": "base", "attribute": "gender",
              "truth": "female" if c.profile["gender"] == "F" else "male",
              "predicted": "male", "answer": "male", "n_options": 2} for c in cases]
    pd.DataFrame(attrs).to_parquet(expl_dir / "attributes.parquet")
    config = EvaluationConfig(bootstrap=50, tournament=False, explainability=False)
    ev.evaluate(out, evaluation=config, judge=JudgeConfig(kind="rubric"), cases=cases_dir, explanations=expl_dir,
                artifacts_dir=tmp_path)
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert list(metrics.columns) == ["explainer", "metric", "value", "ci_low", "ci_high", "n"]
    value = metrics.set_index(["explainer", "metric"])["value"]
    assert value[("teacher", "validity")] == 1.0 and value[("base", "validity")] == 0.0
    assert value[("base", "hallucination_rate")] == 1.0 and value[("template", "hallucination_rate")] == 0.0
    assert value[("template", "mentions_item")] == 1.0
    assert value[("sft", "passes_checks")] == 1.0 and value[("sft", "check_score")] == pytest.approx((8 + 2 / 3) / 9)
    assert value[("base", "passes_checks")] == 0.0 and value[("base", "check_score")] < value[("sft", "check_score")]
    assert value[("teacher", "loop")] == 0.0 and value[("teacher", "false_rating_claims")] == 0.0
    assert not metrics["metric"].isin(["latency_s", "cached"]).any()
    assert ("teacher", "rouge_l") not in value.index and 0 < value[("template", "rouge_l")] < 1
    assert 0 < value[("base", "diversity")] < 0.05  # two identical texts and one with " Really."
    assert value[("base", "attr_gender")] == pytest.approx(2 / 3)
    assert value[("teacher", "gender_length_gap")] == pytest.approx(1.0)  # " Really." for the woman
    for name in ("per_explanation", "significance", "attributes", "bias", "alignment"):
        assert len(pd.read_parquet(out / f"{name}.parquet")) > 0
    per_explanation = pd.read_parquet(out / "per_explanation.parquet")
    assert {"check_score", "passes_checks", "loop", "faithfulness", "hallucination_rate", "false_rating_claims",
            "mentions_item", "failed_checks"} <= set(per_explanation.columns)
    # "did alignment help?": the student against base and template on the same cases
    alignment = pd.read_parquet(out / "alignment.parquet")
    assert set(zip(alignment["student"], alignment["baseline"])) == {("sft", "base"), ("sft", "template")}
    validity = alignment.set_index(["baseline", "metric"]).loc[("base", "validity")]
    assert validity["n"] == 3 and validity["difference"] == 1.0
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["explainers"] == ["teacher", "template", "base", "sft"] and summary["cases"] == 3
    assert "rubric" in summary["judge_note"]


def test_judge_note_names_the_judge():
    assert "verifiable checks alone" in ev.judge_note(JudgeConfig(kind="rubric"))
    note = ev.judge_note(JudgeConfig(kind="ensemble", llm=LLMConfig(provider="openai", model="gpt-4o-mini")))
    assert "ensemble" in note and "gpt-4o-mini" in note


def test_evaluate_rejects_explanations_of_unknown_cases(tmp_path):
    (tmp_path / "cases").mkdir(), (tmp_path / "expl").mkdir(), (tmp_path / "out").mkdir()
    write_cases([make_case()], tmp_path / "cases" / "eval.jsonl")
    pd.DataFrame([{"case_id": "9-9", "model": "x", "text": "t", "tokens": 1, "valid": True}]).to_parquet(
        tmp_path / "expl" / "explanations.parquet")
    config = EvaluationConfig(tournament=False, explainability=False, diversity=False, attribute_prediction=False)
    with pytest.raises(ValueError, match="9-9"):
        ev.evaluate(tmp_path / "out", evaluation=config, judge=JudgeConfig(), cases=tmp_path / "cases",
                    explanations=tmp_path / "expl", artifacts_dir=tmp_path)
