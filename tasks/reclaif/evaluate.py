"""RecLAIF stage 5, `reclaif_evaluate`: ValidRatio, Hit@1, Hit@3, NDCG@3, Precision@K, diversity
and the explainability score for the LLM recommenders, and the classic recommenders (item-KNN,
ALS, BPR, popularity) scored on the very same candidate sets, with bootstrap CIs over eval
users. The tables are built in recxplain/reclaif/evaluation.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl

from recxplain.config import (
    JudgeConfig,
    ReclaifAnswerConfig,
    ReclaifEvaluationConfig,
    RecommenderConfig,
    TrainingConfig,
)
from recxplain.judging import explainability_scores
from recxplain.llm import release_models
from recxplain.prompts import usage_counts
from recxplain.reclaif import read_candidate_sets
from recxplain.reclaif.answers import load_model, shown_movies
from recxplain.reclaif.evaluation import (
    CHANCE_BASELINES,
    candidates_sampler,
    chance_rankings,
    classic_rankings,
    comparison_markdown,
    embedding_diversity,
    per_answer_table,
    position_bias,
    position_table,
    random_expected,
    recommender_names,
    summarise,
)
from recxplain.recommenders import read_interactions
from recxplain.stage import ALL, reads


@reads(evaluation=ALL, answer=ALL, judge=ALL, recommender=ALL, training=("base_model", "thinking", "rounds"),
       templates=lambda judge, evaluation, **_: [judge.explainability_prompt] if evaluation.explainability else [])
def reclaif_evaluate(
    out: Path,
    *,
    evaluation: ReclaifEvaluationConfig,
    answer: ReclaifAnswerConfig,
    judge: JudgeConfig,
    recommender: RecommenderConfig,
    data: Path,
    candidates: Path,
    answers: Path,
    templates: dict[str, str],
    artifacts_dir: Path,
    training: TrainingConfig | None = None,
) -> None:
    """The comparison table: classic baselines and LLM recommenders on the same eval sets.

    Writes per_answer.parquet (one row per recommender and set), comparison.parquet (model, kind,
    metric, value, ci_low, ci_high, n), comparison.md and stats.json. `templates`:
    `read_templates(judge.explainability_prompt)`. `training`: only orders the DPO rounds.
    """
    out = Path(out)
    sets = read_candidate_sets(candidates, "eval")
    answers_path = Path(answers) / "answers.parquet"
    if not answers_path.exists():
        raise FileNotFoundError(f"{answers_path}: missing (written by reclaif_recommend)")
    llm_answers = pl.read_parquet(answers_path)
    interactions = read_interactions(Path(data))
    fitted = [b for b in evaluation.baselines if b not in CHANCE_BASELINES]
    rankings = classic_rankings(recommender, fitted, interactions, sets)
    rankings |= chance_rankings(evaluation.baselines, sets, evaluation.seed)
    rankings = {name: rankings[name] for name in evaluation.baselines}  # the configured order
    per_answer = per_answer_table(sets, llm_answers, rankings, answer)

    movies = {m.item_id: m for cs in sets for m in cs.candidates}
    diversity = [math.nan] * per_answer.height
    if evaluation.diversity:
        diversity = embedding_diversity(per_answer["picks"].to_list(), movies, evaluation.embedding_model)
    explainability = [math.nan] * per_answer.height
    usage = {}
    if evaluation.explainability:
        by_id = {cs.set_id: cs for cs in sets}
        llm_rows = [i for i, kind in enumerate(per_answer["kind"].to_list()) if kind == "llm"]
        model = load_model(judge.llm, artifacts_dir, out / "cache" / "explainability.sqlite")
        scored = explainability_scores(
            [({"history": shown_movies(by_id[per_answer["case_id"][i]].history)}, per_answer["text"][i])
             for i in llm_rows],
            judge=judge.model_copy(update={"sampling": evaluation.explainability_sampling}), templates=templates,
            model=model,
        )
        for i, parsed in zip(llm_rows, scored, strict=True):
            explainability[i] = float(parsed.value) if parsed.valid else math.nan
        usage = usage_counts(model)
        model = None  # one model in memory at a time
        release_models()
    per_answer = per_answer.with_columns(pl.Series("Diversity", diversity, dtype=pl.Float64),
                                         pl.Series("Explainability", explainability, dtype=pl.Float64))
    per_answer.write_parquet(out / "per_answer.parquet")

    order = list(evaluation.baselines) + recommender_names(evaluation, training or TrainingConfig())
    order += [m for m in llm_answers["model"].unique(maintain_order=True).to_list() if m not in order]
    k = min(answer.top_k, min(len(cs.candidates) for cs in sets))
    summary = summarise(per_answer, order, evaluation.bootstrap, evaluation.seed)
    if "random" in evaluation.baselines:  # the expectation right after the observed shuffle
        at = summary["model"].to_list().index("random") + sum(1 for m in summary["model"] if m == "random")
        expected = random_expected(sets, k, evaluation.bootstrap, evaluation.seed)
        summary = pl.concat([summary.slice(0, at), expected, summary.slice(at)])
    summary.write_parquet(out / "comparison.parquet")
    positions = position_table(per_answer, order, k)
    positions.write_parquet(out / "positions.parquet")
    bias = position_bias(per_answer, order, k)
    bias.write_parquet(out / "position_bias.parquet")
    negatives = max(len(cs.candidates) for cs in sets) - 1
    (out / "comparison.md").write_text(
        comparison_markdown(summary, k, len(sets), negatives, candidates_sampler(candidates), positions, bias))
    llm_rows_frame = per_answer.filter(pl.col("kind") == "llm")
    stats = {
        "eval_sets": len(sets), "recommenders": order, "top_k": answer.top_k,
        "target_positions": sorted(per_answer.filter(pl.col("model") == order[0])["target_position"].to_list()),
        "position_bias": bias.to_dicts(),
        "explainability_scored": int(np.isfinite(np.array(explainability, dtype=float)).sum()),
        "explainability_requests": int(llm_rows_frame.height) if evaluation.explainability else 0,
        "fuzzy_matches": int(llm_rows_frame["fuzzy"].sum()) if llm_rows_frame.height else 0,
        "usage": usage,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
