"""tasks/paths.py: rendering, the EMA behind LIR/SEP, and path scores on a hand-computed toy graph.

Toy graph: user 1 rated movie 10 (5 stars, t=100) and movie 11 (3 stars, t=200); movie 20 is
recommended. Movies 10 and 20 share director m.0abc (unnamed Freebase id), 11 and 20 share
genre Comedy, and item-KNN links 11 ~ 20 with similarity 0.5. The recommender's item factors make
cos(10, 20) = 1 and cos(11, 20) = 0.
"""

import math
import os

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recxplain.config import PathsConfig, RecommenderConfig
from recxplain.recommenders import ALSRecommender
from tasks.paths import (
    Graph,
    _first_paths,
    build_graph,
    entity_label,
    finish_paths,
    mine,
    mine_paths,
    moving_average_rank,
    path_quality,
    render_path,
    step_labels,
)
from tasks.recommend import train_recommender

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TITLES = {10: "Ten (1990)", 11: "Eleven (1991)", 20: "Twenty (1992)"}


def test_entity_labels_never_leak_freebase_ids():
    assert entity_label("actor:m.0bln8") == "an actor"
    assert entity_label("director:m.0abc") == "a director"
    assert entity_label("content_rating:m.0kprdf") == "a content rating"
    assert entity_label("genre:Comedy") == "Comedy"
    assert entity_label("tag:dark") == "dark"
    assert entity_label("actor:m.0bln8", names={"actor:m.0bln8": "Mark Hamill"}) == "Mark Hamill"
    assert entity_label("movie:10", TITLES) == "Ten (1990)"
    assert entity_label("movie:99", TITLES) == "a movie"


def test_render_path_sentences():
    shared = [
        "user:1", "rated", "movie:10", "film.film.directed_by", "director:m.0abc", "film.film.directed_by", "movie:20",
    ]
    assert render_path(shared, TITLES, 5.0) == "You rated Ten (1990) 5/5; Twenty (1992) shares a director with it."
    genre = ["user:1", "rated", "movie:11", "genre", "genre:Comedy", "genre", "movie:20"]
    assert render_path(genre, TITLES, 3.5) == (
        "You rated Eleven (1991) 3.5/5; Twenty (1992) shares the genre Comedy with it."
    )
    tag = ["user:1", "rated", "movie:11", "has_tag", "tag:dark", "has_tag", "movie:20"]
    assert render_path(tag, TITLES) == "You watched Eleven (1991); Twenty (1992) shares the tag 'dark' with it."
    similar = ["user:1", "rated", "movie:11", "similar_to", "movie:20"]
    assert (
        render_path(similar, TITLES, 4) == "You rated Eleven (1991) 4/5; people who liked it also liked Twenty (1992)."
    )
    sequel = ["user:1", "rated", "movie:10", "film.film.sequel", "movie:20"]
    assert render_path(sequel, TITLES, 4) == "You rated Ten (1990) 4/5; Twenty (1992) is its sequel."
    assert step_labels(shared, TITLES) == [
        "you", "rated", "Ten (1990)", "directed by", "a director", "directed by", "Twenty (1992)",
    ]
    with pytest.raises(ValueError, match="a path needs"):
        render_path(["user:1", "rated"], TITLES)


def test_moving_average_rank_hand_computed():
    # group a: EMA(0, 10, 20; beta .5) = 0, 5, 12.5 -> min-max 0, .4, 1; group b: one value -> 1
    got = moving_average_rank(np.array([0.0, 10.0, 20.0, 7.0]), np.array([0, 0, 0, 1]), 0.5)
    assert got == pytest.approx([0.0, 0.4, 1.0, 1.0])


def _toy():
    kg = pl.DataFrame(
        {
            "head": ["movie:10", "movie:20", "movie:11", "movie:20"],
            "relation": ["film.film.directed_by", "film.film.directed_by", "genre", "genre"],
            "tail": ["director:m.0abc", "director:m.0abc", "genre:Comedy", "genre:Comedy"],
        }
    )
    similar = pl.DataFrame({"item_id": [11], "neighbour_item_id": [20], "similarity": [0.5]})
    rated = pl.DataFrame(
        {
            "user_id": [1, 1], "item_id": [10, 11], "rating": [5.0, 3.0], "timestamp": [100, 200],
            "split": ["train", "train"],
        }
    )
    item_ids = np.array([10, 11, 20])
    rec = ALSRecommender(
        user_ids=np.array([1]),
        item_ids=item_ids,
        user_items=sp.csr_matrix(np.array([[1.0, 1.0, 0.0]], dtype=np.float32)),
        similarity=sp.csr_matrix((3, 3), dtype=np.float32),
        user_factors=np.array([[1.0, 1.0]], dtype=np.float32),
        item_factors=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32),
    )
    graph = Graph(kg, similar, rated, item_ids)
    recs = pl.DataFrame({"user_id": [1], "item_id": [20], "rank": [1]})
    return graph, rec, rated, recs


def test_path_scores_on_toy_graph_match_hand_computation():
    graph, rec, rated, recs = _toy()
    cfg = PathsConfig(top_p=3)
    paths = mine(cfg, graph, rec, recs, rated.drop("split"))
    spec = 1 - math.log(2) / math.log(3)  # each shared entity links 2 of the 3 movies
    common_similar = math.log(2) / math.log(3)  # 1 similar_to row vs 2 edges of the commonest relation
    expected = {
        # kind: (linking movie, credibility, readability)
        "director": (10, (1 + 1 + spec) / 3, (2 / 3 + 0.5 + 1) / 3),
        "similar_to": (11, (0 + 0 + 0.5) / 3, (1 + 1 + common_similar) / 3),
        "genre": (11, (0 + 0 + spec) / 3, (2 / 3 + 1 + 1) / 3),
    }
    got = {
        k: (j, c, r) for k, j, c, r in paths.select("kind", "linking_item_id", "credibility", "readability").iter_rows()
    }
    assert got.keys() == expected.keys()
    for kind, (j, c, r) in expected.items():
        assert got[kind] == (j, pytest.approx(c), pytest.approx(r))
    score = {k: 0.5 * c + 0.3 * r + 0.1 for k, (_, c, r) in expected.items()}  # every pattern new to the user
    ranked = sorted(score, key=score.get, reverse=True)
    assert ranked == ["director", "similar_to", "genre"]
    assert paths.sort("path_rank")["kind"].to_list() == ranked
    assert paths.sort("path_rank")["score"].to_list() == pytest.approx([score[k] for k in ranked])
    assert len(mine(PathsConfig(top_p=2), graph, rec, recs, rated.drop("split"))) == 2
    assert set(mine(PathsConfig(max_hops=2), graph, rec, recs, rated.drop("split"))["kind"]) == {"similar_to"}


def test_diversity_bonus_goes_to_the_best_path_of_each_pattern():
    graph, rec, rated, recs = _toy()
    kg = pl.DataFrame(
        {
            "head": ["movie:10", "movie:20", "movie:11", "movie:20"],
            "relation": ["film.film.actor"] * 4,
            "tail": ["actor:m.1", "actor:m.1", "actor:m.2", "actor:m.2"],
        }
    )
    graph = Graph(
        kg,
        pl.DataFrame(schema={"item_id": pl.Int64, "neighbour_item_id": pl.Int64, "similarity": pl.Float64}),
        rated,
        rec.item_ids,
    )
    paths = mine(PathsConfig(top_p=3), graph, rec, recs, rated.drop("split")).sort("path_rank")
    assert paths["kind"].to_list() == ["actor", "actor"]
    assert paths["diversity"].to_list() == [1.0, 0.0]
    assert paths["linking_item_id"].to_list() == [10, 11]  # 5 stars and cos 1 beat 3 stars and cos 0


def test_path_quality_lir_sep_etd_on_toy_graph():
    graph, rec, rated, recs = _toy()
    paths = finish_paths(mine(PathsConfig(), graph, rec, recs, rated.drop("split")), graph, TITLES, None)
    assert paths.sort("path_rank")["text"][0] == "You rated Ten (1990) 5/5; Twenty (1992) shares a director with it."
    assert paths.sort("path_rank")["pattern"].to_list() == [
        "user-rated-movie-director-movie", "user-rated-movie-similar_to-movie", "user-rated-movie-genre-movie",
    ]
    paths, per_user, summary = path_quality(paths, graph, rated, recs, beta=0.3)
    lir = dict(paths.select("linking_item_id", "lir").iter_rows())
    # times 100, 200 -> EMA 100, 130 -> min-max 0, 1
    assert lir == {10: 0.0, 11: 1.0}
    # one director (degree 2) and one genre: a lone entity of its type gets SEP 1; the 2-hop path's
    # shared node is movie 11, among movies of popularity (1, 1, 0): EMA 0, .3, .51 -> 11 sorts 3rd
    assert paths.filter(pl.col("kind") == "director")["sep"][0] == 1.0
    assert paths.filter(pl.col("kind") == "similar_to")["sep"][0] == pytest.approx(1.0)
    assert per_user.row(0, named=True) == {
        "user_id": 1, "recommendations": 1, "explained": 1, "LIR": 0.0, "SEP": 1.0, "ETD": 1.0,
    }
    assert summary["coverage"] == 1.0 and summary["path_types_possible"] == 3


def test_build_graph_exports_networkx():
    graph, rec, rated, recs = _toy()
    kg = pl.DataFrame({"head": ["movie:10"], "relation": ["genre"], "tail": ["genre:Comedy"]})
    g = build_graph(rated, kg, pl.DataFrame({"item_id": [11], "neighbour_item_id": [20], "similarity": [0.5]}))
    assert g.number_of_nodes() == 5 and g.number_of_edges() == 4
    assert g.get_edge_data("user:1", "movie:10")[0] == {"relation": "rated", "rating": 5.0, "timestamp": 100}


def test_stage_end_to_end_on_toy_folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [(u, i, 3.0 + (i % 3), 10 * u + i, "train") for u in range(1, 7) for i in range(1, 8) if (u + i) % 3]
    rows += [(u, 8, 4.0, 999, "test") for u in range(1, 7)]
    pl.DataFrame(rows, schema=["user_id", "item_id", "rating", "timestamp", "split"], orient="row").write_parquet(
        data / "interactions.parquet"
    )
    pl.DataFrame(
        {
            "item_id": list(range(1, 9)), "title": [f"M{i}" for i in range(1, 9)], "year": [2000] * 8,
            "genres": [["Drama"]] * 8,
        }
    ).write_parquet(data / "items.parquet")
    pl.DataFrame(
        {
            "head": [f"movie:{i}" for i in range(1, 9)] + [f"movie:{i}" for i in range(1, 9)],
            "relation": ["genre"] * 8 + ["film.film.actor"] * 8,
            "tail": ["genre:Drama"] * 8 + [f"actor:m.{i % 2}" for i in range(1, 9)],
        }
    ).write_parquet(data / "kg.parquet")
    rec_dir, out = tmp_path / "rec", tmp_path / "paths"
    rec_dir.mkdir()
    out.mkdir()
    train_recommender(rec_dir, recommender=RecommenderConfig(k=2, top_n=2), data=data)
    mine_paths(out, paths=PathsConfig(top_p=2), data=data, recommender=rec_dir)
    paths = pl.read_parquet(out / "paths.parquet")
    assert {
        "user_id", "item_id", "rank", "pattern", "steps", "score", "text", "credibility", "readability", "diversity",
    } <= set(paths.columns)
    assert paths.group_by("user_id", "item_id").len()["len"].max() <= 2
    assert not paths["text"].str.contains(r"m\.\d").any()
    quality = pl.read_parquet(out / "path_quality.parquet")
    assert set(quality.columns) >= {"user_id", "LIR", "SEP", "ETD"}
    assert (out / "path_quality.json").exists()
    recs = pl.read_parquet(rec_dir / "recommendations.parquet")
    # every rec explained (genre shared by all)
    assert paths.select("user_id", "item_id").unique().height == recs.height


def test_column_wise_text_equals_render_path():
    graph, rec, rated, recs = _toy()
    paths = finish_paths(mine(PathsConfig(), graph, rec, recs, rated.drop("split")), graph, TITLES, None)
    for steps, rating, text in paths.select("steps", "rating", "text").iter_rows():
        assert text == render_path(steps, TITLES, rating)


def test_path_through_similar_tags_is_mined_ranked_and_rendered():
    """Movie 10 (rated 5/5) is tagged 'heist', movie 11 (3/5) 'gritty'; the recommended movie 20 is
    tagged 'caper', which the genome finds similar to 'heist' (one edge, taken both ways). With
    max_hops 4 the path 10 -has_tag-> heist -similar_to-> caper <-has_tag- 20 is mined, scored like
    the others, and rendered as a sentence; with max_hops 3 it is not."""
    graph, rec, rated, recs = _toy()
    kg = pl.DataFrame({
        "head": ["movie:10", "movie:11", "movie:20", "tag:caper", "tag:gritty"],
        "relation": ["has_tag", "has_tag", "has_tag", "similar_to", "similar_to"],
        "tail": ["tag:heist", "tag:gritty", "tag:caper", "tag:heist", "tag:unused"],
    })
    no_links = pl.DataFrame(schema={"item_id": pl.Int64, "neighbour_item_id": pl.Int64, "similarity": pl.Float64})
    graph = Graph(kg, no_links, rated, rec.item_ids)
    # the edge to an unused tag is left out
    assert graph.kinds[-1] == "tag-similar_to-tag" and graph.tag_similar.nnz == 2
    assert mine(PathsConfig(max_hops=3), graph, rec, recs, rated.drop("split")).height == 0
    paths = finish_paths(mine(PathsConfig(max_hops=4), graph, rec, recs, rated.drop("split")), graph, TITLES, None)
    [path] = paths.to_dicts()
    assert path["pattern"] == "user-rated-movie-tag-similar_to-tag-movie" and path["linking_item_id"] == 10
    assert path["steps"] == ["user:1", "rated", "movie:10", "has_tag", "tag:heist", "similar_to", "tag:caper",
                             "has_tag", "movie:20"]
    assert path["text"] == ("You rated Ten (1990) 5/5; it is tagged 'heist', and Twenty (1992) is tagged 'caper', "
                            "a similar tag.")
    assert path["text"] == render_path(path["steps"], TITLES, path["rating"])
    spec = 1 - math.log(1) / math.log(3)  # each tag is on one of the 3 movies
    common = math.log(1 + 0) / math.log(1 + 3)  # no item-KNN rows: similar_to counts 0 edges
    assert path["credibility"] == pytest.approx((1 + 1 + spec) / 3)  # 5/5 (the top rating), cos(10, 20) = 1
    assert path["readability"] == pytest.approx((2 / 4 + 1 + common) / 3)
    _, _, summary = path_quality(paths, graph, rated, recs, beta=0.3)
    assert summary["patterns_of_chosen"] == {"user-rated-movie-tag-similar_to-tag-movie": 1}
    assert summary["path_types_possible"] == 2  # tags shared directly, and tags that are similar


def test_first_paths_vary_the_pattern_over_a_users_recommendations():
    """Two recommendations whose best path is the same pattern: the second gets another pattern
    first (ETD), the first keeps its best; without the diversity weight both keep their best."""
    # candidates: pair 0 (rank 1) and pair 1 (rank 2), patterns 0 (similar_to-like) and 1 (genre-like)
    pair, kind = np.array([0, 0, 1, 1, 1]), np.array([0, 1, 0, 1, 1])
    base = np.array([0.9, 0.6, 0.8, 0.7, 0.65])
    best = np.array([True, True, True, True, False])
    users, ranks = np.array([7, 7]), np.array([1, 2])
    first, novel = _first_paths(pair, kind, base, best, users, ranks, weight=0.2)
    assert first.tolist() == [True, False, False, True, False]
    assert novel.tolist() == [True, True, False, True, False]
    first, _ = _first_paths(pair, kind, base, best, users, ranks, weight=0.0)
    assert first.tolist() == [True, False, True, False, False]
    # another user starts afresh
    first, _ = _first_paths(pair, kind, base, best, np.array([7, 8]), ranks, weight=0.2)
    assert first.tolist() == [True, False, True, False, False]
