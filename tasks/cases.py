"""build_cases: one explanation case per (sampled user, recommended item).

A case (`recxplain.schemas.Case`) holds everything an explainer may use: the user's profile, the
last L rated movies of their training history, the recommended movie with its rank and score, the
item-KNN neighbours behind it (the intrinsic explanation, joined to titles and to the user's own
ratings) and the top knowledge-graph paths (the post-hoc explanation, already rendered as text by
mine_paths), plus the user's held-out test movie (`next_item`, RecLAIF's relevance reference).

Users are sampled once per seed from those who have recommendations and training history: a
seeded permutation, of which the first `eval_users` become the held-out evaluation set and the
next `train_users` the training set. Taking eval first keeps the evaluation cases unchanged when
only the training sample grows.

Outputs in `out`: `train.jsonl`, `eval.jsonl` (JSONL of Case), `catalogue.json` (every title and
genre of the dataset: the judge's faithfulness check needs to recognise titles that are NOT in a
case's evidence) and `stats.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from recxplain.config import CasesConfig
from recxplain.schemas import Case, Movie, Neighbour, PathEvidence, RatedMovie, check_columns, write_cases
from recxplain.stage import ALL, reads

PROFILE_FIELDS = ("age", "gender", "occupation")
CATALOGUE = "catalogue.json"


def _read(folder: Path, name: str, kind: str | None) -> pl.DataFrame:
    path = Path(folder) / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (expected the {kind or name} artifact)")
    frame = pl.read_parquet(path)
    if kind:
        check_columns(frame, kind, path)
    return frame


def sample_users(eligible: list[int], cases: CasesConfig) -> tuple[list[int], list[int]]:
    """(train users, eval users): disjoint, deterministic by `cases.seed`, eval drawn first."""
    eligible = sorted(eligible)
    needed = cases.train_users + cases.eval_users
    if len(eligible) < needed:
        raise ValueError(
            f"cases: {len(eligible)} users have recommendations and training history, but "
            f"cases.train_users + cases.eval_users = {needed}; lower them"
        )
    order = np.random.default_rng(cases.seed).permutation(len(eligible))
    picked = [eligible[i] for i in order[:needed]]
    return sorted(picked[cases.eval_users :]), sorted(picked[: cases.eval_users])


@reads(cases=ALL)
def build_cases(out: Path, *, cases: CasesConfig, data: Path, recommender: Path, paths: Path) -> None:
    """Write train.jsonl / eval.jsonl of explanation cases, catalogue.json and stats.json."""
    interactions = _read(data, "interactions.parquet", "interactions")
    items = _read(data, "items.parquet", "items")
    users = _read(data, "users.parquet", "users")
    recommendations = _read(recommender, "recommendations.parquet", "recommendations")
    neighbours_path = Path(recommender) / "neighbours.parquet"
    neighbours = _read(recommender, "neighbours.parquet", "neighbours") if neighbours_path.exists() else None
    path_rows = _read(paths, "paths.parquet", "paths")
    if "text" not in path_rows.columns:
        raise ValueError(f"{Path(paths) / 'paths.parquet'}: lacks the column 'text' (readable path)")

    train = interactions.filter(pl.col("split") == "train")
    eligible = set(recommendations["user_id"].unique().to_list()) & set(train["user_id"].unique().to_list())
    train_users, eval_users = sample_users(list(eligible), cases)
    split_of = {u: "train" for u in train_users} | {u: "eval" for u in eval_users}
    chosen = pl.Series("user_id", sorted(split_of), dtype=pl.Int64)

    titles = dict(zip(items["item_id"].to_list(), items["title"].to_list()))
    movies = {
        row["item_id"]: Movie(item_id=row["item_id"], title=row["title"], year=row["year"], genres=row["genres"] or [])
        for row in items.select("item_id", "title", "year", "genres").iter_rows(named=True)
    }

    def movie(item_id: int, source: str) -> Movie:
        if item_id not in movies:
            raise ValueError(f"{source}: item {item_id} is not in {Path(data) / 'items.parquet'}")
        return movies[item_id]

    history = (
        train.filter(pl.col("user_id").is_in(chosen.implode()))
        .sort("user_id", "timestamp", "item_id")
        .group_by("user_id", maintain_order=True)
        .tail(cases.history_length)
    )
    histories: dict[int, list[RatedMovie]] = {}
    ratings: dict[tuple[int, int], float] = {}
    for row in train.filter(pl.col("user_id").is_in(chosen.implode())).iter_rows(named=True):
        ratings[(row["user_id"], row["item_id"])] = row["rating"]
    for row in history.iter_rows(named=True):
        base = movie(row["item_id"], str(Path(data) / "interactions.parquet")).model_dump()
        histories.setdefault(row["user_id"], []).append(
            RatedMovie(**base, rating=row["rating"], timestamp=row["timestamp"])
        )

    next_items = {
        row["user_id"]: movie(row["item_id"], str(Path(data) / "interactions.parquet"))
        for row in interactions.filter((pl.col("split") == "test") & pl.col("user_id").is_in(chosen.implode()))
        .sort("user_id", "timestamp", "item_id")
        .unique("user_id", keep="first", maintain_order=True)
        .iter_rows(named=True)
    }

    profile_columns = [c for c in PROFILE_FIELDS if c in users.columns]
    profiles = {
        row["user_id"]: {c: row[c] for c in profile_columns if row[c] is not None and row[c] != ""}
        for row in users.filter(pl.col("user_id").is_in(chosen.implode())).iter_rows(named=True)
    }

    recs = (
        recommendations.filter(pl.col("user_id").is_in(chosen.implode()))
        .sort("user_id", "rank")
        .group_by("user_id", maintain_order=True)
        .head(cases.items_per_user)
    )
    pairs = recs.select("user_id", "item_id")

    evidence_neighbours: dict[tuple[int, int], list[Neighbour]] = {}
    if neighbours is not None:
        for row in (
            neighbours.join(pairs, on=["user_id", "item_id"])
            .sort(["user_id", "item_id", "weight", "neighbour_item_id"], descending=[False, False, True, False])
            .group_by("user_id", "item_id", maintain_order=True)
            .head(cases.neighbours_per_case)
            .iter_rows(named=True)
        ):
            key = (row["user_id"], row["item_id"])
            neighbour = row["neighbour_item_id"]
            movie(neighbour, str(neighbours_path))
            evidence_neighbours.setdefault(key, []).append(
                Neighbour(item_id=neighbour, title=titles[neighbour], weight=row["weight"],
                          rated=ratings.get((row["user_id"], neighbour)))
            )

    evidence_paths: dict[tuple[int, int], list[PathEvidence]] = {}
    for row in (
        path_rows.join(pairs, on=["user_id", "item_id"])
        .sort("user_id", "item_id", "rank")
        .group_by("user_id", "item_id", maintain_order=True)
        .head(cases.paths_per_case)
        .iter_rows(named=True)
    ):
        evidence_paths.setdefault((row["user_id"], row["item_id"]), []).append(
            PathEvidence(pattern=row["pattern"], steps=list(row["steps"]), text=row["text"], score=row["score"])
        )

    built: dict[str, list[Case]] = {"train": [], "eval": []}
    for row in recs.iter_rows(named=True):
        user, item = row["user_id"], row["item_id"]
        key = (user, item)
        built[split_of[user]].append(
            Case(
                case_id=f"{user}-{item}",
                split=split_of[user],
                user_id=user,
                profile=profiles.get(user, {}),
                history=histories.get(user, []),
                item=movie(item, str(Path(recommender) / "recommendations.parquet")),
                rank=row["rank"],
                score=row["score"],
                neighbours=evidence_neighbours.get(key, []),
                paths=evidence_paths.get(key, []),
                next_item=next_items.get(user),
            )
        )

    write_cases(built["train"], Path(out) / "train.jsonl")
    write_cases(built["eval"], Path(out) / "eval.jsonl")
    genres = sorted({g for gs in items["genres"].to_list() if gs for g in gs})
    (Path(out) / CATALOGUE).write_text(json.dumps({"titles": sorted(set(titles.values())), "genres": genres}))
    every = built["train"] + built["eval"]
    stats = {
        "train_users": len(train_users),
        "eval_users": len(eval_users),
        "train_cases": len(built["train"]),
        "eval_cases": len(built["eval"]),
        "with_neighbours": sum(bool(c.neighbours) for c in every),
        "with_paths": sum(bool(c.paths) for c in every),
        "with_next_item": sum(c.next_item is not None for c in every),
        "mean_history": round(float(np.mean([len(c.history) for c in every])), 2) if every else 0.0,
    }
    (Path(out) / "stats.json").write_text(json.dumps(stats, indent=2))
