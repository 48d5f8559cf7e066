"""recxplain/recommenders/ and the train_recommender stage on a toy dataset whose similarities,
scores and metrics are computed by hand.

Toy train matrix (users 10, 20, 30, 40 x items 1..4):
    item 1: users 10, 20          item 3: users 20, 30, 40
    item 2: users 10, 20, 30      item 4: user 40
Cosines: (1,2) = 2/sqrt(6) = .8165, (1,3) = 1/sqrt(6) = .4082, (2,3) = 2/3, (3,4) = 1/sqrt(3)
= .5774, others 0. With k = 2 each item keeps: 1 -> {2, 3}, 2 -> {1, 3}, 3 -> {2, 4}, 4 -> {3}.
"""

import json
import math
import os

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from recxplain.config import RecommenderConfig
from recxplain.recommenders import (
    fit_recommender,
    item_affinity,
    item_neighbours,
    load_recommender,
    ranks_to_metrics,
    recommend,
    score_candidates,
    top_n,
)
from tasks.recommend import train_recommender

os.environ.setdefault("HF_HUB_OFFLINE", "1")

S12, S13, S23, S34 = 2 / math.sqrt(6), 1 / math.sqrt(6), 2 / 3, 1 / math.sqrt(3)

TRAIN = [(10, 1), (10, 2), (20, 1), (20, 2), (20, 3), (30, 2), (30, 3), (40, 3), (40, 4)]
VALID = [(10, 3), (20, 4), (30, 1), (40, 1)]
TEST = [(10, 4), (30, 5), (40, 2)]  # item 5 is never trained: a miss for every model


def _interactions() -> pl.DataFrame:
    rows = []
    for split, pairs in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        for t, (u, i) in enumerate(pairs):
            rows.append((u, i, 4.0, 1000 * ("train", "valid", "test").index(split) + t, split))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "rating", "timestamp", "split"], orient="row")


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _interactions().write_parquet(folder / "interactions.parquet")
    pl.DataFrame(
        {"item_id": [1, 2, 3, 4, 5], "title": list("ABCDE"), "year": [1990] * 5, "genres": [["Drama"]] * 5}
    ).write_parquet(folder / "items.parquet")
    return folder


def _train():
    return _interactions().filter(pl.col("split") == "train")


def test_itemknn_similarity_scores_and_neighbours_match_hand_computation():
    rec = fit_recommender(RecommenderConfig(model="itemknn", k=2), _train())
    assert rec.item_ids.tolist() == [2, 3, 1, 4]  # catalogue ordered by popularity, then id
    sim = {
        (int(a), int(b)): w
        for a, b, w in item_neighbours(rec).select("item_id", "neighbour_item_id", "similarity").iter_rows()
    }
    assert sim == pytest.approx(
        {(1, 2): S12, (1, 3): S13, (2, 1): S12, (2, 3): S23, (3, 2): S23, (3, 4): S34, (4, 3): S34}, abs=1e-6
    )

    recs = recommend(rec, 2)
    got = {(u, r): (i, s) for u, r, i, s in recs.select("user_id", "rank", "item_id", "score").iter_rows()}
    assert got[(10, 1)] == (3, pytest.approx(S13 + S23, abs=1e-6))  # 1 -> 3 and 2 -> 3
    assert got[(10, 2)] == (4, 0.0)
    assert got[(30, 1)] == (1, pytest.approx(S12, abs=1e-6))  # only 2 -> 1; 3 does not keep 1
    assert got[(30, 2)] == (4, pytest.approx(S34, abs=1e-6))
    assert got[(40, 1)] == (2, pytest.approx(S23, abs=1e-6))
    assert got[(20, 1)] == (4, pytest.approx(S34, abs=1e-6)) and (20, 2) not in got  # nothing else unseen
    train = set(TRAIN)
    assert not any((u, i) in train for u, i in recs.select("user_id", "item_id").iter_rows())


def test_itemknn_neighbours_are_the_summands_of_the_score():
    from recxplain.recommenders import user_item_neighbours

    rec = fit_recommender(RecommenderConfig(model="itemknn", k=2), _train())
    recs = recommend(rec, 2)
    nb = user_item_neighbours(rec, recs, 10)
    row = nb.filter((pl.col("user_id") == 10) & (pl.col("item_id") == 3)).sort("rank")
    assert row["neighbour_item_id"].to_list() == [2, 1]
    assert row["weight"].to_list() == pytest.approx([S23, S13], abs=1e-6)
    sums = nb.group_by("user_id", "item_id").agg(pl.col("weight").sum()).join(recs, on=["user_id", "item_id"])
    assert sums["weight"].to_numpy() == pytest.approx(sums["score"].to_numpy(), abs=1e-6)
    # at most n per recommendation
    assert user_item_neighbours(rec, recs, 1).group_by("user_id", "item_id").len()["len"].max() == 1


def test_non_knn_models_get_cosine_neighbours():
    from recxplain.recommenders import user_item_neighbours

    rec = fit_recommender(RecommenderConfig(model="popular", k=2), _train())
    recs = pl.DataFrame({"user_id": [40], "item_id": [1], "rank": [1], "score": [2.0], "model": ["popular"]})
    nb = user_item_neighbours(rec, recs, 10)  # user 40 rated 3 and 4; cos(3,1) = .4082, cos(4,1) = 0
    assert nb["neighbour_item_id"].to_list() == [3]
    assert nb["weight"].to_list() == pytest.approx([S13], abs=1e-6)


def test_popular_ranks_by_train_counts_with_id_tiebreak():
    rec = fit_recommender(RecommenderConfig(model="popular", k=2), _train())
    recs = recommend(rec, 3, user_ids=[40])
    assert recs["item_id"].to_list() == [2, 1]  # 3 and 4 seen; 2 (3 ratings) before 1 (2)
    assert recs["score"].to_list() == [3.0, 2.0]


def test_top_n_breaks_ties_by_column_order_and_pads_with_minus_inf():
    cols, vals = top_n(np.array([[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 5.0, -np.inf]]), 3)
    assert cols.tolist() == [[1, 2, 0], [2, 0, 1]]
    cols, vals = top_n(np.array([[2.0, -np.inf, -np.inf]]), 2)
    assert cols[0, 0] == 0 and vals[0, 1] == -np.inf


def test_ranks_to_metrics_hand_computed():
    m = ranks_to_metrics(np.array([1.0, 3.0, np.inf]), [1, 3])
    assert m["HR@1"] == pytest.approx(1 / 3)
    assert m["HR@3"] == pytest.approx(2 / 3)
    assert m["NDCG@3"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["MRR@3"] == pytest.approx((1 + 1 / 3) / 3)
    assert m["Precision@3"] == pytest.approx((1 / 3 + 1 / 3) / 3)
    assert m["Recall@3"] == pytest.approx(2 / 3)
    # one user with two positives at ranks 2 and 5
    m = ranks_to_metrics([np.array([2.0, 5.0])], [5])
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(6)) / (1 + 1 / math.log2(3)))
    assert m["Precision@5"] == pytest.approx(0.4)
    assert m["Recall@5"] == pytest.approx(1.0)
    assert m["MRR@5"] == pytest.approx(0.5)


def test_stage_writes_artifacts_and_full_ranking_metrics(data_dir, tmp_path):
    out = tmp_path / "rec"
    out.mkdir()
    cfg = RecommenderConfig(model="itemknn", k=2, top_n=2, eval_ks=[1, 3], sampled_negatives=3)
    train_recommender(out, recommender=cfg, data=data_dir)
    recs = pl.read_parquet(out / "recommendations.parquet")
    assert recs.columns == ["user_id", "rank", "item_id", "score", "model"]
    assert set(recs["model"]) == {"itemknn"} and recs["user_id"].n_unique() == 4
    assert set(pl.read_parquet(out / "neighbours.parquet").columns) >= {
        "user_id", "item_id", "neighbour_item_id", "weight",
    }
    summary = json.loads((out / "ranking_metrics.json").read_text())
    # valid: user 10 ranks item 3 first, 20 item 4 first, 30 item 1 first; user 40 ranks item 1
    # second (2 scores .667, 1 scores 0) -> HR@1 = 3/4, MRR@3 = (1 + 1 + 1 + 1/2) / 4
    valid = summary["valid"]["full"]
    assert valid["HR@1"] == pytest.approx(0.75) and valid["MRR@3"] == pytest.approx(0.875)
    # test (valid items excluded): 10 -> item 4 is its only candidate (rank 1); 30 -> item 5 never
    # trained (miss); 40 -> item 2 ranks first (its valid item 1 excluded) -> HR@1 = 2/3
    test = summary["test"]["full"]
    assert test["HR@1"] == pytest.approx(2 / 3)
    assert summary["users_without_train"] == {"valid": 0, "test": 0}
    table = pl.read_parquet(out / "ranking_metrics.parquet")
    assert set(table["protocol"]) == {"full", "sampled"} and set(table["split"]) == {"valid", "test"}
    assert {"HR", "NDCG", "Precision", "Recall", "MRR", "Coverage"} <= set(table["metric"])
    # sampled candidates: each user has at most 1 unseen item, so K=3 >= 1 + negatives: every
    # trained positive is a hit; item 5 (untrained) stays a miss
    assert summary["valid"]["sampled"]["HR@3"] == 1.0
    assert summary["test"]["sampled"]["HR@3"] == pytest.approx(2 / 3)

    loaded = load_recommender(out)
    scores = score_candidates(loaded, [10, 30], [3, 4, 5])
    assert scores[0, :2] == pytest.approx([S13 + S23, 0.0], abs=1e-6) and scores[0, 2] == -np.inf
    per_user = score_candidates(out / "model", [10, 30], [[3, 4], [1, 4]])
    assert per_user[1] == pytest.approx([S12, S34], abs=1e-6)


@pytest.mark.parametrize("model", ["als", "bpr"])
def test_factor_models_recommend_unseen_and_reload_identically(model, tmp_path):
    from recxplain.recommenders import save_recommender

    rec = fit_recommender(RecommenderConfig(model=model, k=2, factors=4, iterations=5), _train())
    recs = recommend(rec, 2)
    assert not any((u, i) in set(TRAIN) for u, i in recs.select("user_id", "item_id").iter_rows())
    user = rec.user_ids[0]
    expected = rec.user_factors[0] @ rec.item_factors[rec.item_cols([3, 4])].T
    assert score_candidates(rec, [user], [3, 4])[0] == pytest.approx(expected, rel=1e-5)
    save_recommender(rec, tmp_path / "m")
    again = load_recommender(tmp_path / "m")
    assert score_candidates(again, [user], [3, 4]) == pytest.approx(score_candidates(rec, [user], [3, 4]))
    a = item_affinity(rec, [1], [1])
    assert a == pytest.approx([1.0], abs=1e-5)


def test_bad_input_errors(data_dir, tmp_path):
    with pytest.raises(ValidationError):
        RecommenderConfig(model="svd")
    with pytest.raises(ValueError, match="k=4 must be smaller"):
        fit_recommender(RecommenderConfig(k=4), _train())
    rec = fit_recommender(RecommenderConfig(k=2), _train())
    with pytest.raises(ValueError, match=r"\[99\] have no train interactions"):
        score_candidates(rec, [99], [1])
    with pytest.raises(FileNotFoundError, match="interactions.parquet"):
        train_recommender(tmp_path, recommender=RecommenderConfig(), data=tmp_path / "nowhere")
    bad = data_dir / "interactions.parquet"
    _interactions().with_columns(split=pl.lit("holdout")).write_parquet(bad)
    with pytest.raises(ValueError, match="holdout"):
        train_recommender(tmp_path, recommender=RecommenderConfig(), data=data_dir)
