"""Benchmark: fit + top-10 for every ml-100k user, per model, with leave-last-out metrics.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_recommend.py [--models itemknn als bpr popular]

Prepares ml-100k once with `tasks.data.prepare_data` (leave-last-out by time), then for each
model times `fit_recommender` and `recommend` (top-10, train items filtered, all users) and
reports HR@10 / NDCG@10 under full ranking on valid (fit on train: the held-out item is the
one right after the train history) and on test (still fit on train; valid items filtered).
Goal from issue 3: item-KNN fit + top-10 under 0.5 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import polars as pl

from recxplain.config import DataConfig, RecommenderConfig
from recxplain.recommenders import fit_recommender, ranking_metrics, read_interactions, recommend
from tasks.data import prepare_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["itemknn", "als", "bpr", "popular"])
    parser.add_argument("--repeats", type=int, default=3, help="timings: best of this many runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        prepare_data(data, data=DataConfig())
        interactions = read_interactions(data)
    train = interactions.filter(pl.col("split") == "train")
    n_items = interactions["item_id"].n_unique()
    print(f"ml-100k: {interactions.height} ratings, {train['user_id'].n_unique()} users, train {train.height}")
    print(f"{'model':8} {'fit_s':>7} {'top10_s':>8} {'total_s':>8} {'HR@10v':>7} {'NDCG@10v':>8} {'HR@10t':>7} "
          f"{'NDCG@10t':>8} {'sHR@10t':>8}")
    for name in args.models:
        cfg = RecommenderConfig(model=name, eval_ks=[10])
        fits, tops = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            rec = fit_recommender(cfg, train)
            fits.append(time.perf_counter() - start)
            start = time.perf_counter()
            recs = recommend(rec, 10)
            tops.append(time.perf_counter() - start)
        assert recs["user_id"].n_unique() == len(rec.user_ids)
        _, summary = ranking_metrics(rec, interactions, [10], cfg.sampled_negatives, cfg.seed, n_items)
        v, t = summary["valid"]["full"], summary["test"]["full"]
        total = min(f + r for f, r in zip(fits, tops))
        print(
            f"{name:8} {min(fits):7.3f} {min(tops):8.3f} {total:8.3f} {v['HR@10']:7.4f} {v['NDCG@10']:8.4f} "
            f"{t['HR@10']:7.4f} {t['NDCG@10']:8.4f} {summary['test']['sampled']['HR@10']:8.4f}"
        )


if __name__ == "__main__":
    main()
