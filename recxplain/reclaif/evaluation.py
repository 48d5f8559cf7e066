"""RecLAIF's comparison (the `reclaif_recommend` and `reclaif_evaluate` stages,
tasks/reclaif/recommend.py and evaluate.py): the LLM recommenders compared, the classic and
chance rankings of the same eval sets, the per-answer table, its summary with bootstrap CIs,
the position tables and the comparison as markdown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from recxplain.config import ReclaifAnswerConfig, ReclaifEvaluationConfig, RecommenderConfig, TrainingConfig
from recxplain.explainers import expand_rounds
from recxplain.metrics import load_embedder, mean_cosine_distance
from recxplain.reclaif import METRICS, CandidateSet, display_title
from recxplain.reclaif.answers import (
    _YEAR,
    parse_recommendation,
    ranking_values,
    shown_position,
    title_key,
    wanted_picks,
)
from recxplain.recommenders import fit_recommender, score_candidates
from recxplain.schemas import Movie
from recxplain.stats import bootstrap_ci

# ---------------------------------------------------------------------------------------------
# The recommenders compared


def recommender_names(evaluation: ReclaifEvaluationConfig, training: TrainingConfig) -> list[str]:
    """The configured LLM recommenders with `dpo` expanded to one name per DPO round."""
    return expand_rounds(evaluation.recommenders, training.rounds)


def student_recommenders(evaluation: ReclaifEvaluationConfig, training: TrainingConfig) -> list[str]:
    """The recommenders that need a trained student folder (the flow passes them as `students`)."""
    return [n for n in recommender_names(evaluation, training) if n not in ("teacher", "base")]


# ---------------------------------------------------------------------------------------------
# Rankings and the per-answer table


def classic_rankings(
    recommender: RecommenderConfig, baselines: Sequence[str], interactions: pl.DataFrame, sets: Sequence[CandidateSet]
) -> dict[str, list[list[int]]]:
    """Each baseline's full ranking of every set's candidates (item ids, best first).

    Every baseline is fit on the interactions before the eval targets (train + valid splits),
    as the LLM sees them in its history. Ties keep the candidates' shown order; a candidate
    outside the model's catalogue scores -inf (ranked last).
    """
    known = interactions.filter(pl.col("split") != "test")
    users = [cs.user_id for cs in sets]
    matrix = np.array([[c.item_id for c in cs.candidates] for cs in sets], dtype=np.int64)
    rankings = {}
    for name in baselines:
        rec = fit_recommender(recommender.model_copy(update={"model": name}), known)
        scores = score_candidates(rec, users, matrix)
        order = np.argsort(-scores, axis=1, kind="stable")
        rankings[name] = [matrix[i, order[i]].tolist() for i in range(len(sets))]
    return rankings


def item_text(movie: Movie) -> str:
    """The text of a movie that diversity embeds: title, year and genres."""
    return f"{display_title(movie)}. Genres: {', '.join(movie.genres) or 'unknown'}."


def embedding_diversity(picks: Sequence[Sequence[int]], movies: dict[int, Movie], model_name: str) -> list[float]:
    """Mean pairwise cosine distance of each answer's picked movies (NaN with fewer than two)."""
    distinct = sorted({i for p in picks for i in p})
    if not distinct:
        return [math.nan] * len(picks)
    vectors = load_embedder(model_name).encode([item_text(movies[i]) for i in distinct], batch_size=64,
                                               show_progress_bar=False, convert_to_numpy=True)
    row = {item: n for n, item in enumerate(distinct)}
    return [
        float(mean_cosine_distance(vectors[[row[i] for i in p]]).mean()) if len(p) >= 2 else math.nan for p in picks
    ]


def per_answer_table(
    sets: Sequence[CandidateSet],
    answers: pl.DataFrame,
    rankings: dict[str, list[list[int]]],
    answer: ReclaifAnswerConfig,
) -> pl.DataFrame:
    """One row per (recommender, eval set): kind, valid, rank of the next movie, picks and the
    ranking metrics. LLM answers are parsed; a classic model's picks are its top k.

    Position columns: `target_position` (1-based place of the next movie in the shown candidate
    list), `pick_positions` (places of the top-k picks), `names_target` (the next movie is among
    ALL the movies an answer named, beyond k too) and `history_named` (listed titles that are
    movies of the user's history, not candidates). Kind: `llm`, `classic`, or `chance` for the
    `random` and `listed` rankings (`CHANCE_BASELINES`).
    """
    by_id = {cs.set_id: cs for cs in sets}
    rows = []
    for row in answers.iter_rows(named=True):
        cs = by_id.get(row["case_id"])
        if cs is None:
            raise ValueError(f"answers: case_id {row['case_id']!r} is not an eval set")
        k = wanted_picks(cs, answer)
        parsed = parse_recommendation(row["text"], cs.candidates, k, answer.fuzzy_threshold)
        rank = parsed.rank_of(cs.target.item_id)
        history = {title_key(_YEAR.sub("", display_title(m))) for m in cs.history}
        rows.append({"model": row["model"], "kind": "llm", "case_id": cs.set_id, "user_id": cs.user_id,
                     "valid": parsed.valid, "rank": rank, "picks": parsed.picks[:k], "fuzzy": parsed.fuzzy,
                     "not_candidates": len(parsed.not_candidates), "duplicates": len(parsed.duplicates),
                     "problems": "; ".join(parsed.problems), "text": row["text"],
                     "target_position": shown_position(cs, cs.target.item_id),
                     "pick_positions": [shown_position(cs, i) for i in parsed.picks[:k]],
                     "names_target": cs.target.item_id in parsed.picks,
                     "history_named": sum(title_key(_YEAR.sub("", n)) in history for n in parsed.not_candidates),
                     **_ranking(rank, k)})
    for name, ranked in rankings.items():
        for cs, order in zip(sets, ranked, strict=True):
            k = wanted_picks(cs, answer)
            rank = float(order.index(cs.target.item_id) + 1)
            rows.append({"model": name, "kind": "chance" if name in CHANCE_BASELINES else "classic",
                         "case_id": cs.set_id, "user_id": cs.user_id, "valid": True,
                         "rank": rank, "picks": order[:k], "fuzzy": 0, "not_candidates": 0, "duplicates": 0,
                         "problems": "", "text": None, "target_position": shown_position(cs, cs.target.item_id),
                         "pick_positions": [shown_position(cs, i) for i in order[:k]], "names_target": rank <= k,
                         "history_named": 0, **_ranking(rank, k)})
    return pl.DataFrame(rows, infer_schema_length=None)


# Rankings that use nothing about the user: a seeded shuffle of each set (`random`, what chance
# gets on these very sets) and the shown order (`listed`, what copying the list's top gets).
CHANCE_BASELINES = ("random", "listed")
RANDOM_EXPECTED = "random (expected)"


def chance_rankings(names: Sequence[str], sets: Sequence[CandidateSet], seed: int) -> dict[str, list[list[int]]]:
    """The `CHANCE_BASELINES` among `names`: full rankings of every set's candidates."""
    rankings = {}
    for name in names:
        if name == "random":
            rankings[name] = [[cs.candidates[j].item_id for j in np.random.default_rng([seed, cs.user_id]).permutation(
                len(cs.candidates))] for cs in sets]
        elif name == "listed":
            rankings[name] = [[c.item_id for c in cs.candidates] for cs in sets]
    return rankings


def random_expected(sets: Sequence[CandidateSet], k: int, draws: int, seed: int) -> pl.DataFrame:
    """The `random (expected)` rows of the comparison: the exact expectation of each ranking
    metric when the next movie's rank is uniform over its set's candidates, with the 2.5-97.5%
    range of the mean over these sets that `draws` random rankings give (how far chance alone
    moves a recommender's mean on this many users)."""
    sizes = np.array([len(cs.candidates) for cs in sets])
    ranks = np.floor(np.random.default_rng(seed).random((draws, len(sets))) * sizes).astype(np.int64) + 1
    simulated = {metric: np.array([_ranking(float(r), k)[metric] for r in range(1, sizes.max() + 1)])
                 for metric in ("Hit@1", "Hit@3", "NDCG@3", "Precision@K")}
    rows = []
    for metric, by_rank in simulated.items():
        exact = float(np.mean([by_rank[:n].mean() for n in sizes]))
        means = by_rank[ranks - 1].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        rows.append({"model": RANDOM_EXPECTED, "kind": "chance", "metric": metric, "value": exact,
                     "ci_low": float(low), "ci_high": float(high), "n": len(sets)})
    return pl.DataFrame(rows, schema=SUMMARY_SCHEMA)


# ---------------------------------------------------------------------------------------------
# Summaries and tables


POSITION_BIAS = ("copies first k", "picks in first k", "mean pick position", "names next movie (valid)",
                 "names next movie (any)", "history titles named")


def position_groups(n: int, k: int) -> list[tuple[int, int]]:
    """Shown positions 1..n in groups: the first k alone, the rest in three near-equal runs."""
    rest = [chunk for chunk in np.array_split(np.arange(k + 1, n + 1), 3) if len(chunk)]
    return [(1, k), *[(int(c[0]), int(c[-1])) for c in rest]] if n > k else [(1, n)]


def position_table(per_answer: pl.DataFrame, order: Sequence[str], k: int) -> pl.DataFrame:
    """Where each recommender's hits come from: per recommender and group of shown positions of
    the next movie (`position_groups`), the sets in the group and their Hit@1 and Hit@k."""
    n = int(per_answer["target_position"].max())
    rows = []
    for name in order:
        frame = per_answer.filter(pl.col("model") == name)
        for first, last in position_groups(n, k):
            group = frame.filter(pl.col("target_position").is_between(first, last))
            rows.append({"model": name, "positions": f"{first}-{last}" if last > first else str(first),
                         "sets": group.height,
                         "Hit@1": float(group["Hit@1"].mean()) if group.height else math.nan,
                         f"Hit@{k}": float((group["rank"] <= k).mean()) if group.height else math.nan})
    return pl.DataFrame(rows)


def position_bias(per_answer: pl.DataFrame, order: Sequence[str], k: int) -> pl.DataFrame:
    """Per recommender (`POSITION_BIAS`): share of answers whose top k are the first k candidates
    as listed, in that order; share of picks from the first k places; mean shown place of the
    picks (chance: (n + 1) / 2); share of valid answers, and of all answers, that name the next
    movie anywhere (beyond k too); listed titles that are history movies, per answer."""
    rows = []
    for name in order:
        frame = per_answer.filter(pl.col("model") == name)
        if frame.height == 0:
            continue
        positions = frame["pick_positions"].to_list()
        flat = [p for ps in positions for p in ps]
        valid = frame.filter(pl.col("valid"))
        rows.append({
            "model": name, "kind": frame["kind"][0], "answers": frame.height,
            "copies first k": float(np.mean([ps == list(range(1, k + 1)) for ps in positions])),
            "picks in first k": float(np.mean([p <= k for p in flat])) if flat else math.nan,
            "mean pick position": float(np.mean(flat)) if flat else math.nan,
            "names next movie (valid)": float(valid["names_target"].mean()) if valid.height else math.nan,
            "valid answers": valid.height,
            "names next movie (any)": float(frame["names_target"].mean()),
            "history titles named": float(frame["history_named"].mean()),
        })
    return pl.DataFrame(rows)


def _ranking(rank: float, k: int) -> dict[str, float]:
    values = ranking_values(rank, k)
    values["Precision@K"] = values.pop(f"Precision@{k}")
    return values


def summarise(per_answer: pl.DataFrame, order: Sequence[str], n_boot: int, seed: int) -> pl.DataFrame:
    """Long table (model, kind, metric, value, ci_low, ci_high, n): mean over eval sets and the
    percentile bootstrap CI (recxplain.stats.bootstrap_ci); NaN values (no explainability score,
    fewer than two picks) are left out of their metric."""
    rows = []
    for name in order:
        frame = per_answer.filter(pl.col("model") == name)
        if frame.height == 0:
            continue
        kind = frame["kind"][0]
        for metric in METRICS:
            column = "valid" if metric == "ValidRatio" else metric
            if column not in frame.columns:
                continue
            values = frame[column].cast(pl.Float64).to_numpy()
            values = values[~np.isnan(values)]
            if metric == "Explainability" and kind != "llm":
                continue
            low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
            rows.append({"model": name, "kind": kind, "metric": metric,
                         "value": float(values.mean()) if len(values) else math.nan,
                         "ci_low": low, "ci_high": high, "n": int(len(values))})
    return pl.DataFrame(rows, schema=SUMMARY_SCHEMA)


SUMMARY_SCHEMA = {"model": pl.String, "kind": pl.String, "metric": pl.String, "value": pl.Float64,
                  "ci_low": pl.Float64, "ci_high": pl.Float64, "n": pl.Int64}


def comparison_markdown(summary: pl.DataFrame, k: int, sets: int, negatives: int, sampler: str,
                        positions: pl.DataFrame | None = None, bias: pl.DataFrame | None = None) -> str:
    """The comparison table as markdown: one row per recommender, `value [ci_low, ci_high]` cells;
    then, when given, Hit@k by the next movie's shown position (`position_table`) and the
    position-bias table (`position_bias`)."""
    header = ["recommender", "kind", *[m.replace("@K", f"@{k}") for m in METRICS]]
    lines = [
        f"RecLAIF comparison on {sets} eval users, each ranking 1 held-out next movie + {negatives} {sampler} "
        f"negatives; mean [95% bootstrap CI]. Explainability: the judge's 1-100 score (LLM answers only). "
        f"random: a seeded shuffle of each set; {RANDOM_EXPECTED}: the exact expectation of a random ranking "
        f"[the 2.5-97.5% range of its mean over these {sets} users]; listed: the first {k} candidates as the "
        f"prompt lists them.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * len(METRICS)) + "|",
    ]
    for name in summary["model"].unique(maintain_order=True).to_list():
        frame = summary.filter(pl.col("model") == name)
        cells = {r["metric"]: r for r in frame.iter_rows(named=True)}
        values = []
        for metric in METRICS:
            r = cells.get(metric)
            if r is None or r["n"] == 0:
                values.append("–")
            elif metric == "Explainability":
                values.append(f"{r['value']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]")
            else:
                values.append(f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        lines.append(f"| {name} | {frame['kind'][0]} | " + " | ".join(values) + " |")
    if positions is not None and positions.height:
        groups = positions["positions"].unique(maintain_order=True).to_list()
        sizes = dict(zip(positions["positions"], positions["sets"]))
        lines += ["", f"Hit@{k} by the next movie's position in the candidate list as shown (sets per group in "
                  f"brackets; chance: {k}/{negatives + 1} in every group).", "",
                  "| recommender | " + " | ".join(f"{g} ({sizes[g]})" for g in groups) + " |",
                  "|---|" + "---:|" * len(groups)]
        for name in positions["model"].unique(maintain_order=True).to_list():
            cells = positions.filter(pl.col("model") == name)[f"Hit@{k}"].to_list()
            lines.append(f"| {name} | " + " | ".join("–" if v != v else f"{v:.3f}" for v in cells) + " |")
    if bias is not None and bias.height:
        lines += ["", f"Position bias and reach: share of answers whose top {k} are the first {k} candidates as "
                  f"listed; share of picks from the first {k} places (chance {k}/{negatives + 1}); mean place of "
                  f"the picks (chance {(negatives + 2) / 2:g}); share of valid answers (count) and of all "
                  "answers naming the next movie anywhere; history titles listed as picks per answer.", "",
                  "| recommender | " + " | ".join(POSITION_BIAS) + " |", "|---|" + "---:|" * len(POSITION_BIAS)]
        for r in bias.iter_rows(named=True):
            valid = "–" if r["valid answers"] == 0 else f"{r['names next movie (valid)']:.3f} ({r['valid answers']})"
            lines.append(f"| {r['model']} | {r['copies first k']:.3f} | {r['picks in first k']:.3f} | "
                         f"{r['mean pick position']:.1f} | {valid} | {r['names next movie (any)']:.3f} | "
                         f"{r['history titles named']:.2f} |")
    return "\n".join(lines) + "\n"


def candidates_sampler(candidates: Path) -> str:
    """The negative sampler of a build_candidate_sets folder (its stats.json; "sampled" when unknown)."""
    path = Path(candidates) / "stats.json"
    return json.loads(path.read_text()).get("sampler", "sampled") if path.exists() else "sampled"
