"""RecLAIF stage 1, `build_candidate_sets`: per sampled user, the held-out next movie plus M
negatives (uniform, popularity-weighted, or hard negatives from the classic recommender),
shuffled, deterministic by seed. Train users predict their valid item, eval users their test
item. The sampling is recxplain/reclaif/sampling.py; the sets (`CandidateSet`) are read back with
`recxplain.reclaif.read_candidate_sets`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from recxplain.config import ReclaifCandidatesConfig
from recxplain.reclaif import CandidateSet
from recxplain.reclaif.sampling import draw_candidates, negative_order, pick_users
from recxplain.recommenders import load_recommender, read_interactions, recommend
from recxplain.schemas import Movie
from recxplain.stage import ALL, reads


@reads(candidates=ALL)
def build_candidate_sets(out: Path, *, candidates: ReclaifCandidatesConfig, data: Path, recommender: Path) -> None:
    """Write candidates.jsonl (CandidateSet per line, eval sets first) and stats.json.

    The catalogue is the recommender's (movies with a train interaction), so every classic
    baseline can score every negative; the target itself may lie outside it (then no classic
    model can rank it). Negatives are movies the user never interacted with in any split.
    """
    cfg = candidates
    interactions = read_interactions(Path(data))
    items_path = Path(data) / "items.parquet"
    if not items_path.exists():
        raise FileNotFoundError(f"{items_path}: missing (expected the prepare_data output folder)")
    items = pl.read_parquet(items_path)
    movies = {
        row["item_id"]: Movie(item_id=row["item_id"], title=row["title"], year=row["year"], genres=row["genres"] or [])
        for row in items.select("item_id", "title", "year", "genres").iter_rows(named=True)
    }
    titles = {item: movie.title for item, movie in movies.items()}
    unknown = set(interactions["item_id"].unique().to_list()) - movies.keys()
    if unknown:
        raise ValueError(f"{Path(data) / 'interactions.parquet'}: items {sorted(unknown)[:5]} are not in {items_path}")
    rec = load_recommender(Path(recommender) / "model")
    catalogue = rec.item_ids
    popularity = rec.popularity

    ordered = interactions.sort("user_id", "timestamp", "item_id")
    train = ordered.filter(pl.col("split") == "train")
    first = {
        split: dict(ordered.filter(pl.col("split") == split).unique("user_id", keep="first", maintain_order=True)
                    .select("user_id", "item_id").iter_rows())
        for split in ("valid", "test")
    }
    with_history = set(train["user_id"].unique().to_list())
    eval_users, train_users = pick_users(with_history & first["test"].keys(), with_history & first["valid"].keys(), cfg)
    chosen = eval_users + train_users

    rows = ordered.filter(pl.col("user_id").is_in(chosen))
    seen = {u: set(g["item_id"].to_list()) for (u,), g in rows.group_by("user_id")}
    by_user = {u: g for (u,), g in rows.group_by("user_id")}
    hard_top: dict[int, np.ndarray] = {}
    if cfg.sampler == "hard":
        extra = max((len(seen[u]) for u in chosen), default=0)
        top = recommend(rec, cfg.hard_pool + extra + 1, user_ids=chosen)
        for (u,), g in top.sort("user_id", "rank").group_by("user_id", maintain_order=True):
            ids = [i for i in g["item_id"].to_list() if i not in seen[u]][: cfg.hard_pool]
            hard_top[u] = rec.item_cols(ids)

    sets, short = [], 0
    for split, users in (("eval", eval_users), ("train", train_users)):
        for user in users:
            frame = by_user[user]
            target = first["test" if split == "eval" else "valid"][user]
            before = (
                frame.filter(pl.col("split") == "train")
                if split == "train"
                else frame.filter(pl.col("split") != "test")
            )
            history = before["item_id"].to_list()[-cfg.history_length:]
            rng = np.random.default_rng([cfg.seed, user])  # per user: stable when other users change
            pool_mask = np.ones(len(catalogue), bool)
            seen_cols = rec.item_cols(list(seen[user]))
            pool_mask[seen_cols[seen_cols >= 0]] = False
            pool = np.flatnonzero(pool_mask)
            order = negative_order(cfg.sampler, pool, rng, popularity=popularity, hard=hard_top.get(user))
            ids, drawn = draw_candidates(target, catalogue[order], titles, cfg.negatives, rng)
            short += drawn < cfg.negatives
            sets.append(CandidateSet(
                set_id=f"{split}-{user}", split=split, user_id=user, history=[movies[i] for i in history],
                candidates=[movies[i] for i in ids], target=movies[target],
            ))
    with open(Path(out) / "candidates.jsonl", "w") as fh:
        for s in sets:
            fh.write(s.model_dump_json() + "\n")
    in_catalogue = set(catalogue.tolist())
    stats = {
        "sampler": cfg.sampler,
        "negatives": cfg.negatives,
        "sets": {"eval": len(eval_users), "train": len(train_users)},
        "sets_short_of_negatives": int(short),
        "targets_outside_catalogue": sum(s.target.item_id not in in_catalogue for s in sets),
        "mean_history": round(float(np.mean([len(s.history) for s in sets])), 2),
        "mean_target_position": round(float(np.mean([[c.item_id for c in s.candidates].index(s.target.item_id) + 1
                                                     for s in sets])), 2),
    }
    (Path(out) / "stats.json").write_text(json.dumps(stats, indent=2))
