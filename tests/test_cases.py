"""build_cases on a toy dataset with hand-known answers; user sampling."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from recxplain.config import CasesConfig
from recxplain.schemas import read_cases
from tasks.cases import build_cases, sample_users

TITLES = {
    1: "Toy Story", 2: "Babe", 3: "Heat", 4: "Fargo", 5: "The Lion King", 6: "Star Wars", 7: "Alien", 8: "Clueless",
}
GENRES = {1: ["Animation", "Comedy"], 2: ["Comedy", "Drama"], 3: ["Action"], 4: ["Crime"], 5: ["Animation"],
          6: ["Sci-Fi", "War"], 7: ["Horror"], 8: ["Comedy"]}
CONFIG = CasesConfig(train_users=3, eval_users=2, items_per_user=1, history_length=2, neighbours_per_case=2,
                     paths_per_case=2, seed=7)


def write_toy(root: Path) -> tuple[Path, Path, Path]:
    data, recommender, paths = root / "data", root / "recommender", root / "paths"
    for folder in (data, recommender, paths):
        folder.mkdir()
    pl.DataFrame({"item_id": list(TITLES), "title": list(TITLES.values()), "year": [1995] * 8,
                  "genres": list(GENRES.values())}).write_parquet(data / "items.parquet")
    pl.DataFrame({"user_id": [1, 2, 3, 4, 5, 6, 7], "age": [24, 53, 23, 24, 33, 42, 30],
                  "gender": ["M", "F", "M", "M", "F", "M", "F"],
                  "occupation": ["technician", None, "writer", "technician", "other", "executive", "artist"],
                  "zip_code": ["85711"] * 7}).write_parquet(data / "users.parquet")
    rows = [  # user, item, rating, timestamp, split
        (1, 1, 5.0, 10, "train"), (1, 3, 3.0, 20, "train"), (1, 4, 4.0, 20, "train"),
        (1, 5, 4.0, 40, "valid"), (1, 6, 5.0, 50, "test"),
    ]
    for user in (2, 3, 4, 5, 6):
        rows += [(user, 1, 4.0, 1, "train"), (user, 3, 2.0, 2, "train"), (user, 7, 3.0, 3, "valid"),
                 (user, 4, 5.0, 4, "test")]
    rows += [(7, 8, 4.0, 1, "test")]  # user 7: no training history
    user, item, rating, ts, split = zip(*rows)
    pl.DataFrame({"user_id": user, "item_id": item, "rating": rating, "timestamp": ts, "split": split}).write_parquet(
        data / "interactions.parquet")
    recs = [(u, r, i, s) for u in (1, 2, 3, 4, 5, 7) for r, i, s in ((1, 2, 0.9), (2, 8, 0.8))]
    user, rank, item, score = zip(*recs)
    pl.DataFrame({"user_id": user, "rank": rank, "item_id": item, "score": score,
                  "model": ["itemknn"] * len(recs)}).write_parquet(recommender / "recommendations.parquet")
    pl.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [2, 2, 2, 2], "neighbour_item_id": [1, 5, 8, 1],
                  "weight": [0.5, 0.7, 0.1, 0.3]}).write_parquet(recommender / "neighbours.parquet")
    pl.DataFrame({
        "user_id": [1, 1, 1], "item_id": [2, 2, 2], "rank": [2, 1, 3], "pattern": ["p2", "p1", "p3"],
        "steps": [["user:1", "rated", "movie:1"]] * 3, "score": [0.5, 0.9, 0.1],
        "text": ["second path", "You rated Toy Story 5/5; it shares the genre Comedy with Babe.", "third path"],
    }).write_parquet(paths / "paths.parquet")
    return data, recommender, paths


def test_build_cases_on_toy_data(tmp_path):
    data, recommender, paths = write_toy(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    build_cases(out, cases=CONFIG, data=data, recommender=recommender, paths=paths)
    train, held_out = read_cases(out / "train.jsonl"), read_cases(out / "eval.jsonl")
    assert (len(train), len(held_out)) == (3, 2)
    train_users, eval_users = {c.user_id for c in train}, {c.user_id for c in held_out}
    assert not train_users & eval_users and train_users | eval_users == {1, 2, 3, 4, 5}  # not 6, 7
    assert {c.split for c in train} == {"train"} and {c.split for c in held_out} == {"eval"}

    case = next(c for c in train + held_out if c.user_id == 1)
    assert case.case_id == "1-2" and case.rank == 1 and case.score == 0.9
    assert case.item.title == "Babe" and case.item.genres == ["Comedy", "Drama"]
    assert case.profile == {"age": 24, "gender": "M", "occupation": "technician"}
    # the last 2 training ratings, oldest first (equal timestamps by item id); not the valid one
    assert [(m.title, m.rating, m.genres) for m in case.history] == [
        ("Heat", 3.0, ["Action"]), ("Fargo", 4.0, ["Crime"]),
    ]
    # neighbours by weight, cut to 2; rated = the user's TRAINING rating (The Lion King is only in valid)
    assert [(n.title, n.weight, n.rated) for n in case.neighbours] == [
        ("The Lion King", 0.7, None), ("Toy Story", 0.5, 5.0),
    ]
    assert [p.pattern for p in case.paths] == ["p1", "p2"]
    assert case.paths[0].text.startswith("You rated Toy Story")
    assert case.next_item.title == "Star Wars"

    other = next(c for c in train + held_out if c.user_id == 2)
    assert other.profile == {"age": 53, "gender": "F"}  # no occupation in the data
    assert other.paths == [] and [n.title for n in other.neighbours] == ["Toy Story"]
    assert other.next_item.title == "Fargo"

    catalogue = json.loads((out / "catalogue.json").read_text())
    assert catalogue["titles"] == sorted(TITLES.values()) and "Sci-Fi" in catalogue["genres"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["with_paths"] == 1 and stats["with_neighbours"] == 2 and stats["with_next_item"] == 5

    again = tmp_path / "again"
    again.mkdir()
    build_cases(again, cases=CONFIG, data=data, recommender=recommender, paths=paths)
    assert (again / "train.jsonl").read_text() == (out / "train.jsonl").read_text()


def test_items_per_user_takes_top_ranks(tmp_path):
    data, recommender, paths = write_toy(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    build_cases(
        out, cases=CONFIG.model_copy(update={"items_per_user": 2}), data=data, recommender=recommender, paths=paths
    )
    cases = read_cases(out / "train.jsonl") + read_cases(out / "eval.jsonl")
    assert len(cases) == 10 and {c.rank for c in cases} == {1, 2}
    assert {c.case_id for c in cases if c.user_id == 1} == {"1-2", "1-8"}


def test_sample_users_is_seeded_disjoint_and_keeps_eval_stable():
    cfg = CasesConfig(train_users=10, eval_users=5, seed=7)
    train, held_out = sample_users(list(range(100)), cfg)
    assert len(train) == 10 and len(held_out) == 5 and not set(train) & set(held_out)
    assert sample_users(list(reversed(range(100))), cfg) == (train, held_out)  # input order is irrelevant
    bigger_train, same_eval = sample_users(list(range(100)), cfg.model_copy(update={"train_users": 30}))
    assert same_eval == held_out and set(train) <= set(bigger_train)
    assert sample_users(list(range(100)), cfg.model_copy(update={"seed": 8})) != (train, held_out)


def test_bad_inputs_fail_clearly(tmp_path):
    data, recommender, paths = write_toy(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match="5 users have recommendations and training history, but .* = 6"):
        build_cases(out, cases=CONFIG.model_copy(update={"train_users": 4}), data=data, recommender=recommender,
                    paths=paths)
    pl.read_parquet(paths / "paths.parquet").drop("text").write_parquet(paths / "paths.parquet")
    with pytest.raises(ValueError, match="paths.parquet: lacks the column 'text'"):
        build_cases(out, cases=CONFIG, data=data, recommender=recommender, paths=paths)
    (recommender / "recommendations.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="recommendations.parquet: missing"):
        build_cases(out, cases=CONFIG, data=data, recommender=recommender, paths=paths)
