"""Honest statistics for pairwise comparisons of explainers (arena votes and judge tournaments).

`paired_comparison` is the odd one out: it compares explainers on per-explanation metrics of
the same cases (did a trained student beat the untrained base model?), not on votes.

A *battle table* is a DataFrame with one row per comparison and the columns
`model_a`, `model_b`, `outcome`, where outcome is one of

- `a`: model_a's explanation is better,
- `b`: model_b's explanation is better,
- `tie`: equally good,
- `both_bad`: neither is acceptable.

Optionally `case_id` (needed by `agreement`). Positions do not matter to any function here: a
battle (x, y, "a") is the same evidence as (y, x, "b").

How ties and "both bad" are counted, in one place:

- Bradley-Terry and the win-rate matrix count a tie as half a win for each side, as FastChat's
  Chatbot Arena leaderboard does, and count `both_bad` as a tie (FastChat's "tie (bothbad)"):
  the voter preferred neither.
- The binomial tests use decisive votes only (`a`/`b`); ties and both_bad are reported next to
  them but carry no information about which model is better.
- Agreement (Cohen's kappa) compares three labels per (case, pair): first model better, second
  better, no preference (tie or both_bad).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import choix
import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.inter_rater import cohens_kappa
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

OUTCOMES = ("a", "b", "tie", "both_bad")
# Score of model_a in one battle (model_b gets 1 minus it).
_SCORE_A = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}


def check_battles(battles: pd.DataFrame, name: str = "battles", need_case: bool = False) -> pd.DataFrame:
    """Validate a battle table; return it with outcomes as plain strings.

    Raises ValueError naming `name`, the missing columns or the first row with a bad value.
    """
    needed = ["model_a", "model_b", "outcome"] + (["case_id"] if need_case else [])
    missing = [c for c in needed if c not in battles.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; has {list(battles.columns)}")
    frame = battles.reset_index(drop=True).copy()
    frame["outcome"] = frame["outcome"].astype(str)
    bad = ~frame["outcome"].isin(OUTCOMES)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"{name}: row {row}: outcome {frame['outcome'].iloc[row]!r} is not one of {list(OUTCOMES)}"
        )
    same = frame["model_a"] == frame["model_b"]
    if same.any():
        row = int(np.flatnonzero(same.to_numpy())[0])
        raise ValueError(f"{name}: row {row}: model_a and model_b are both {frame['model_a'].iloc[row]!r}")
    return frame


def bootstrap_ci(
    values,
    statistic: Callable = np.mean,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `statistic` over `values` (scipy.stats.bootstrap).

    `statistic` is called on a 1-D array. No values gives (nan, nan); a single value, or values
    that are all equal, give (value, value): there is no spread to resample.
    """
    data = np.asarray(values, dtype=float).ravel()
    if data.size == 0:
        return (math.nan, math.nan)
    if data.size == 1 or np.all(data == data[0]):
        point = float(statistic(data))
        return (point, point)

    def vectorised(sample: np.ndarray, axis: int = -1) -> np.ndarray:
        # numpy reductions (np.mean, np.median, ...) take `axis`: all resamples in one call;
        # any other callable gets one resample at a time.
        try:
            return statistic(sample, axis=axis)
        except TypeError:
            return np.apply_along_axis(statistic, axis, sample)

    result = sps.bootstrap(
        (data,),
        vectorised,
        n_resamples=n_boot,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
        vectorized=True,
    )
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


def _models(battles: pd.DataFrame) -> list[str]:
    return sorted(set(battles["model_a"]).union(battles["model_b"]))


def _win_matrix(
    index_a: np.ndarray, index_b: np.ndarray, score_a: np.ndarray, weights: np.ndarray, n: int
) -> np.ndarray:
    """wins[i, j] = (weighted) number of times i beat j, ties counting half to each side."""
    wins = np.zeros((n, n))
    np.add.at(wins, (index_a, index_b), weights * score_a)
    np.add.at(wins, (index_b, index_a), weights * (1.0 - score_a))
    return wins


def bradley_terry(battles: pd.DataFrame, n_boot: int = 1000, seed: int = 0, alpha: float = 0.01) -> pd.DataFrame:
    """Bradley-Terry strengths with percentile bootstrap 95% intervals (bootstrap over battles).

    Fitted by choix's iterative Luce spectral ranking on the win matrix, ties and both_bad as
    half wins. `strength` is on the log-odds scale and centred at zero over the models:
    P(i beats j) = 1 / (1 + exp(strength_j - strength_i)). `alpha` is choix's regulariser (a
    tiny prior pull between every pair, so a model that never won, or a bootstrap sample missing
    a pair, still gets a finite strength); alpha=0 is the plain maximum-likelihood fit.

    Returns one row per model, strongest first: model, strength, ci_low, ci_high, battles.
    """
    frame = check_battles(battles)
    columns = ["model", "strength", "ci_low", "ci_high", "battles"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    models = _models(frame)
    position = {m: i for i, m in enumerate(models)}
    # Battles of the same kind (same models, same positions, same outcome) are interchangeable:
    # resampling N battles with replacement is a multinomial draw over the kinds, with
    # probabilities their shares. Fitting on kind counts keeps 1000 resamples fast.
    kinds = frame.groupby(["model_a", "model_b", "outcome"]).size().reset_index(name="count")
    index_a = kinds["model_a"].map(position).to_numpy()
    index_b = kinds["model_b"].map(position).to_numpy()
    score_a = kinds["outcome"].map(_SCORE_A).to_numpy(dtype=float)
    observed = kinds["count"].to_numpy(dtype=float)
    n_models, n_battles = len(models), len(frame)

    def fit(weights: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        wins = _win_matrix(index_a, index_b, score_a, weights, n_models)
        try:
            return choix.ilsr_pairwise_dense(wins, alpha=alpha, initial_params=start)
        except ValueError:
            raise ValueError(
                "Bradley-Terry has no finite fit: some model never won or the comparisons are "
                "not connected (a bootstrap sample can be); use alpha > 0"
            ) from None

    strength = fit(observed)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_battles, observed / n_battles, size=n_boot)
    # Each resample starts from the full fit: same optimum, fewer iterations.
    samples = np.array([fit(weights.astype(float), strength) for weights in draws])
    counts = np.bincount(index_a, weights=observed, minlength=n_models) + np.bincount(
        index_b, weights=observed, minlength=n_models
    )
    if n_boot > 0:
        low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    else:
        low = high = np.full(n_models, math.nan)
    table = pd.DataFrame(
        {"model": models, "strength": strength, "ci_low": low, "ci_high": high, "battles": counts.astype(int)}
    )
    return table.sort_values("strength", ascending=False, ignore_index=True)


def win_rate_matrix(battles: pd.DataFrame) -> pd.DataFrame:
    """Share of battles the row model won against the column model (ties and both_bad: half).

    Square DataFrame indexed and columned by model name (sorted); NaN on the diagonal and where
    two models never met.
    """
    frame = check_battles(battles)
    models = _models(frame)
    if not models:
        return pd.DataFrame()
    position = {m: i for i, m in enumerate(models)}
    index_a = frame["model_a"].map(position).to_numpy()
    index_b = frame["model_b"].map(position).to_numpy()
    score_a = frame["outcome"].map(_SCORE_A).to_numpy(dtype=float)
    wins = _win_matrix(index_a, index_b, score_a, np.ones(len(frame)), len(models))
    games = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(games > 0, wins / games, np.nan)
    np.fill_diagonal(rate, np.nan)
    return pd.DataFrame(rate, index=pd.Index(models, name="model"), columns=models)


def votes_needed(win_rate: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Decisive votes needed to tell `win_rate` from 0.5 with a two-sided test at `alpha`.

    Normal approximation on Cohen's h (statsmodels `NormalIndPower` with ratio=0, the one-sample
    case), rounded up, and never below the fewest votes with which the exact binomial test can
    reject at all (6 at alpha 0.05: a 5-0 split has p = 0.0625); near win rates of 0 or 1 the
    approximation is optimistic. NaN when win_rate is 0.5 or not a number (nothing to detect).
    """
    if not np.isfinite(win_rate) or win_rate == 0.5:
        return math.nan
    effect = proportion_effectsize(win_rate, 0.5)
    n = NormalIndPower().solve_power(effect_size=abs(effect), alpha=alpha, power=power, ratio=0)
    fewest = math.ceil(math.log2(2 / alpha))  # smallest n with 2 * 0.5**n <= alpha
    return float(max(math.ceil(n), fewest))


def _oriented(frame: pd.DataFrame) -> pd.DataFrame:
    """Battles with model_a < model_b (alphabetically), outcomes flipped where swapped."""
    swap = frame["model_a"] > frame["model_b"]
    out = frame.copy()
    out.loc[swap, "model_a"] = frame.loc[swap, "model_b"]
    out.loc[swap, "model_b"] = frame.loc[swap, "model_a"]
    out.loc[swap, "outcome"] = frame.loc[swap, "outcome"].map(
        {"a": "b", "b": "a", "tie": "tie", "both_bad": "both_bad"}
    )
    return out


def pairwise_tests(battles: pd.DataFrame) -> pd.DataFrame:
    """Exact two-sided binomial test per pair of models, on decisive votes.

    One row per pair that met, model_a < model_b alphabetically: model_a, model_b, wins_a,
    wins_b, ties, both_bad, win_rate_a (wins_a over decisive votes), p_value (scipy binomtest
    against 0.5; NaN without decisive votes), p_holm (Holm-adjusted over all pairs shown, since
    several pairs are tested at once), votes_needed (decisive votes for 80% power at alpha 0.05
    to detect the observed win rate against 0.5; NaN at exactly 0.5).
    """
    frame = _oriented(check_battles(battles))
    columns = [
        "model_a", "model_b", "wins_a", "wins_b", "ties", "both_bad", "win_rate_a", "p_value", "p_holm", "votes_needed",
    ]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    counts = (
        frame.groupby(["model_a", "model_b"])["outcome"].value_counts().unstack(fill_value=0)
        .reindex(columns=list(OUTCOMES), fill_value=0)
        .rename(columns={"a": "wins_a", "b": "wins_b", "tie": "ties"})
        .reset_index()
    )
    counts.columns.name = None
    decisive = counts["wins_a"] + counts["wins_b"]
    counts["win_rate_a"] = np.where(decisive > 0, counts["wins_a"] / decisive.where(decisive > 0, 1), np.nan)
    counts["p_value"] = [
        sps.binomtest(int(wins), int(total), 0.5).pvalue if total > 0 else math.nan
        for wins, total in zip(counts["wins_a"], decisive)
    ]
    counts["p_holm"] = math.nan
    tested = counts["p_value"].notna()
    if tested.any():
        counts.loc[tested, "p_holm"] = multipletests(counts.loc[tested, "p_value"], method="holm")[1]
    counts["votes_needed"] = [votes_needed(rate) for rate in counts["win_rate_a"]]
    return counts[columns]


def _labels(frame: pd.DataFrame) -> pd.Series:
    """One label per (case_id, model_a, model_b) in alphabetical orientation: majority vote.

    Labels: "a" (first model better), "b", "none" (tie or both_bad). Several votes on the same
    (case, pair) are reduced to their most frequent label; a tie for most frequent gives "none".
    """
    oriented = _oriented(frame)
    oriented["label"] = oriented["outcome"].map({"a": "a", "b": "b", "tie": "none", "both_bad": "none"})
    counts = oriented.groupby(["case_id", "model_a", "model_b"])["label"].value_counts().unstack(fill_value=0)

    def majority(row: pd.Series) -> str:
        top = row[row == row.max()]
        return str(top.index[0]) if len(top) == 1 else "none"

    if counts.empty:
        return pd.Series(dtype=object)
    return counts.apply(majority, axis=1)


def agreement(human_battles: pd.DataFrame, judge_battles: pd.DataFrame) -> dict:
    """Agreement between people and the AI judge on the (case, pair) both judged.

    Both tables need case_id, model_a, model_b, outcome. Each side is reduced to one label per
    (case, unordered pair) by majority (see `_labels`); the three labels are first model better,
    second better, no preference (tie or both_bad). Returns a dict: kappa (Cohen's, statsmodels),
    kappa_low, kappa_high (its asymptotic 95% interval), agreement (raw share of equal labels),
    n (number of (case, pair) compared). Values are NaN when n is 0; kappa and its interval are
    also NaN when both sides gave every item one and the same label (chance agreement is 1).
    """
    human = _labels(check_battles(human_battles, "human battles", need_case=True))
    judge = _labels(check_battles(judge_battles, "judge battles", need_case=True))
    both = pd.concat({"human": human, "judge": judge}, axis=1, join="inner")
    n = len(both)
    result = {"kappa": math.nan, "kappa_low": math.nan, "kappa_high": math.nan, "agreement": math.nan, "n": n}
    if n == 0:
        return result
    labels = ["a", "b", "none"]
    table = pd.crosstab(both["human"], both["judge"]).reindex(index=labels, columns=labels, fill_value=0)
    result["agreement"] = float((both["human"] == both["judge"]).mean())
    counts = table.to_numpy()
    expected = float((counts.sum(axis=1) @ counts.sum(axis=0)) / n**2)
    if expected >= 1.0:  # both sides used one and the same label: kappa is undefined (0/0)
        return result
    kappa = cohens_kappa(counts)
    result["kappa"] = float(kappa.kappa)
    # The asymptotic interval can overshoot kappa's range on few items.
    result["kappa_low"] = float(max(kappa.kappa_low, -1.0))
    result["kappa_high"] = float(min(kappa.kappa_upp, 1.0))
    return result


# --------------------------------------------------------------------------------------------
# Paired comparison on the same cases (per-explanation metrics, not votes)

PAIRED_KINDS = ("binary", "score")
PAIRED_COLUMNS = ["student", "baseline", "metric", "n", "mean_student", "mean_baseline", "difference", "ci_low",
                  "ci_high", "test", "p_value", "verdict"]
PAIRED_TESTS = {"binary": "McNemar exact", "score": "Wilcoxon signed-rank"}


def _paired_p(student: np.ndarray, baseline: np.ndarray, kind: str, metric: str) -> float:
    """Two-sided p-value of the paired test for `kind` (see `paired_comparison`)."""
    if kind == "binary":
        values = np.concatenate([student, baseline])
        if not np.isin(values, (0.0, 1.0)).all():
            raise ValueError(f"metric {metric!r} is binary but has values other than 0 and 1")
        s, b = student == 1.0, baseline == 1.0
        table = [[int(np.sum(s & b)), int(np.sum(s & ~b))], [int(np.sum(~s & b)), int(np.sum(~s & ~b))]]
        return float(mcnemar(table, exact=True).pvalue)
    differences = student - baseline
    if np.all(differences == 0):  # nothing to rank: scipy would warn and return NaN
        return 1.0
    return float(sps.wilcoxon(differences, zero_method="zsplit", alternative="two-sided").pvalue)


def paired_comparison(per_explanation: pd.DataFrame, students: list[str], baselines: list[str],
                      metrics: dict[str, tuple[str, int]], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every student against every baseline on the same cases, one metric at a time.

    `per_explanation` has one row per (explainer, case_id) and the metric columns (NaN: the
    metric is undefined for that explanation). `metrics` maps a column to (kind, direction): kind
    "binary" (values 0/1) or "score" (continuous); direction +1 when higher is better, -1 when
    lower is. A pair is a case where both explainers have a value.

    difference is the mean of student - baseline over the pairs; ci_low and ci_high its
    percentile bootstrap 95% interval over cases (`bootstrap_ci` of the per-case differences:
    resampling a case keeps its pair together). Binary metrics get the exact McNemar test on the
    2x2 table of paired outcomes (statsmodels), scores the two-sided Wilcoxon signed-rank test
    (scipy; zero differences split between the signs, p = 1 when every difference is zero).
    Fewer than 2 pairs: no interval and no test (NaN). verdict is "better" or "worse" for the
    student (the sign of the difference times the direction) where p < 0.05, else
    "no difference"; p is not corrected for the number of comparisons.

    Students or baselines absent from the frame, a student against itself, metric columns the
    frame lacks and metrics without a single pair give no row. Returns one row per (student,
    baseline, metric) in the order given, with the columns `PAIRED_COLUMNS`.
    """
    missing = [c for c in ("explainer", "case_id") if c not in per_explanation.columns]
    if missing:
        raise ValueError(f"per_explanation: missing column(s) {missing}; has {list(per_explanation.columns)}")
    for metric, (kind, direction) in metrics.items():
        if kind not in PAIRED_KINDS or direction not in (1, -1):
            raise ValueError(f"metric {metric!r}: kind must be one of {list(PAIRED_KINDS)} and direction +1 or -1, "
                             f"got ({kind!r}, {direction!r})")
    repeated = per_explanation.duplicated(["explainer", "case_id"])
    if repeated.any():
        row = per_explanation[repeated].iloc[0]
        raise ValueError(f"per_explanation: {row['explainer']!r} has case {row['case_id']!r} more than once")
    columns = [m for m in metrics if m in per_explanation.columns]
    values = {explainer: group.set_index("case_id")[columns].astype(float)
              for explainer, group in per_explanation.groupby("explainer", sort=False)}
    rows = []
    for student in students:
        for baseline in baselines:
            if student == baseline or student not in values or baseline not in values:
                continue
            for metric in columns:
                kind, direction = metrics[metric]
                pairs = pd.concat({"s": values[student][metric], "b": values[baseline][metric]}, axis=1,
                                  join="inner").dropna()
                if pairs.empty:
                    continue
                s, b = pairs["s"].to_numpy(), pairs["b"].to_numpy()
                difference = float(np.mean(s - b))
                if len(pairs) < 2:
                    (low, high), p = (math.nan, math.nan), math.nan
                else:
                    (low, high), p = bootstrap_ci(s - b, n_boot=n_boot, seed=seed), _paired_p(s, b, kind, metric)
                verdict = "no difference"
                if p < 0.05 and difference != 0:
                    verdict = "better" if difference * direction > 0 else "worse"
                rows.append({"student": student, "baseline": baseline, "metric": metric, "n": len(pairs),
                             "mean_student": float(s.mean()), "mean_baseline": float(b.mean()),
                             "difference": difference, "ci_low": low, "ci_high": high, "test": PAIRED_TESTS[kind],
                             "p_value": p, "verdict": verdict})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)
