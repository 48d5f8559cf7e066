"""Ranking metrics: full ranking and sampled candidates on the valid and test splits.

Users without train interactions cannot be scored: `ranking_metrics` leaves them out and counts
them (`users_without_train`). A held-out positive outside the catalogue counts as a miss.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from recxplain.recommenders.base import Recommender
from recxplain.recommenders.scoring import blocks, top_n


def ranks_to_metrics(ranks: list[np.ndarray] | np.ndarray, ks: list[int]) -> dict[str, float]:
    """HR, NDCG, Precision, Recall, MRR at each K from 1-based ranks of positives (inf = miss).

    `ranks` is one array per user (its positives' ranks) or a 1-D array with one positive per
    user. Binary relevance: NDCG@K = sum over hits 1/log2(rank+1) / sum_{r<=min(|P|,K)} 1/log2(r+1);
    Precision@K = hits/K; Recall@K = hits/|P|; MRR@K = 1/(best rank) if within K. Means over users.
    """
    if isinstance(ranks, np.ndarray) and ranks.ndim == 1:
        ranks = [np.array([r]) for r in ranks]
    n = len(ranks)
    if n == 0:
        return {f"{m}@{k}": float("nan") for k in ks for m in ("HR", "NDCG", "Precision", "Recall", "MRR")}
    sizes = np.array([len(r) for r in ranks])
    flat = np.concatenate(ranks).astype(np.float64)
    owner = np.repeat(np.arange(n), sizes)
    best = np.full(n, np.inf)
    np.minimum.at(best, owner, flat)
    out = {}
    for k in ks:
        hit = flat <= k
        hits = np.bincount(owner, weights=hit, minlength=n)
        gains = np.where(hit, 1.0 / np.log2(np.where(hit, flat, 1) + 1), 0.0)
        dcg = np.bincount(owner, weights=gains, minlength=n)
        ideal_table = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
        idcg = ideal_table[np.minimum(sizes, k)]
        out[f"HR@{k}"] = float(np.mean(hits > 0))
        out[f"NDCG@{k}"] = float(np.mean(dcg / idcg))
        out[f"Precision@{k}"] = float(np.mean(hits / k))
        out[f"Recall@{k}"] = float(np.mean(hits / sizes))
        out[f"MRR@{k}"] = float(np.mean(np.where(best <= k, 1.0 / best, 0.0)))
    return out


def full_ranks(rec: Recommender, positives: pl.DataFrame, exclude: sp.csr_matrix | None, max_k: int):
    """Rank of each held-out positive among all catalogue items the user has not seen.

    `positives`: user_id, item_id. Candidates are the catalogue minus train items (minus `exclude`,
    users x catalogue in rec row order, e.g. valid items when ranking test). The rank follows
    `top_n`'s order (score, then popularity). Returns (list of rank arrays per user, user ids,
    top-`max_k` columns per user for coverage).
    """
    users = np.unique(positives["user_id"].to_numpy())
    rows = rec.user_rows(users)
    mask = rec.user_items if exclude is None else (rec.user_items + exclude)
    pos_users = positives["user_id"].to_numpy()
    pos_cols = rec.item_cols(positives["item_id"].to_numpy())
    order = np.argsort(pos_users, kind="stable")
    pos_users, pos_cols = pos_users[order], pos_cols[order]
    bounds = np.searchsorted(pos_users, users, side="left"), np.searchsorted(pos_users, users, side="right")
    flat_ranks, tops = [], []
    for start, stop in blocks(len(rows), len(rec.item_ids)):
        block = rows[start:stop]
        scores = rec.score(block)
        seen = mask[block].tocoo()
        scores[seen.row, seen.col] = -np.inf
        tops.append(top_n(scores, max_k)[0])
        lo, hi = bounds[0][start], bounds[1][stop - 1]
        for p_lo in range(lo, hi, stop - start):  # positives in chunks: at most a block of rows
            p_hi = min(p_lo + (stop - start), hi)
            local_row = np.searchsorted(users[start:stop], pos_users[p_lo:p_hi])
            cols = pos_cols[p_lo:p_hi]
            ok = cols >= 0
            s = np.where(ok, scores[local_row, np.maximum(cols, 0)], -np.inf)
            row_scores = scores[local_row]
            better = (row_scores > s[:, None]).sum(axis=1)
            ties_before = ((row_scores == s[:, None]) & (np.arange(scores.shape[1]) < cols[:, None])).sum(axis=1)
            flat_ranks.append(np.where(ok & np.isfinite(s), 1 + better + ties_before, np.inf))
    flat = np.concatenate(flat_ranks) if flat_ranks else np.zeros(0)
    all_ranks = np.split(flat, np.cumsum(bounds[1] - bounds[0])[:-1])
    return all_ranks, users, np.concatenate(tops) if tops else np.zeros((0, max_k), int)


def sampled_ranks(
    rec: Recommender, positives: pl.DataFrame, seen: sp.csr_matrix, negatives: int, seed: int
) -> np.ndarray:
    """Rank of each positive among itself + `negatives` items sampled per positive.

    Negatives are drawn uniformly without replacement from catalogue items the user never
    interacted with (`seen`: users x catalogue, every split); a user with fewer such items uses
    all of them. A positive outside the catalogue is a miss (rank inf). Ties: as `top_n`.
    """
    rng = np.random.default_rng(seed)
    rows = rec.user_rows(positives["user_id"].to_numpy())
    pos_cols = rec.item_cols(positives["item_id"].to_numpy())
    n_items = len(rec.item_ids)
    seen = seen.tocsr()
    seen.sort_indices()
    seen_keys = np.repeat(np.arange(seen.shape[0], dtype=np.int64), np.diff(seen.indptr)) * n_items + seen.indices
    neg = np.full((len(rows), negatives), -1, dtype=np.int64)
    filled = np.zeros(len(rows), dtype=np.int64)
    def is_seen(keys: np.ndarray) -> np.ndarray:  # seen_keys is sorted (CSR rows, sorted indices)
        pos = np.minimum(np.searchsorted(seen_keys, keys), max(len(seen_keys) - 1, 0))
        return seen_keys[pos] == keys if len(seen_keys) else np.zeros(keys.shape, bool)

    positive_unseen = (pos_cols >= 0) & ~is_seen(rows.astype(np.int64) * n_items + np.maximum(pos_cols, 0))
    available = n_items - np.diff(seen.indptr)[rows] - positive_unseen
    target = np.minimum(negatives, np.maximum(available, 0))
    todo = np.nonzero(filled < target)[0]
    while len(todo):
        draw = rng.integers(0, n_items, size=(len(todo), 2 * negatives + 8))
        keys = rows[todo, None].astype(np.int64) * n_items + draw
        bad = is_seen(keys) | (draw == pos_cols[todo, None])
        for t, idx in enumerate(todo):  # few passes; each row merges its valid draws, deduplicated
            fresh = draw[t][~bad[t]]
            have = neg[idx, : filled[idx]]
            merged = np.concatenate([have, fresh])
            _, first = np.unique(merged, return_index=True)
            merged = merged[np.sort(first)][: target[idx]]
            neg[idx, : len(merged)] = merged
            filled[idx] = len(merged)
        todo = todo[filled[todo] < target[todo]]
    ranks = np.full(len(rows), np.inf)
    for start, stop in blocks(len(rows), n_items):
        scores = rec.score(rows[start:stop])
        cols = pos_cols[start:stop]
        s = np.where(cols >= 0, scores[np.arange(stop - start), np.maximum(cols, 0)], -np.inf)
        n = neg[start:stop]
        ns = np.where(n >= 0, np.take_along_axis(scores, np.maximum(n, 0), axis=1), -np.inf)
        better = (ns > s[:, None]) | ((ns == s[:, None]) & (n < cols[:, None]) & (n >= 0))
        ranks[start:stop] = np.where(np.isfinite(s), 1 + better.sum(axis=1), np.inf)
    return ranks


def _split_matrix(rec: Recommender, frame: pl.DataFrame) -> sp.csr_matrix:
    """Users x catalogue binary matrix of `frame`'s (user_id, item_id) pairs known to the model."""
    frame = frame.filter(pl.col("user_id").is_in(rec.user_ids.tolist()))
    rows = rec.user_rows(frame["user_id"].to_numpy())
    cols = rec.item_cols(frame["item_id"].to_numpy())
    ok = cols >= 0
    m = sp.csr_matrix(
        (np.ones(ok.sum(), np.float32), (rows[ok], cols[ok])), shape=(len(rec.user_ids), len(rec.item_ids))
    )
    m.data[:] = 1.0
    return m


def ranking_metrics(
    rec: Recommender, interactions: pl.DataFrame, ks: list[int], negatives: int, seed: int, n_catalogue: int
) -> tuple[pl.DataFrame, dict]:
    """Full-ranking and sampled-candidates metrics on the valid and test splits.

    Full ranking: each user with held-out items ranks them among all catalogue items outside
    their train items (for test, also outside their valid items). Sampled: each held-out
    positive against `negatives` sampled unseen items (RecLAIF's 1 + 19 candidates). Item
    coverage@K: share of the `n_catalogue` items that appear in some evaluated user's top K.
    Returns the long table (split, protocol, metric, k, value, n) and a nested summary dict.
    """
    model_users = set(rec.user_ids.tolist())
    seen_all = _split_matrix(rec, interactions)
    valid = interactions.filter(pl.col("split") == "valid").select("user_id", "item_id")
    rows, summary = [], {"model": rec.model, "users_without_train": {}}
    for split in ("valid", "test"):
        held = interactions.filter(pl.col("split") == split).select("user_id", "item_id")
        unknown = held.filter(~pl.col("user_id").is_in(list(model_users)))["user_id"].n_unique()
        summary["users_without_train"][split] = int(unknown)
        held = held.filter(pl.col("user_id").is_in(list(model_users)))
        summary[split] = {}
        if held.height == 0:
            continue
        exclude = _split_matrix(rec, valid) if split == "test" else None
        ranks, users, tops = full_ranks(rec, held, exclude, max(ks))
        full = ranks_to_metrics(ranks, ks)
        for k in ks:
            full[f"Coverage@{k}"] = float(len(np.unique(tops[:, :k][tops[:, :k] >= 0])) / n_catalogue)
        sampled_rank = sampled_ranks(rec, held, seen_all, negatives, seed)
        sampled = ranks_to_metrics(sampled_rank, ks)
        summary[split] = {"full": full, "sampled": sampled, "users": len(users), "positives": held.height}
        for protocol, values, n in (("full", full, len(users)), ("sampled", sampled, held.height)):
            for name, value in values.items():
                metric, k = name.split("@")
                rows.append((split, protocol, metric, int(k), value, n))
    table = pl.DataFrame(
        rows,
        schema={
            "split": pl.Utf8, "protocol": pl.Utf8, "metric": pl.Utf8, "k": pl.Int64, "value": pl.Float64, "n": pl.Int64,
        },
        orient="row",
    ).with_columns(model=pl.lit(rec.model))
    return table, summary
