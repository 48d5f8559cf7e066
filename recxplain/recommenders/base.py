"""The interface every recommender implements, and the state all of them share.

A `Recommender` holds the catalogue (user and item ids), the binary train interactions and the
cosine item-KNN similarity (every model keeps it: it gives similar-item evidence). A model adds
its own state and implements `fit` and `score`; `neighbour_weights` and `affinity` have
defaults (cosine of the items' train interaction vectors) that a model overrides when it has a
better notion of "item j is behind item i".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from recxplain.config import RecommenderConfig

# Dense score blocks are cut to about this many floats (users x catalogue) to bound memory.
BLOCK_CELLS = 4_000_000


class Recommender(ABC):
    """A fitted recommender: everything needed to score any (user, item) pair.

    Attributes:
        model: the registry name (`MODELS` key) of the subclass.
        user_ids: int64 user ids, the row order of `user_items`.
        item_ids: int64 item ids of the catalogue, the column order (most popular first).
        user_items: binary train interactions, users x catalogue (CSR, float32).
        similarity: cosine item-KNN matrix (row j: j's neighbours, no self), for every model.
        config: the RecommenderConfig it was fit with (as a dict).
    """

    model: ClassVar[str]

    def __init__(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        user_items: sp.csr_matrix,
        similarity: sp.csr_matrix,
        config: dict | None = None,
    ) -> None:
        self.user_ids = user_ids
        self.item_ids = item_ids
        self.user_items = user_items
        self.similarity = similarity
        self.config = config or {}

    @abstractmethod
    def fit(self, cfg: RecommenderConfig) -> None:
        """Fit the model's own state on `user_items` (ids, interactions and similarity are set)."""

    @abstractmethod
    def score(self, rows: np.ndarray) -> np.ndarray:
        """Dense float64 scores (len(rows) x catalogue) of user rows; higher is better."""

    def neighbour_weights(self, cols: np.ndarray) -> sp.csr_matrix:
        """len(cols) x catalogue: how much each item j stands behind catalogue item cols[n].

        Default: the cosine of the train interaction vectors of j and i (not truncated to k).
        """
        return self._item_users[cols] @ self._item_users.T

    def affinity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine of the item representations of aligned catalogue columns a and b.

        Default: exact cosine of the items' train interaction vectors.
        """
        item_users = self._item_users
        out = np.zeros(len(a))
        # one dense row of cosines per distinct b, computed in blocks
        targets, inverse = np.unique(b, return_inverse=True)
        size = max(1, BLOCK_CELLS // max(len(self.item_ids), 1))
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(0, len(targets) + size, size))
        for n, start in enumerate(range(0, len(targets), size)):
            block = (item_users[targets[start : start + size]] @ item_users.T).toarray()
            pairs = order[bounds[n] : bounds[n + 1]]
            out[pairs] = block[inverse[pairs] - start, a[pairs]]
        return out

    def state(self) -> dict[str, np.ndarray]:
        """The model's own arrays to save next to the shared ones (none by default)."""
        return {}

    def set_state(self, arrays) -> None:
        """Restore what `state` returned (from the saved arrays.npz); nothing by default."""
        return None

    @property
    def popularity(self) -> np.ndarray:
        """Train interaction count of each catalogue item."""
        return np.asarray(self.user_items.sum(axis=0)).ravel()

    def user_rows(self, user_ids) -> np.ndarray:
        """Row index of each user id; raises ValueError naming users without train interactions."""
        return lookup(self.user_ids, np.asarray(user_ids, dtype=np.int64), "user", strict=True)

    def item_cols(self, item_ids) -> np.ndarray:
        """Column index of each item id, -1 for items outside the catalogue."""
        return lookup(self.item_ids, np.asarray(item_ids, dtype=np.int64), "item", strict=False)

    @cached_property
    def _item_users(self) -> sp.csr_matrix:
        """Items x users CSR with unit-length rows (binary interactions / sqrt(item degree))."""
        norms = np.sqrt(np.asarray(self.user_items.sum(axis=0)).ravel())
        return (self.user_items @ sp.diags(1.0 / np.maximum(norms, 1e-12))).T.tocsr()


def lookup(ids: np.ndarray, query: np.ndarray, what: str, strict: bool) -> np.ndarray:
    """Position of each query id in `ids` (-1 if absent; with `strict`, absent ids raise ValueError)."""
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids, query, sorter=order)
    pos = np.minimum(pos, len(ids) - 1)
    found = ids[order[pos]] == query if len(ids) else np.zeros(query.shape, bool)
    if strict and not found.all():
        missing = np.unique(query[~found])[:10].tolist()
        raise ValueError(f"{what}(s) {missing} have no train interactions: the recommender cannot score them")
    return np.where(found, order[pos], -1)
