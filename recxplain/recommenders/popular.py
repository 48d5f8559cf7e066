"""Most popular: train interaction counts, the same ranking for every user."""

from __future__ import annotations

import numpy as np

from recxplain.config import RecommenderConfig
from recxplain.recommenders.base import Recommender


class PopularRecommender(Recommender):
    """Every user's score for an item is the item's train interaction count."""

    model = "popular"

    def fit(self, cfg: RecommenderConfig) -> None:
        """Nothing to fit: popularity comes from `user_items`."""

    def score(self, rows: np.ndarray) -> np.ndarray:
        """The popularity row, repeated for each user row."""
        return np.broadcast_to(self.popularity.astype(np.float64), (len(rows), len(self.item_ids))).copy()
