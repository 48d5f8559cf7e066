"""recxplain.stats on small vote tables whose answers were worked out by hand."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from recxplain import stats


def battles(rows):
    return pd.DataFrame(rows, columns=["model_a", "model_b", "outcome"])


def repeat(model_a, model_b, outcome, times):
    return [(model_a, model_b, outcome)] * times


# --- bootstrap_ci ---------------------------------------------------------------------------


def test_bootstrap_ci_of_a_fair_coin_mean():
    # 100 values, mean 0.5, standard error sqrt(0.25 / 100) = 0.05: the 95% percentile interval
    # is about 0.5 +- 1.96 * 0.05 = (0.402, 0.598), on the 0.01 grid of possible means.
    low, high = stats.bootstrap_ci([0, 1] * 50, n_boot=2000, seed=0)
    assert 0.38 <= low <= 0.42 and 0.58 <= high <= 0.62
    assert stats.bootstrap_ci([0, 1] * 50, n_boot=2000, seed=0) == (low, high)  # seeded


def test_bootstrap_ci_edge_cases_and_other_statistics():
    assert stats.bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)
    assert stats.bootstrap_ci([7.0]) == (7.0, 7.0)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([]))
    low, high = stats.bootstrap_ci([1, 2, 3, 4, 100], statistic=np.median, n_boot=500)
    assert 1 <= low <= 3 <= high <= 100  # medians of resamples stay inside the data
    narrow = stats.bootstrap_ci([0, 1] * 50, confidence=0.5)
    wide = stats.bootstrap_ci([0, 1] * 50, confidence=0.99)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


# --- bradley_terry --------------------------------------------------------------------------


def test_bradley_terry_two_models_is_the_log_odds_of_the_win_rate():
    # x wins 3 of 4: P(x beats y) = 3/4, so strength_x - strength_y = log 3, centred at zero.
    table = stats.bradley_terry(
        battles(repeat("x", "y", "a", 2) + [("y", "x", "b"), ("y", "x", "a")]), n_boot=0, alpha=0
    )
    assert list(table["model"]) == ["x", "y"]
    assert table["strength"].tolist() == pytest.approx([math.log(3) / 2, -math.log(3) / 2], abs=1e-6)
    assert table["battles"].tolist() == [4, 4]


def test_bradley_terry_counts_ties_and_both_bad_as_half_wins():
    # x: 2 wins + 2 halves = 3, y: 1 win + 2 halves = 2 -> strength gap log(3/2).
    rows = repeat("x", "y", "a", 2) + [("x", "y", "b"), ("x", "y", "tie"), ("y", "x", "both_bad")]
    table = stats.bradley_terry(battles(rows), n_boot=0, alpha=0).set_index("model")
    assert table.loc["x", "strength"] - table.loc["y", "strength"] == pytest.approx(math.log(1.5), abs=1e-6)


def test_bradley_terry_three_models_consistent_odds():
    # Win rates x>y 2/3, y>z 2/3, x>z 4/5 are exactly BT-consistent (odds 2 * 2 = 4), so the MLE
    # reproduces them: strengths log 2, 0, -log 2.
    rows = repeat("x", "y", "a", 2) + repeat("x", "y", "b", 1)
    rows += repeat("y", "z", "a", 2) + repeat("z", "y", "a", 1)
    rows += repeat("z", "x", "b", 4) + repeat("x", "z", "b", 1)
    exact = stats.bradley_terry(battles(rows), n_boot=0, alpha=0)
    assert list(exact["model"]) == ["x", "y", "z"]
    assert exact["strength"].tolist() == pytest.approx([math.log(2), 0.0, -math.log(2)], abs=1e-6)
    assert exact["battles"].tolist() == [8, 6, 8]
    assert exact["ci_low"].isna().all()
    # Some bootstrap samples lose every win of one model: the unregularised fit has no answer.
    with pytest.raises(ValueError, match="use alpha > 0"):
        stats.bradley_terry(battles(rows), n_boot=300, seed=1, alpha=0)
    table = stats.bradley_terry(battles(rows), n_boot=300, seed=1)
    # The default prior (alpha=0.01) barely moves the point estimate.
    assert table["strength"].tolist() == pytest.approx(exact["strength"].tolist(), abs=0.02)
    assert (table["ci_low"] <= table["strength"]).all() and (table["strength"] <= table["ci_high"]).all()
    assert (table["ci_high"] - table["ci_low"] > 0.5).all()  # 11 battles: wide intervals
    again = stats.bradley_terry(battles(rows), n_boot=300, seed=1)
    pd.testing.assert_frame_equal(table, again)


def test_bradley_terry_regularisation_keeps_a_model_that_never_won_finite():
    table = stats.bradley_terry(battles(repeat("x", "y", "a", 5)), n_boot=50).set_index("model")
    assert np.isfinite(table[["strength", "ci_low", "ci_high"]].to_numpy()).all()
    assert table.loc["x", "strength"] > 1.5


def test_bad_outcome_is_named():
    with pytest.raises(ValueError, match=r"row 1: outcome 'draw'"):
        stats.bradley_terry(battles([("x", "y", "a"), ("x", "y", "draw")]))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['outcome'\]"):
        stats.pairwise_tests(pd.DataFrame({"model_a": ["x"], "model_b": ["y"]}))


# --- win_rate_matrix ------------------------------------------------------------------------


def test_win_rate_matrix_hand_values():
    rows = repeat("x", "y", "a", 3) + [("y", "x", "a"), ("x", "z", "tie"), ("z", "x", "both_bad"), ("z", "x", "a")]
    matrix = stats.win_rate_matrix(battles(rows))
    assert list(matrix.index) == ["x", "y", "z"] and list(matrix.columns) == ["x", "y", "z"]
    assert matrix.loc["x", "y"] == pytest.approx(0.75) and matrix.loc["y", "x"] == pytest.approx(0.25)
    assert matrix.loc["x", "z"] == pytest.approx(1 / 3) and matrix.loc["z", "x"] == pytest.approx(2 / 3)
    assert math.isnan(matrix.loc["y", "z"]) and math.isnan(matrix.loc["x", "x"])


# --- pairwise_tests -------------------------------------------------------------------------


def test_pairwise_binomial_test_and_power():
    # y/x written in both positions; in alphabetical orientation x wins 8, y wins 2, 1 tie, 1 both bad.
    rows = repeat("x", "y", "a", 5) + repeat("y", "x", "b", 3) + repeat("y", "x", "a", 2)
    rows += [("x", "y", "tie"), ("y", "x", "both_bad")]
    # A second pair with no decisive votes.
    rows += [("w", "z", "tie")]
    table = stats.pairwise_tests(battles(rows)).set_index(["model_a", "model_b"])
    row = table.loc[("x", "y")]
    assert (row["wins_a"], row["wins_b"], row["ties"], row["both_bad"]) == (8, 2, 1, 1)
    assert row["win_rate_a"] == pytest.approx(0.8)
    # Two-sided exact: 2 * P(X >= 8), X ~ Bin(10, 1/2) = 2 * (45 + 10 + 1) / 1024.
    assert row["p_value"] == pytest.approx(112 / 1024)
    # Cohen's h = 2 asin(sqrt(0.8)) - 2 asin(sqrt(0.5)); n = ((z_.975 + z_.8) / h)^2 = 18.95 -> 19.
    h = 2 * math.asin(math.sqrt(0.8)) - 2 * math.asin(math.sqrt(0.5))
    assert row["votes_needed"] == math.ceil(((norm.ppf(0.975) + norm.ppf(0.8)) / h) ** 2) == 19
    other = table.loc[("w", "z")]
    assert other["ties"] == 1 and math.isnan(other["p_value"]) and math.isnan(other["votes_needed"])
    assert row["p_holm"] == pytest.approx(112 / 1024)  # only one pair was testable


def test_pairwise_holm_adjustment_and_equal_split():
    rows = repeat("a1", "a2", "a", 10) + repeat("b1", "b2", "a", 3) + repeat("b1", "b2", "b", 3)
    table = stats.pairwise_tests(battles(rows)).set_index("model_a")
    p_strong = 2 / 1024  # 10 of 10
    assert table.loc["a1", "p_value"] == pytest.approx(p_strong)
    assert table.loc["b1", "p_value"] == pytest.approx(1.0)
    assert table.loc["a1", "p_holm"] == pytest.approx(2 * p_strong)  # smallest p times 2 tests
    assert table.loc["b1", "p_holm"] == pytest.approx(1.0)
    assert math.isnan(table.loc["b1", "votes_needed"])  # 3-3: no difference to detect


def test_votes_needed_grows_as_the_difference_shrinks():
    assert stats.votes_needed(0.75) == 29  # h = 0.5236 -> 28.6
    assert stats.votes_needed(0.25) == 29  # symmetric
    assert stats.votes_needed(0.55) > 700
    # At a 100% win rate the approximation says 4 (h = pi/2), but 4-0 has p = 0.125:
    # the exact test needs at least 6 decisive votes to reject at all (2 / 64 = 0.031).
    assert stats.votes_needed(1.0) == 6


# --- agreement ------------------------------------------------------------------------------


def test_agreement_kappa_by_hand():
    # Ten (case, pair) items; human x judge labels (first better / second better / no preference):
    #           judge: a  b  none
    # human a         3  1  0
    # human b         0  3  1
    # human none      1  0  1
    # p_o = 7/10; p_e = (4*4 + 4*4 + 2*2) / 100 = 0.36; kappa = (0.7 - 0.36) / 0.64 = 0.53125.
    pairs = [("a", "a")] * 3 + [
        ("a", "b"), ("b", "b"), ("b", "b"), ("b", "b"), ("b", "none"), ("none", "a"), ("none", "none"),
    ]
    to_outcome = {"a": "a", "b": "b", "none": "tie"}
    human, judge = [], []
    for i, (h, j) in enumerate(pairs):
        human.append((f"c{i}", "m1", "m2", to_outcome[h]))
        # The judge saw the pair in the other order half the time; outcomes flip with it.
        if i % 2:
            judge.append((f"c{i}", "m2", "m1", {"a": "b", "b": "a", "none": "both_bad"}[j]))
        else:
            judge.append((f"c{i}", "m1", "m2", to_outcome[j]))
    judge.append(("c99", "m1", "m2", "a"))  # judged by the AI only: not compared
    columns = ["case_id", "model_a", "model_b", "outcome"]
    result = stats.agreement(pd.DataFrame(human, columns=columns), pd.DataFrame(judge, columns=columns))
    assert result["n"] == 10
    assert result["agreement"] == pytest.approx(0.7)
    assert result["kappa"] == pytest.approx(0.53125)
    assert -1 <= result["kappa_low"] < result["kappa"] < result["kappa_high"] <= 1


def test_agreement_majority_over_several_human_votes():
    columns = ["case_id", "model_a", "model_b", "outcome"]
    human = pd.DataFrame(
        [
            ("c1", "m1", "m2", "a"), ("c1", "m2", "m1", "b"), ("c1", "m1", "m2", "b"),  # majority: m1
            ("c2", "m1", "m2", "a"), ("c2", "m1", "m2", "b"),  # split: no preference
        ],
        columns=columns,
    )
    judge = pd.DataFrame([("c1", "m1", "m2", "a"), ("c2", "m2", "m1", "tie")], columns=columns)
    result = stats.agreement(human, judge)
    assert result["n"] == 2 and result["agreement"] == 1.0 and result["kappa"] == pytest.approx(1.0)
    # No overlap, and a degenerate table where chance agreement is 1.
    assert stats.agreement(human, judge.assign(case_id="other"))["n"] == 0
    one = stats.agreement(human.iloc[:1], judge.iloc[:1])
    assert one["n"] == 1 and one["agreement"] == 1.0 and math.isnan(one["kappa"])


# --- paired_comparison ----------------------------------------------------------------------


def per_explanation(columns: dict[str, dict[str, list]]) -> pd.DataFrame:
    """One row per (explainer, case): explainer -> metric -> values over cases c0, c1, ..."""
    frames = [pd.DataFrame({"explainer": explainer, "case_id": [f"c{i}" for i in range(len(next(iter(m.values()))))]}
                           | m) for explainer, m in columns.items()]
    return pd.concat(frames, ignore_index=True)


def test_paired_comparison_mcnemar_on_validity():
    # 24 cases: both valid on 4, only the student on 16, neither on 4. Student 20/24, base 4/24:
    # difference 16/24; exact McNemar on 16 discordant pairs all one way: p = 2 * 0.5**16.
    student = [1] * 20 + [0] * 4
    base = [1] * 4 + [0] * 20
    frame = per_explanation({"base": {"validity": base}, "dpo": {"validity": student}})
    table = stats.paired_comparison(frame, ["dpo"], ["base", "template"], {"validity": ("binary", 1)}, n_boot=500)
    assert list(table.columns) == stats.PAIRED_COLUMNS
    assert len(table) == 1  # template is not in the frame: skipped
    row = table.iloc[0]
    assert (row["student"], row["baseline"], row["metric"], row["n"]) == ("dpo", "base", "validity", 24)
    assert row["mean_student"] == pytest.approx(20 / 24) and row["mean_baseline"] == pytest.approx(4 / 24)
    assert row["difference"] == pytest.approx(0.667, abs=1e-3)
    assert row["p_value"] == pytest.approx(2 * 0.5**16)
    assert row["test"] == "McNemar exact" and row["verdict"] == "better"
    assert 0.4 < row["ci_low"] < row["difference"] < row["ci_high"] <= 1.0


def test_paired_comparison_identical_columns_are_no_difference():
    values = [0.1, 0.5, 0.9, 0.3, 0.7, 0.2]
    valid = [1, 0, 1, 1, 0, 1]
    frame = per_explanation({"sft": {"check_score": values, "validity": valid},
                             "base": {"check_score": values, "validity": valid}})
    table = stats.paired_comparison(frame, ["sft", "base"], ["base"],
                                    {"check_score": ("score", 1), "validity": ("binary", 1)}).set_index("metric")
    assert list(table["student"]) == ["sft", "sft"]  # base against itself is skipped
    assert table["p_value"].tolist() == [1.0, 1.0]
    assert table["difference"].tolist() == [0.0, 0.0] and table["ci_low"].tolist() == [0.0, 0.0]
    assert (table["verdict"] == "no difference").all()
    assert table.loc["check_score", "test"] == "Wilcoxon signed-rank"


def test_paired_comparison_lower_is_better_and_scores():
    # Loops (lower is better): the student loops on 1 of 12 cases, base on 10 (9 discordant pairs,
    # all in the student's favour: p = 2 * 0.5**9). The check score is higher on every case.
    frame = per_explanation({
        "base": {"loop": [1] * 10 + [0] * 2, "check_score": [0.2 + 0.01 * i for i in range(12)]},
        "dpo": {"loop": [1] + [0] * 11, "check_score": [0.5 + 0.02 * i for i in range(12)]},
    })
    table = stats.paired_comparison(frame, ["dpo"], ["base"], {"loop": ("binary", -1), "check_score": ("score", 1)},
                                    n_boot=200).set_index("metric")
    assert table.loc["loop", "difference"] == pytest.approx(-9 / 12)
    assert table.loc["loop", "p_value"] == pytest.approx(2 * 0.5**9)
    assert table.loc["loop", "verdict"] == "better"
    # Wilcoxon, all 12 differences positive: exact two-sided p = 2 / 2**12.
    assert table.loc["check_score", "p_value"] == pytest.approx(2 / 2**12)
    assert table.loc["check_score", "verdict"] == "better"
    # The same data read the other way round: the base model is worse.
    reverse = stats.paired_comparison(frame, ["base"], ["dpo"], {"loop": ("binary", -1)})
    assert reverse["verdict"].tolist() == ["worse"]


def test_paired_comparison_drops_undefined_pairs():
    nan = float("nan")
    frame = per_explanation({"base": {"faithfulness": [0.5, nan, 0.4, 0.6, 0.2]},
                             "sft": {"faithfulness": [0.7, 0.9, nan, 0.8, 0.3]}})
    # The student also misses case c4 entirely: the pairs are c0 and c3.
    frame = frame[~((frame["explainer"] == "sft") & (frame["case_id"] == "c4"))]
    row = stats.paired_comparison(frame, ["sft"], ["base"], {"faithfulness": ("score", 1)}).iloc[0]
    assert row["n"] == 2
    assert row["mean_student"] == pytest.approx(0.75) and row["mean_baseline"] == pytest.approx(0.55)
    assert row["difference"] == pytest.approx(0.2)
    # One pair left: no interval and no test.
    one = frame[frame["case_id"] != "c3"]
    row = stats.paired_comparison(one, ["sft"], ["base"], {"faithfulness": ("score", 1)}).iloc[0]
    assert row["n"] == 1 and math.isnan(row["p_value"]) and math.isnan(row["ci_low"])
    assert row["verdict"] == "no difference"
    # A metric without a pair (base has no ROUGE-L) or without a column gives no row; nor does a
    # missing student.
    frame = frame.assign(rouge_l=[nan] * 5 + [0.3] * 4)
    metrics = {"faithfulness": ("score", 1), "rouge_l": ("score", 1), "loop": ("binary", -1)}
    assert stats.paired_comparison(frame, ["sft", "gone"], ["base"], metrics)["metric"].tolist() == ["faithfulness"]


def test_paired_comparison_rejects_bad_input():
    frame = per_explanation({"base": {"validity": [1, 0.5]}, "sft": {"validity": [1, 1]}})
    with pytest.raises(ValueError, match="binary but has values"):
        stats.paired_comparison(frame, ["sft"], ["base"], {"validity": ("binary", 1)})
    with pytest.raises(ValueError, match="direction"):
        stats.paired_comparison(frame, ["sft"], ["base"], {"validity": ("binary", 0)})
    with pytest.raises(ValueError, match="more than once"):
        stats.paired_comparison(pd.concat([frame, frame]), ["sft"], ["base"], {"validity": ("score", 1)})
