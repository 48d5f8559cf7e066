"""The classic recommenders: fit, save and load, score, recommend, explain intrinsically, evaluate.

Every model implements one small interface, `Recommender` (base.py: `fit`, `score`, and the
item-item evidence `neighbour_weights` / `affinity`); one module per algorithm:

- `itemknn`: cosine item-KNN through `implicit`; a user's score for item i is the sum of the
  similarities from the user's rated items to i, so the rated items with the largest
  contributions are the recommendation's intrinsic explanation.
- `factors`: `als` and `bpr`, matrix factorisation through `implicit`; scores are user . item factors.
- `popular`: train interaction counts, the same list for everyone.

`registry.MODELS` maps `recommender.model` to the class; `fit_recommender` and `load_recommender`
go through it. Scoring, top-N and neighbours (scoring.py) and metrics (metrics.py) call the
interface only.

Interactions are implicit feedback: every train rating is a 1 in the user x item matrix (ALS
confidence is `1 + alpha`). The catalogue a model ranks is the set of items with at least one
train interaction: an item nobody saw in train cannot be scored (for BPR its factors would be an
untrained random init), so a held-out positive outside the catalogue counts as a miss.

The `train_recommender` stage (tasks/recommend.py) fits a model and writes its outputs; the other
stages load it (`load_recommender`) and use `score_candidates`, `recommend`, `item_neighbours`,
`item_affinity`, `ranks_to_metrics` and `read_interactions`. Importers use this package's names.
"""

from recxplain.recommenders.base import Recommender
from recxplain.recommenders.data import read_interactions
from recxplain.recommenders.factors import ALSRecommender, BPRRecommender, FactorsRecommender
from recxplain.recommenders.itemknn import ItemKNNRecommender, cosine_knn
from recxplain.recommenders.metrics import full_ranks, ranking_metrics, ranks_to_metrics, sampled_ranks
from recxplain.recommenders.popular import PopularRecommender
from recxplain.recommenders.registry import MODELS, fit_recommender, load_recommender, save_recommender
from recxplain.recommenders.scoring import (
    item_affinity,
    item_neighbours,
    recommend,
    score_candidates,
    top_n,
    user_item_neighbours,
)

__all__ = [
    "MODELS",
    "ALSRecommender",
    "BPRRecommender",
    "FactorsRecommender",
    "ItemKNNRecommender",
    "PopularRecommender",
    "Recommender",
    "cosine_knn",
    "fit_recommender",
    "full_ranks",
    "item_affinity",
    "item_neighbours",
    "load_recommender",
    "ranking_metrics",
    "ranks_to_metrics",
    "read_interactions",
    "recommend",
    "sampled_ranks",
    "save_recommender",
    "score_candidates",
    "top_n",
    "user_item_neighbours",
]
