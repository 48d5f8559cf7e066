"""The classic recommenders: fit, save and load, score, recommend, explain intrinsically, evaluate.

Models (one config field, `recommender.model`, picks one; all share the `Recommender` record and
the same scoring and top-N code):

- `itemknn`: cosine item-KNN through `implicit` (`CosineRecommender`). Row j of `similarity`
  holds item j's `k` nearest neighbours (self excluded); a user's score for item i is the sum of
  the similarities from the user's rated items to i, so the rated items with the largest
  contributions are the recommendation's intrinsic explanation (the first seed's 10 neighbours).
- `als`, `bpr`: matrix factorisation through `implicit`; scores are user . item factors.
- `popular`: train interaction counts, the same list for everyone.

Interactions are implicit feedback: every train rating is a 1 in the user x item matrix (ALS
confidence is `1 + alpha`). The catalogue a model ranks is the set of items with at least one
train interaction: an item nobody saw in train cannot be scored (for BPR its factors would be an
untrained random init), so a held-out positive outside the catalogue counts as a miss.

Ties: catalogue columns are ordered by train popularity (most popular first, then item_id), and
every ranking here breaks score ties by that order. Top-N lists and the ranks used by the metrics
therefore agree exactly, and item-KNN users with few non-zero scores get popular items, not
arbitrary ones, after their scored items.

Users without train interactions cannot be scored: `user_rows` raises, and `ranking_metrics`
leaves them out and counts them (`users_without_train`).

The `train_recommender` stage (tasks/recommend.py) fits a model and writes its outputs; the other
stages load it (`load_recommender`) and use `score_candidates`, `recommend`, `item_neighbours`,
`item_affinity`, `ranks_to_metrics` and `read_interactions`.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recxplain.config import RecommenderConfig
from recxplain.schemas import check_columns

MODELS = ("itemknn", "als", "bpr", "popular")
# Dense score blocks are cut to about this many floats (users x catalogue) to bound memory.
_BLOCK_CELLS = 4_000_000


@dataclass
class Recommender:
    """A fitted recommender: everything needed to score any (user, item) pair.

    Attributes:
        model: one of `MODELS`.
        user_ids: int64 user ids, the row order of `user_items`.
        item_ids: int64 item ids of the catalogue, the column order (most popular first).
        user_items: binary train interactions, users x catalogue (CSR, float32).
        similarity: cosine item-KNN matrix (row j: j's neighbours, no self), for every model; it
            scores item-KNN and gives every model similar-item evidence.
        user_factors / item_factors: ALS/BPR factors (None for the other models).
        config: the RecommenderConfig it was fit with (as a dict).
    """

    model: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_items: sp.csr_matrix
    similarity: sp.csr_matrix
    user_factors: np.ndarray | None = None
    item_factors: np.ndarray | None = None
    config: dict = field(default_factory=dict)
    @property
    def popularity(self) -> np.ndarray:
        """Train interaction count of each catalogue item."""
        return np.asarray(self.user_items.sum(axis=0)).ravel()

    def user_rows(self, user_ids) -> np.ndarray:
        """Row index of each user id; raises ValueError naming users without train interactions."""
        return _lookup(self.user_ids, np.asarray(user_ids, dtype=np.int64), "user", strict=True)

    def item_cols(self, item_ids) -> np.ndarray:
        """Column index of each item id, -1 for items outside the catalogue."""
        return _lookup(self.item_ids, np.asarray(item_ids, dtype=np.int64), "item", strict=False)


def _lookup(ids: np.ndarray, query: np.ndarray, what: str, strict: bool) -> np.ndarray:
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids, query, sorter=order)
    pos = np.minimum(pos, len(ids) - 1)
    found = ids[order[pos]] == query if len(ids) else np.zeros(query.shape, bool)
    if strict and not found.all():
        missing = np.unique(query[~found])[:10].tolist()
        raise ValueError(f"{what}(s) {missing} have no train interactions: the recommender cannot score them")
    return np.where(found, order[pos], -1)


# --------------------------------------------------------------------------- fitting


def fit_recommender(cfg: RecommenderConfig, train: pl.DataFrame) -> Recommender:
    """Fit `cfg.model` on train interactions (columns user_id, item_id); ratings are ignored."""
    if cfg.model not in MODELS:  # pydantic already checks; this guards direct calls with dicts
        raise ValueError(f"recommender.model: unknown model {cfg.model!r}; choose one of {MODELS}")
    if train.height == 0:
        raise ValueError("train split is empty: nothing to fit")
    pairs = train.select("user_id", "item_id").unique()
    user_ids = np.sort(pairs["user_id"].unique().to_numpy()).astype(np.int64)
    counts = pairs.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])
    item_ids = counts["item_id"].to_numpy().astype(np.int64)
    if cfg.k >= len(item_ids):
        raise ValueError(
            f"recommender.k={cfg.k} must be smaller than the number of items with train interactions ({len(item_ids)})"
        )
    rows = np.searchsorted(user_ids, pairs["user_id"].to_numpy())
    cols = _lookup(item_ids, pairs["item_id"].to_numpy(), "item", strict=True)
    user_items = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(user_ids), len(item_ids))
    )
    user_items.sort_indices()

    similarity = cosine_knn(user_items, cfg.k)
    user_factors = item_factors = None
    if cfg.model in ("als", "bpr"):
        # implicit's CPU kernels run their own threads; a multi-threaded BLAS underneath slows
        # them down (implicit warns about it when the model is built).
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):
            user_factors, item_factors = _fit_factors(cfg, user_items)
    return Recommender(
        model=cfg.model,
        user_ids=user_ids,
        item_ids=item_ids,
        user_items=user_items,
        similarity=similarity,
        user_factors=user_factors,
        item_factors=item_factors,
        config=cfg.model_dump(mode="json"),
    )


def cosine_knn(user_items: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Item x item cosine similarity keeping each item's `k` nearest other items (implicit)."""
    from implicit.nearest_neighbours import CosineRecommender

    # implicit counts the item itself among its K neighbours: ask for k + 1 and drop the diagonal.
    knn = CosineRecommender(K=k + 1, num_threads=0)
    with warnings.catch_warnings():  # implicit warns that its own normalised COO copy is not CSR
        warnings.simplefilter("ignore")
        knn.fit(user_items, show_progress=False)
    sim = knn.similarity.tocsr().astype(np.float32)
    sim.setdiag(0)
    sim.eliminate_zeros()
    sim.sort_indices()
    return sim


def _fit_factors(cfg: RecommenderConfig, user_items: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    import implicit.gpu

    if cfg.use_gpu and not implicit.gpu.HAS_CUDA:
        raise ValueError("recommender.use_gpu=true but this `implicit` build has no CUDA support")
    if cfg.model == "als":
        from implicit.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(
            factors=cfg.factors,
            regularization=cfg.regularization,
            alpha=cfg.alpha,
            iterations=cfg.iterations or 15,
            use_gpu=cfg.use_gpu,
            random_state=cfg.seed,
        )
    else:
        from implicit.bpr import BayesianPersonalizedRanking

        model = BayesianPersonalizedRanking(
            factors=cfg.factors,
            learning_rate=cfg.learning_rate,
            regularization=cfg.regularization,
            iterations=cfg.iterations or 100,
            use_gpu=cfg.use_gpu,
            random_state=cfg.seed,
        )
    model.fit(user_items, show_progress=False)
    if cfg.use_gpu:
        model = model.to_cpu()
    return np.asarray(model.user_factors, np.float32), np.asarray(model.item_factors, np.float32)


# --------------------------------------------------------------------------- saving


def save_recommender(rec: Recommender, folder: Path) -> None:
    """Write a recommender to `folder`: meta.json, arrays.npz, user_items.npz, similarity.npz."""
    folder.mkdir(parents=True, exist_ok=True)
    import implicit

    meta = {"model": rec.model, "config": rec.config, "implicit_version": implicit.__version__}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    arrays = {"user_ids": rec.user_ids, "item_ids": rec.item_ids}
    if rec.user_factors is not None:
        arrays |= {"user_factors": rec.user_factors, "item_factors": rec.item_factors}
    np.savez(folder / "arrays.npz", **arrays)
    sp.save_npz(folder / "user_items.npz", rec.user_items)
    sp.save_npz(folder / "similarity.npz", rec.similarity)


def load_recommender(folder: Path | str) -> Recommender:
    """Load what `save_recommender` wrote; accepts the model folder or the stage folder above it."""
    folder = Path(folder)
    if not (folder / "meta.json").exists() and (folder / "model" / "meta.json").exists():
        folder = folder / "model"
    if not (folder / "meta.json").exists():
        raise FileNotFoundError(f"{folder}: no saved recommender (meta.json missing)")
    meta = json.loads((folder / "meta.json").read_text())
    arrays = np.load(folder / "arrays.npz")
    return Recommender(
        model=meta["model"],
        user_ids=arrays["user_ids"],
        item_ids=arrays["item_ids"],
        user_items=sp.load_npz(folder / "user_items.npz").tocsr(),
        similarity=sp.load_npz(folder / "similarity.npz").tocsr(),
        user_factors=arrays["user_factors"] if "user_factors" in arrays else None,
        item_factors=arrays["item_factors"] if "item_factors" in arrays else None,
        config=meta["config"],
    )


def _as_recommender(model: Recommender | Path | str) -> Recommender:
    return model if isinstance(model, Recommender) else load_recommender(model)


# --------------------------------------------------------------------------- scoring


def score_rows(rec: Recommender, rows: np.ndarray) -> np.ndarray:
    """Dense scores (len(rows) x catalogue) of user rows; the single definition of each model."""
    if rec.model == "itemknn":
        return np.asarray((rec.user_items[rows] @ rec.similarity).todense(), dtype=np.float64)
    if rec.model in ("als", "bpr"):
        return (rec.user_factors[rows] @ rec.item_factors.T).astype(np.float64)
    return np.broadcast_to(rec.popularity.astype(np.float64), (len(rows), len(rec.item_ids))).copy()


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
    rec = _as_recommender(model)
    rows = rec.user_rows(user_ids)
    cand = np.asarray(candidate_item_ids, dtype=np.int64)
    if cand.ndim == 1:
        cand = np.broadcast_to(cand, (len(rows), len(cand)))
    if cand.ndim != 2 or cand.shape[0] != len(rows):
        raise ValueError(f"candidate_item_ids: expected shape (m,) or ({len(rows)}, m), got {cand.shape}")
    cols = rec.item_cols(cand.ravel()).reshape(cand.shape)
    out = np.full(cand.shape, -np.inf)
    for start, stop in _blocks(len(rows), len(rec.item_ids)):
        scores = score_rows(rec, rows[start:stop])
        c = cols[start:stop]
        out[start:stop] = np.where(c >= 0, np.take_along_axis(scores, np.maximum(c, 0), axis=1), -np.inf)
    return out


def _blocks(n_rows: int, n_cols: int):
    size = max(1, _BLOCK_CELLS // max(n_cols, 1))
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
    rec = _as_recommender(model)
    rows = np.arange(len(rec.user_ids)) if user_ids is None else rec.user_rows(user_ids)
    mask = rec.user_items if exclude is None else (rec.user_items + exclude)
    frames = []
    for start, stop in _blocks(len(rows), len(rec.item_ids)):
        block = rows[start:stop]
        scores = score_rows(rec, block)
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


# --------------------------------------------------------------------------- similarity


def item_neighbours(model: Recommender | Path | str, n: int | None = None) -> pl.DataFrame:
    """Each catalogue item's nearest items by cosine of train interactions (the item-KNN graph).

    Returns item_id, neighbour_item_id, similarity, rank; at most min(n, k) per item (k: the
    recommender's `k`, the neighbours the model keeps). Paths mining uses it for `similar_to`.
    """
    rec = _as_recommender(model)
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
    rec = _as_recommender(model)
    a, b = rec.item_cols(item_a), rec.item_cols(item_b)
    valid = (a >= 0) & (b >= 0)
    a, b = np.maximum(a, 0), np.maximum(b, 0)
    out = np.zeros(len(a))
    if rec.item_factors is not None:
        emb = rec.item_factors
        norms = np.linalg.norm(emb, axis=1)
        norms[norms == 0] = 1.0
        out = np.einsum("ij,ij->i", emb[a], emb[b]) / (norms[a] * norms[b])
        return np.where(valid, out, 0.0)
    item_users = _normalised_item_users(rec)
    # one dense row of cosines per distinct b, computed in blocks
    targets, inverse = np.unique(b, return_inverse=True)
    size = max(1, _BLOCK_CELLS // max(len(rec.item_ids), 1))
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(0, len(targets) + size, size))
    for n, start in enumerate(range(0, len(targets), size)):
        block = (item_users[targets[start : start + size]] @ item_users.T).toarray()
        pairs = order[bounds[n] : bounds[n + 1]]
        out[pairs] = block[inverse[pairs] - start, a[pairs]]
    return np.where(valid, out, 0.0)


def _normalised_item_users(rec: Recommender) -> sp.csr_matrix:
    """Items x users CSR with unit-length rows (binary interactions / sqrt(item degree))."""
    norms = np.sqrt(np.asarray(rec.user_items.sum(axis=0)).ravel())
    return (rec.user_items @ sp.diags(1.0 / np.maximum(norms, 1e-12))).T.tocsr()


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
    if rec.model == "itemknn":
        per_item = rec.similarity.T.tocsr()  # row i: the items j that list i among their neighbours
    else:
        item_users = _normalised_item_users(rec)
    frames = []
    chunk = max(1, _BLOCK_CELLS // max(len(rec.item_ids), 1))
    for start in range(0, len(rows), chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        rated = rec.user_items[r]
        if rec.model == "itemknn":
            towards = per_item[c]
        else:
            towards = item_users[c] @ item_users.T  # cosine of item i with every item
        contrib = rated.multiply(towards).tocsr()
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


# --------------------------------------------------------------------------- metrics


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
    for start, stop in _blocks(len(rows), len(rec.item_ids)):
        block = rows[start:stop]
        scores = score_rows(rec, block)
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
    for start, stop in _blocks(len(rows), n_items):
        scores = score_rows(rec, rows[start:stop])
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


# --------------------------------------------------------------------------- data


def read_interactions(data: Path) -> pl.DataFrame:
    """interactions.parquet of a prepare_data folder, checked against the contract."""
    path = data / "interactions.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (expected the prepare_data output folder)")
    frame = pl.read_parquet(path)
    check_columns(frame, "interactions", path)
    bad = set(frame["split"].unique().to_list()) - {"train", "valid", "test"}
    if bad:
        raise ValueError(f"{path}: column split has values {sorted(bad)}; expected train/valid/test")
    return frame.with_columns(pl.col("user_id").cast(pl.Int64), pl.col("item_id").cast(pl.Int64))
