"""RecLAIF's candidate sets: the order negatives are drawn in, the draw itself and the users
sampled (the `build_candidate_sets` stage, tasks/reclaif/candidates.py)."""

from __future__ import annotations

import numpy as np

from recxplain.config import ReclaifCandidatesConfig
from recxplain.reclaif.answers import title_key


def negative_order(
    sampler: str, pool: np.ndarray, rng: np.random.Generator, *, popularity: np.ndarray | None = None,
    hard: np.ndarray | None = None,
) -> np.ndarray:
    """`pool` (catalogue positions a user may get as negatives) in the order negatives are drawn.

    uniform: a random permutation. popularity: sequential draws without replacement with
    probability proportional to `popularity[pool]` (+1, so unseen-in-train items can appear).
    hard: `hard` (the recommender's best positions, best first, already restricted to the pool)
    in random order, then the rest of the pool uniformly.
    """
    if sampler == "uniform":
        return rng.permutation(pool)
    if sampler == "popularity":
        if popularity is None:
            raise ValueError("the popularity sampler needs item popularity")
        weights = popularity[pool].astype(np.float64) + 1.0
        # Gumbel top-k: sorting log(w) + Gumbel noise is sequential weighted sampling without replacement.
        keys = np.log(weights) + rng.gumbel(size=len(pool))
        return pool[np.argsort(-keys, kind="stable")]
    if sampler == "hard":
        if hard is None:
            raise ValueError("the hard sampler needs the recommender's top items")
        rest = np.setdiff1d(pool, hard, assume_unique=False)
        return np.concatenate([rng.permutation(hard), rng.permutation(rest)]).astype(pool.dtype)
    raise ValueError(f"reclaif.candidates.sampler: unknown sampler {sampler!r}; use uniform, popularity or hard")


def draw_candidates(
    target: int, order: np.ndarray, titles: dict[int, str], m: int, rng: np.random.Generator
) -> tuple[list[int], int]:
    """Take the first `m` item ids of `order` whose titles differ from the target's and from each
    other's (a parser must be able to tell every candidate apart), add the target and shuffle.
    Returns (candidate item ids, negatives drawn)."""
    seen_titles = {title_key(titles[target])}
    negatives: list[int] = []
    for item in order.tolist():
        if len(negatives) == m:
            break
        key = title_key(titles[item])
        if item == target or key in seen_titles:
            continue
        seen_titles.add(key)
        negatives.append(item)
    candidates = [target, *negatives]
    return [candidates[i] for i in rng.permutation(len(candidates))], len(negatives)


def pick_users(
    eligible_eval: set[int], eligible_train: set[int], cfg: ReclaifCandidatesConfig
) -> tuple[list[int], list[int]]:
    """(eval users, train users): a seeded permutation; eval drawn first, train from the rest."""
    order = [int(u) for u in np.random.default_rng(cfg.seed).permutation(sorted(eligible_eval | eligible_train))]
    eval_users = [u for u in order if u in eligible_eval][: cfg.eval_users]
    taken = set(eval_users)
    train_users = [u for u in order if u in eligible_train and u not in taken][: cfg.train_users]
    if len(eval_users) < cfg.eval_users or len(train_users) < cfg.train_users:
        raise ValueError(
            f"reclaif.candidates: {len(eligible_eval)} users have a test item and {len(eligible_train)} a valid "
            f"item after a train history, not enough for eval_users={cfg.eval_users} and "
            f"train_users={cfg.train_users} (disjoint); lower them"
        )
    return sorted(eval_users), sorted(train_users)
