"""Benchmark: explanation paths for every user x top-10 recommendation; recommendations/s, coverage.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_paths.py [--synthetic-ratings 1000000]

Two datasets, each: item-KNN `train_recommender` (top 10 for every user), then the whole
`mine_paths` stage timed (reading artifacts, graph, mining, rendering, quality metrics):
- ml-100k prepared by `tasks.data.prepare_data` (Freebase KG + genres);
- a synthetic ML-32M-shaped set: N ratings of active users (Zipf item popularity, 20 genres,
  free-text tags with Zipf use as `has_tag`, tag `similar_to` tag edges), leave-last-out split.
Goal from issue 3: >= 2,000 recommendations/s on 2 cores and >= 95% with at least one path.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from recxplain.config import DataConfig, PathsConfig, RecommenderConfig
from tasks.data import prepare_data
from tasks.paths import mine_paths
from tasks.recommend import train_recommender


def synthetic_ml32m(folder: Path, ratings: int, seed: int = 0) -> None:
    """Write an ML-32M-shaped prepare_data folder with `ratings` ratings (leave-last-out split)."""
    rng = np.random.default_rng(seed)
    n_users, n_items, n_tags = max(ratings // 150, 10), max(ratings // 50, 50), 2000
    item_p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item_p /= item_p.sum()
    per_user = np.maximum(20, rng.lognormal(np.log(ratings / n_users) - 0.5, 1.0, n_users)).astype(int)
    per_user = np.maximum(20, (per_user * ratings / per_user.sum()).astype(int))
    # Draw ~30% more (user, item) pairs than wanted: popular items repeat and duplicates are
    # dropped; then keep exactly `ratings` of the distinct pairs.
    users = np.repeat(np.arange(1, n_users + 1), (per_user * 1.3).astype(int))
    items = rng.choice(n_items, size=len(users), p=item_p) + 1
    frame = pl.DataFrame({"user_id": users, "item_id": items}).unique(maintain_order=True)
    frame = frame.sample(n=min(ratings, frame.height), seed=seed)
    frame = frame.with_columns(
        rating=pl.Series(rng.integers(1, 11, frame.height) / 2.0),
        timestamp=pl.Series(1_500_000_000 + rng.integers(0, 10**8, frame.height)),
    ).sort("user_id", "timestamp")
    pos_from_end = pl.int_range(pl.len()).over("user_id").reverse().over("user_id")
    frame = frame.with_columns(
        split=pl.when(pos_from_end == 0)
        .then(pl.lit("test"))
        .when(pos_from_end == 1)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
    )
    frame.write_parquet(folder / "interactions.parquet")
    genres = np.array(["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
                       "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                       "War", "Western", "Other"])
    item_genres = [list(rng.choice(genres, rng.integers(1, 4), replace=False)) for _ in range(n_items)]
    pl.DataFrame(
        {"item_id": np.arange(1, n_items + 1), "title": [f"Movie {i}" for i in range(1, n_items + 1)],
         "year": rng.integers(1950, 2024, n_items), "genres": item_genres}
    ).write_parquet(folder / "items.parquet")
    tag_p = 1.0 / np.arange(1, n_tags + 1)
    tag_p /= tag_p.sum()
    heads, tails = [], []
    for item in range(1, n_items + 1):
        k = int(rng.poisson(3 + 20 * item_p[item - 1] * n_items / 50)) if rng.random() < 0.7 else 0
        if k:
            heads += [f"movie:{item}"] * k
            tails += [f"tag:word{t}" for t in rng.choice(n_tags, k, p=tag_p)]
    kg = pl.concat(
        [
            pl.DataFrame({"head": [f"movie:{i + 1}" for i, g in enumerate(item_genres) for _ in g], "relation": "genre",
                          "tail": [f"genre:{x}" for g in item_genres for x in g]}),
            pl.DataFrame({"head": heads, "relation": "has_tag", "tail": tails}),
            pl.DataFrame({"head": [f"tag:word{t}" for t in range(n_tags) for _ in range(5)], "relation": "similar_to",
                          "tail": [f"tag:word{s}" for s in rng.integers(0, n_tags, n_tags * 5)]}),
        ]
    ).unique(maintain_order=True)
    kg.write_parquet(folder / "kg.parquet")
    pl.DataFrame({"user_id": np.arange(1, n_users + 1)}).write_parquet(folder / "users.parquet")


def run(name: str, data: Path, tmp: Path, paths_cfg: PathsConfig) -> None:
    rec_dir, out = tmp / f"{name}-rec", tmp / f"{name}-paths"
    rec_dir.mkdir()
    out.mkdir()
    ratings = pl.read_parquet(data / "interactions.parquet").height
    start = time.perf_counter()
    train_recommender(rec_dir, recommender=RecommenderConfig(model="itemknn", top_n=10), data=data)
    rec_s = time.perf_counter() - start
    start = time.perf_counter()
    mine_paths(out, paths=paths_cfg, data=data, recommender=rec_dir)
    seconds = time.perf_counter() - start
    q = json.loads((out / "path_quality.json").read_text())
    print(
        f"{name:10} ratings {ratings:>9,} recs {q['recommendations']:>7,}  train_recommender {rec_s:6.2f}s  "
        f"mine_paths {seconds:6.2f}s = {q['recommendations'] / seconds:7,.0f} recs/s  coverage {q['coverage']:.4f}  "
        f"paths/rec {q['paths_per_recommendation']:.2f}  LIR {q['LIR']:.3f} SEP {q['SEP']:.3f} ETD {q['ETD']:.3f}"
    )
    print(f"{'':10} chosen patterns: {q['patterns_of_chosen']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic-ratings", type=int, default=1_000_000)
    parser.add_argument("--skip-ml100k", action="store_true")
    args = parser.parse_args()
    cfg = PathsConfig()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.skip_ml100k:
            data = tmp / "ml-100k"
            data.mkdir()
            prepare_data(data, data=DataConfig())
            run("ml-100k", data, tmp, cfg)
        if args.synthetic_ratings:
            data = tmp / "synthetic"
            data.mkdir()
            synthetic_ml32m(data, args.synthetic_ratings)
            run("synthetic", data, tmp, cfg)


if __name__ == "__main__":
    main()
