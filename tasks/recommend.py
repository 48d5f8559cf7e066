"""Stage `train_recommender`: fit a classic recommender, recommend, explain intrinsically, evaluate.

The models, their scoring, the intrinsic explanation and the ranking metrics are the package
recxplain/recommenders/ (see its docstring for the models and the catalogue, scoring.py's for ties). Users
without train interactions get no recommendations, are left out of the metrics, and are counted in
`ranking_metrics.json` (`users_without_train`).

Outputs in `out/`:
- `recommendations.parquet`: user_id, rank (1-based), item_id, score, model; top `top_n` per user
  from the train split, train items filtered.
- `neighbours.parquet`: user_id, item_id, neighbour_item_id, weight, rank; for each
  recommendation up to `neighbours_per_item` of the user's rated items with their contribution to
  the score (item-KNN: exactly the summands of the score; other models: cosine similarity of
  interaction vectors, so every model has an intrinsic explanation).
- `model/`: `meta.json`, `arrays.npz`, `user_items.npz`, `similarity.npz` (see
  `recxplain.recommenders.save_recommender`).
- `ranking_metrics.parquet` (split, protocol, metric, k, value, n) and `ranking_metrics.json`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import polars as pl

from recxplain.config import RecommenderConfig
from recxplain.recommenders import (
    fit_recommender,
    ranking_metrics,
    read_interactions,
    recommend,
    save_recommender,
    user_item_neighbours,
)
from recxplain.stage import ALL, reads, write_run_facts

log = logging.getLogger(__name__)


@reads(recommender=ALL)
def train_recommender(out: Path, *, recommender: RecommenderConfig, data: Path) -> None:
    """Stage: fit on the train split, write recommendations, neighbours, model/ and metrics."""
    cfg = recommender
    interactions = read_interactions(data)
    items_path = data / "items.parquet"
    n_catalogue = (
        pl.read_parquet(items_path, columns=["item_id"]).height
        if items_path.exists()
        else interactions["item_id"].n_unique()
    )
    started = time.perf_counter()
    rec = fit_recommender(cfg, interactions.filter(pl.col("split") == "train"))
    fit_s = time.perf_counter() - started
    save_recommender(rec, out / "model")

    started = time.perf_counter()
    recs = recommend(rec, cfg.top_n)
    recommend_s = time.perf_counter() - started
    recs.write_parquet(out / "recommendations.parquet")
    user_item_neighbours(rec, recs, cfg.neighbours_per_item).write_parquet(out / "neighbours.parquet")

    table, summary = ranking_metrics(rec, interactions, cfg.eval_ks, cfg.sampled_negatives, cfg.seed, n_catalogue)
    summary |= {
        "users": len(rec.user_ids),
        "catalogue": len(rec.item_ids),
    }
    table.write_parquet(out / "ranking_metrics.parquet")
    (out / "ranking_metrics.json").write_text(json.dumps(summary, indent=2))
    write_run_facts(out, fit_s=round(fit_s, 4), recommend_s=round(recommend_s, 4))
    log.info(
        "train_recommender %s: fit %.2fs, recommend %.2fs, %s",
        rec.model, fit_s, recommend_s, summary.get("test", {}).get("full"),
    )
