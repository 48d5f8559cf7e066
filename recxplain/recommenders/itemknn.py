"""Cosine item-KNN through `implicit` (`CosineRecommender`).

Row j of `similarity` holds item j's `k` nearest neighbours (self excluded); a user's score for
item i is the sum of the similarities from the user's rated items to i, so the rated items with
the largest contributions are the recommendation's intrinsic explanation.
"""

from __future__ import annotations

import warnings
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from recxplain.config import RecommenderConfig
from recxplain.recommenders.base import Recommender


class ItemKNNRecommender(Recommender):
    """Scores are user_items @ similarity; a rated item's weight towards i is exactly its summand."""

    model = "itemknn"

    def fit(self, cfg: RecommenderConfig) -> None:
        """Nothing beyond the shared similarity, which every model already has."""

    def score(self, rows: np.ndarray) -> np.ndarray:
        """Sum over the user's rated items of their similarity to each item."""
        return np.asarray((self.user_items[rows] @ self.similarity).todense(), dtype=np.float64)

    def neighbour_weights(self, cols: np.ndarray) -> sp.csr_matrix:
        """similarity[j, i] for each j: the summands of the score of i."""
        return self._per_item[cols]

    @cached_property
    def _per_item(self) -> sp.csr_matrix:
        """Row i: the items j that list i among their neighbours."""
        return self.similarity.T.tocsr()


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
