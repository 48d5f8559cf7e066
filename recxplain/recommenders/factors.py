"""Matrix factorisation through `implicit`: ALS and BPR share the shape (user . item factors).

ALS treats every train interaction as confidence `1 + alpha`; BPR samples (positive, negative)
pairs. Item-item affinity is the cosine of the item factors.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import scipy.sparse as sp

from recxplain.config import RecommenderConfig
from recxplain.recommenders.base import Recommender


class FactorsRecommender(Recommender):
    """Scores are user_factors @ item_factors.T; subclasses pick the implicit model."""

    def __init__(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        user_items: sp.csr_matrix,
        similarity: sp.csr_matrix,
        config: dict | None = None,
        user_factors: np.ndarray | None = None,
        item_factors: np.ndarray | None = None,
    ) -> None:
        super().__init__(user_ids, item_ids, user_items, similarity, config)
        self.user_factors = user_factors
        self.item_factors = item_factors

    @abstractmethod
    def _implicit_model(self, cfg: RecommenderConfig):
        """The unfitted implicit model for `cfg`."""

    def fit(self, cfg: RecommenderConfig) -> None:
        """Fit the implicit model (CPU or GPU) and keep its factors as float32 numpy arrays."""
        import implicit.gpu
        from threadpoolctl import threadpool_limits

        if cfg.use_gpu and not implicit.gpu.HAS_CUDA:
            raise ValueError("recommender.use_gpu=true but this `implicit` build has no CUDA support")
        # implicit's CPU kernels run their own threads; a multi-threaded BLAS underneath slows
        # them down (implicit warns about it when the model is built).
        with threadpool_limits(1, "blas"):
            model = self._implicit_model(cfg)
            model.fit(self.user_items, show_progress=False)
        if cfg.use_gpu:
            model = model.to_cpu()
        self.user_factors = np.asarray(model.user_factors, np.float32)
        self.item_factors = np.asarray(model.item_factors, np.float32)

    def score(self, rows: np.ndarray) -> np.ndarray:
        """Dot products of the users' and all items' factors."""
        return (self.user_factors[rows] @ self.item_factors.T).astype(np.float64)

    def affinity(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Cosine of the item factors."""
        emb = self.item_factors
        norms = np.linalg.norm(emb, axis=1)
        norms[norms == 0] = 1.0
        return np.einsum("ij,ij->i", emb[a], emb[b]) / (norms[a] * norms[b])

    def state(self) -> dict[str, np.ndarray]:
        """The two factor matrices."""
        return {"user_factors": self.user_factors, "item_factors": self.item_factors}

    def set_state(self, arrays) -> None:
        """Read the two factor matrices back."""
        self.user_factors, self.item_factors = arrays["user_factors"], arrays["item_factors"]


class ALSRecommender(FactorsRecommender):
    """Alternating least squares (implicit's `AlternatingLeastSquares`)."""

    model = "als"

    def _implicit_model(self, cfg: RecommenderConfig):
        from implicit.als import AlternatingLeastSquares

        return AlternatingLeastSquares(
            factors=cfg.factors,
            regularization=cfg.regularization,
            alpha=cfg.alpha,
            iterations=cfg.iterations or 15,
            use_gpu=cfg.use_gpu,
            random_state=cfg.seed,
        )


class BPRRecommender(FactorsRecommender):
    """Bayesian personalised ranking (implicit's `BayesianPersonalizedRanking`)."""

    model = "bpr"

    def _implicit_model(self, cfg: RecommenderConfig):
        from implicit.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(
            factors=cfg.factors,
            learning_rate=cfg.learning_rate,
            regularization=cfg.regularization,
            iterations=cfg.iterations or 100,
            use_gpu=cfg.use_gpu,
            random_state=cfg.seed,
        )
