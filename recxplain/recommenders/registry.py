"""The model registry: fit a recommender by name, save it, load it back.

`MODELS` maps each `recommender.model` name to its class; nothing else looks at the name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recxplain.config import RecommenderConfig
from recxplain.recommenders.base import Recommender, lookup
from recxplain.recommenders.factors import ALSRecommender, BPRRecommender
from recxplain.recommenders.itemknn import ItemKNNRecommender, cosine_knn
from recxplain.recommenders.popular import PopularRecommender

MODELS: dict[str, type[Recommender]] = {
    cls.model: cls for cls in (ItemKNNRecommender, ALSRecommender, BPRRecommender, PopularRecommender)
}


def fit_recommender(cfg: RecommenderConfig, train: pl.DataFrame) -> Recommender:
    """Fit `cfg.model` on train interactions (columns user_id, item_id); ratings are ignored."""
    if cfg.model not in MODELS:  # pydantic already checks; this guards direct calls with dicts
        raise ValueError(f"recommender.model: unknown model {cfg.model!r}; choose one of {tuple(MODELS)}")
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
    cols = lookup(item_ids, pairs["item_id"].to_numpy(), "item", strict=True)
    user_items = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(user_ids), len(item_ids))
    )
    user_items.sort_indices()
    rec = MODELS[cfg.model](
        user_ids, item_ids, user_items, cosine_knn(user_items, cfg.k), config=cfg.model_dump(mode="json")
    )
    rec.fit(cfg)
    return rec


def save_recommender(rec: Recommender, folder: Path) -> None:
    """Write a recommender to `folder`: meta.json, arrays.npz, user_items.npz, similarity.npz."""
    folder.mkdir(parents=True, exist_ok=True)
    import implicit

    meta = {"model": rec.model, "config": rec.config, "implicit_version": implicit.__version__}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    np.savez(folder / "arrays.npz", user_ids=rec.user_ids, item_ids=rec.item_ids, **rec.state())
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
    rec = MODELS[meta["model"]](
        user_ids=arrays["user_ids"],
        item_ids=arrays["item_ids"],
        user_items=sp.load_npz(folder / "user_items.npz").tocsr(),
        similarity=sp.load_npz(folder / "similarity.npz").tocsr(),
        config=meta["config"],
    )
    rec.set_state(arrays)
    return rec


def as_recommender(model: Recommender | Path | str) -> Recommender:
    """`model` itself, or the recommender saved in that folder."""
    return model if isinstance(model, Recommender) else load_recommender(model)
