"""Scoring through the `Recommender` interface: candidates, top-N, recommendations, item neighbours.

Ties: catalogue columns are ordered by train popularity (most popular first, then item_id), and
every ranking here breaks score ties by that order, so top-N lists and the ranks the metrics use
agree exactly, and item-KNN users with few non-zero scores get popular items after their scored
items.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recxplain.recommenders.base import BLOCK_CELLS, Recommender
from recxplain.recommenders.registry import as_recommender


def score_candidates(model: Recommender | Path | str, user_ids, candidate_item_ids) -> np.ndarray:
    """Score candidate items for users with any saved model (item-KNN, ALS, BPR, popular).

    Args:
        model: a `Recommender` or a folder written by `train_recommender` (stage or `model/`).
        user_ids: n user ids; each must have train interactions (else ValueError naming them).
        candidate_item_ids: either one 1-D list of m items scored for every user, or an n x m array
            with each user's own candidates (e.g. 1 held-out positive + 19 sampled negatives).

    Returns:
        float64 array n x m of the model's scores (higher is better); items outside the model's
        catalogue (no train interaction) get -inf. Already-seen items are NOT masked: the caller
        decides what a candidate set contains. Scores are comparable within a user only.
    """
    rec = as_recommender(model)
    rows = rec.user_rows(user_ids)
    cand = np.asarray(candidate_item_ids, dtype=np.int64)
    if cand.ndim == 1:
        cand = np.broadcast_to(cand, (len(rows), len(cand)))
    if cand.ndim != 2 or cand.shape[0] != len(rows):
        raise ValueError(f"candidate_item_ids: expected shape (m,) or ({len(rows)}, m), got {cand.shape}")
    cols = rec.item_cols(cand.ravel()).reshape(cand.shape)
    out = np.full(cand.shape, -np.inf)
    for start, stop in blocks(len(rows), len(rec.item_ids)):
        scores = rec.score(rows[start:stop])
        c = cols[start:stop]
        out[start:stop] = np.where(c >= 0, np.take_along_axis(scores, np.maximum(c, 0), axis=1), -np.inf)
    return out


def blocks(n_rows: int, n_cols: int):
    """(start, stop) row ranges whose dense score blocks hold about BLOCK_CELLS floats."""
    size = max(1, BLOCK_CELLS // max(n_cols, 1))
    for start in range(0, n_rows, size):
        yield start, min(start + size, n_rows)


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and scores of each row's n best, ties broken by lower column index.

    Rows with fewer than n finite scores are padded with -inf entries (the caller drops them).
    """
    n = min(n, scores.shape[1])
    threshold = -np.partition(-scores, n - 1, axis=1)[:, n - 1 : n]
    chosen = scores > threshold
    need = n - chosen.sum(axis=1)
    tied = scores == threshold
    # usually exactly `need` items tie at the threshold; only rows with more ties need the
    # column-order cut (cumsum over the row), e.g. item-KNN users whose tail scores are all 0
    extra = np.flatnonzero(tied.sum(axis=1) > need)
    chosen |= tied
    if len(extra):
        rows = tied[extra]
        chosen[extra] = (scores[extra] > threshold[extra]) | (rows & (np.cumsum(rows, axis=1) <= need[extra, None]))
    cols = np.nonzero(chosen)[1].reshape(len(scores), n)
    vals = np.take_along_axis(scores, cols, axis=1)
    order = np.lexsort((cols, -vals), axis=1)
    return np.take_along_axis(cols, order, axis=1), np.take_along_axis(vals, order, axis=1)


def recommend(
    model: Recommender | Path | str, n: int, user_ids=None, exclude: sp.csr_matrix | None = None
) -> pl.DataFrame:
    """Top-n recommendations (user_id, rank, item_id, score, model), train items filtered.

    `user_ids` defaults to every user with train interactions. `exclude` (users x catalogue, in
    `rec.user_ids` row order) adds items to filter; train items are always filtered.
    """
    rec = as_recommender(model)
    rows = np.arange(len(rec.user_ids)) if user_ids is None else rec.user_rows(user_ids)
    mask = rec.user_items if exclude is None else (rec.user_items + exclude)
    frames = []
    for start, stop in blocks(len(rows), len(rec.item_ids)):
        block = rows[start:stop]
        scores = rec.score(block)
        seen = mask[block].tocoo()
        scores[seen.row, seen.col] = -np.inf
        cols, vals = top_n(scores, n)
        keep = np.isfinite(vals)
        frames.append(
            pl.DataFrame(
                {
                    "user_id": np.repeat(rec.user_ids[block], cols.shape[1])[keep.ravel()],
                    "rank": np.tile(np.arange(1, cols.shape[1] + 1), len(block))[keep.ravel()],
                    "item_id": rec.item_ids[cols[keep]],
                    "score": vals[keep],
                },
                schema={"user_id": pl.Int64, "rank": pl.Int64, "item_id": pl.Int64, "score": pl.Float64},
            )
        )
    return pl.concat(frames).with_columns(model=pl.lit(rec.model))


def item_neighbours(model: Recommender | Path | str, n: int | None = None) -> pl.DataFrame:
    """Each catalogue item's nearest items by cosine of train interactions (the item-KNN graph).

    Returns item_id, neighbour_item_id, similarity, rank; at most min(n, k) per item (k: the
    recommender's `k`, the neighbours the model keeps). Paths mining uses it for `similar_to`.
    """
    rec = as_recommender(model)
    sim = rec.similarity.tocoo()
    frame = pl.DataFrame(
        {
            "item_id": rec.item_ids[sim.row],
            "neighbour_item_id": rec.item_ids[sim.col],
            "similarity": sim.data.astype(np.float64),
        }
    ).with_columns(rank=pl.col("similarity").rank("ordinal", descending=True).over("item_id").cast(pl.Int64))
    if n is not None:
        frame = frame.filter(pl.col("rank") <= n)
    return frame.sort("item_id", "rank")


def item_affinity(model: Recommender | Path | str, item_a, item_b) -> np.ndarray:
    """Cosine of the recommender's item representations for aligned item pairs (-1..1).

    ALS/BPR: cosine of the item factors. Item-KNN and popular: exact cosine of the items' train
    interaction vectors (the similarity item-KNN truncates to k). Pairs with an item outside the
    catalogue get 0.
    """
    rec = as_recommender(model)
    a, b = rec.item_cols(item_a), rec.item_cols(item_b)
    valid = (a >= 0) & (b >= 0)
    return np.where(valid, rec.affinity(np.maximum(a, 0), np.maximum(b, 0)), 0.0)


def user_item_neighbours(rec: Recommender, recs: pl.DataFrame, n: int) -> pl.DataFrame:
    """The intrinsic explanation of each recommendation: the user's rated items behind it.

    For item-KNN a rated item j contributes similarity[j, i] to the score of i, and the weights
    returned are exactly those summands. For the other models the weight is the cosine of the
    interaction vectors of j and i (not truncated to k), so every model has neighbours.
    Returns user_id, item_id, neighbour_item_id, weight, rank (1 = largest weight), at most `n`
    per recommendation, only positive weights.
    """
    schema = {
        "user_id": pl.Int64, "item_id": pl.Int64, "neighbour_item_id": pl.Int64, "weight": pl.Float64, "rank": pl.Int64,
    }
    if recs.height == 0:
        return pl.DataFrame(schema=schema)
    rows = rec.user_rows(recs["user_id"].to_numpy())
    cols = rec.item_cols(recs["item_id"].to_numpy())
    frames = []
    chunk = max(1, BLOCK_CELLS // max(len(rec.item_ids), 1))
    for start in range(0, len(rows), chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        rated = rec.user_items[r]
        contrib = rated.multiply(rec.neighbour_weights(c)).tocsr()
        contrib.eliminate_zeros()
        coo = contrib.tocoo()
        frames.append(
            pl.DataFrame(
                {
                    "pos": (coo.row + start).astype(np.int64),
                    "neighbour": coo.col.astype(np.int64),
                    "weight": coo.data.astype(np.float64),
                }
            )
        )
    table = pl.concat(frames).filter(pl.col("weight") > 0)
    table = (
        table.sort(["pos", "weight", "neighbour"], descending=[False, True, False])
        .with_columns(rank=pl.int_range(1, pl.len() + 1).over("pos").cast(pl.Int64))
        .filter(pl.col("rank") <= n)
    )
    pos = table["pos"].to_numpy()
    return pl.DataFrame(
        {
            "user_id": recs["user_id"].to_numpy()[pos],
            "item_id": recs["item_id"].to_numpy()[pos],
            "neighbour_item_id": rec.item_ids[table["neighbour"].to_numpy()],
            "weight": table["weight"].to_numpy(),
            "rank": table["rank"].to_numpy(),
        },
        schema=schema,
    )
