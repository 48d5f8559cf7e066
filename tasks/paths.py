"""Stage `mine_paths`: knowledge-graph explanation paths for every recommendation, and their quality.

The heterogeneous graph (first seed, Yang et al. ICDM 2018): users -rated-> movies (train split,
with rating and time), movies -actor/director/genre/has_tag/...-> entities (the `kg` artifact),
movies -similar_to-> movies (the recommender's item-KNN neighbours) and movie-movie KG relations
(sequel, prequel). `build_graph` returns it as networkx for inspection and export; mining does not
walk networkx: it works on CSR adjacency arrays and numpy joins, a batch of users at a time.

Paths enumerated for a (user u, recommended movie i) pair, all simple:
- 2 hops: u -rated-> j -similar_to-> i, and u -rated-> j -<kg relation>-> i (sequel, prequel);
- 3 hops (max_hops >= 3): u -rated-> j -<relation>-> e <-<relation>- i, an entity e shared by a
  movie the user rated and the recommended movie. For each shared entity only the user's
  `max_links_per_entity` best rated movies in it (rating, then recency) are considered, and the
  most credible of them is kept: one path per (pair, shared entity).
- 4 hops (max_hops >= 4, where the KG has `tag -similar_to-> tag` edges, e.g. from the tag
  genome): u -rated-> j -has_tag-> a -similar_to-> b <-has_tag- i, a tag of a rated movie similar
  to a tag of the recommended one (similarity taken both ways); the user's best rated, then most
  recent, j with tag a is kept: one path per (pair, tag pair). Its middle hop's strength is the
  mean specificity of the two tags, and it ranks among the others by the same scores.

Scores (Sorted Explanation Paths: credibility, readability, diversity), each in [0, 1]:
- credibility = mean of (a) the user's rating of j, min-max scaled over the train ratings;
  (b) the recommender's affinity of j and i (cosine of its item representations, clipped at 0:
  `recxplain.recommenders.item_affinity`); (c) the strength of the middle hop: the item-KNN
  similarity for `similar_to`, 1 for KG movie-movie relations, and for a shared entity its
  specificity 1 - log(degree) / log(#movies) (a director shared by 3 films says more than
  `genre:Drama`).
- readability = mean of (a) length 2 / hops; (b) 1 if the middle node has a human name (genre,
  tag, movie title, or a name in the optional `entities.parquet`), 0.5 when it renders only as
  "an actor"; (c) commonness of the relation, log(1 + edges) / log(1 + edges of the commonest).
- diversity: the top P paths of a recommendation cover different patterns where the graph allows:
  its first (chosen) path, then the best path of each other pattern, then the rest, each by score.
  The first path is picked over the user's recommendations in rank order (Sorted Explanation
  Paths): the best path of each pattern scores w_c*cred + w_r*read + w_d*[pattern not yet first
  for a higher-ranked recommendation of this user]. Without it the item-KNN neighbour path
  (`similar_to`, also the intrinsic explanation) came first for almost every ml-100k
  recommendation (benchmarks/bench_paths.py). `diversity` is that 0/1 novelty, `score` the
  adjusted value.

Path quality of the chosen explanation of each recommendation (its rank-1 path), after Balloccu
et al. (SIGIR 2022), each in [0, 1]:
- LIR: linking-interaction recency. A user's train interactions sorted by time get an exponential
  moving average of their timestamps (LIR_0 = t_0, LIR_k = (1-b) LIR_{k-1} + b t_k), min-max
  normalised per user (1 when the user has a single time); the path's LIR is that of (u, j).
- SEP: shared-entity popularity. Entities of a type sorted by degree (movies: train
  interactions; other entities: linked movies) get the same moving average of their degrees,
  min-max normalised within the type. The shared node is e for 3-hop paths, j for 2-hop paths.
- ETD: explanation type diversity: distinct patterns among the user's chosen paths divided by
  min(#explained recommendations, #patterns the graph allows).

Outputs in `out/`: `paths.parquet` (user_id, item_id, rank, pattern, steps, score, text,
credibility, readability, diversity, linking_item_id, rating, lir, sep, path_rank),
`path_quality.parquet` (per user) and `path_quality.json` (means, coverage, pattern counts).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recxplain.config import PathsConfig
from recxplain.recommenders import Recommender, item_affinity, item_neighbours, load_recommender, read_interactions
from recxplain.schemas import check_columns
from recxplain.stage import ALL, reads, write_run_facts

log = logging.getLogger(__name__)

SIMILAR = "similar_to"
TAG_SIMILARITY = "tag-similar_to-tag"  # the kind (and pattern middle) of 4-hop paths through similar tags
_FREEBASE_ID = re.compile(r"^[mg]\.[0-9a-z_]+$")
# Users mined together; bounds the (user, entity, rated movie) table held in memory, and the
# (user, entity) mask of one batch to about _MASK_CELLS booleans.
_USER_BATCH = 512
_MASK_CELLS = 32_000_000


# --------------------------------------------------------------------------- rendering


def _article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def entity_label(entity: str, titles: Mapping[int, str] | None = None, names: Mapping[str, str] | None = None) -> str:
    """Readable name of a typed entity id; unnamed Freebase ids become "an actor", "a director".

    `movie:50` -> its title from `titles` (item_id -> "Star Wars (1977)"), `genre:Comedy` ->
    "Comedy", `tag:dark` -> "dark", `actor:m.0bln8` -> names[entity] if given, else "an actor".
    """
    kind, _, key = entity.partition(":")
    if names and entity in names:
        return names[entity]
    if kind == "user":
        return "you"
    if kind == "movie":
        try:
            return (titles or {}).get(int(key)) or "a movie"
        except ValueError:
            return "a movie"
    if key and not _FREEBASE_ID.match(key):
        return key
    return _article(kind.replace("_", " ") or "entity")


def is_named(entity: str, names: Mapping[str, str] | None = None) -> bool:
    """True when `entity_label` gives a real name rather than "an actor"."""
    kind, _, key = entity.partition(":")
    return bool(names and entity in names) or kind in ("movie", "user") or (bool(key) and not _FREEBASE_ID.match(key))


def _relation_word(relation: str) -> str:
    return relation.rsplit(".", 1)[-1].replace("_", " ")


def render_path(
    steps: list[str],
    titles: Mapping[int, str] | None = None,
    rating: float | None = None,
    names: Mapping[str, str] | None = None,
) -> str:
    """One sentence for a path's steps (alternating typed entity ids and relation names).

    >>> render_path(["user:1", "rated", "movie:1", "film.film.directed_by", "director:m.0x",
    ...              "film.film.directed_by", "movie:2"], {1: "Star Wars (1977)", 2: "Willow (1988)"}, 5)
    'You rated Star Wars (1977) 5/5; Willow (1988) shares a director with it.'
    """
    if len(steps) < 5 or len(steps) % 2 == 0:
        raise ValueError(f"a path needs user, rated movie, ..., recommended movie; got steps {steps}")
    first = entity_label(steps[2], titles, names)
    last = entity_label(steps[-1], titles, names)
    opening = f"You rated {first} {rating:g}/5" if rating is not None else f"You watched {first}"
    if len(steps) == 5:  # user -rated-> j -relation-> i
        relation = steps[3]
        if relation == SIMILAR:
            return f"{opening}; people who liked it also liked {last}."
        return f"{opening}; {last} is its {_relation_word(relation)}."
    if len(steps) == 7:  # user -rated-> j -r-> e <-r- i
        entity = steps[4]
        kind = entity.partition(":")[0].replace("_", " ")
        label = entity_label(entity, titles, names)
        if is_named(entity, names):
            shown = f"'{label}'" if kind == "tag" else label
            return f"{opening}; {last} shares the {kind} {shown} with it."
        return f"{opening}; {last} shares {label} with it."
    if len(steps) == 9 and steps[5] == SIMILAR:  # user -rated-> j -has_tag-> a -similar_to-> b <-has_tag- i
        a, b = entity_label(steps[4], titles, names), entity_label(steps[6], titles, names)
        return f"{opening}; it is tagged '{a}', and {last} is tagged '{b}', a similar tag."
    middle = ", ".join(entity_label(s, titles, names) for s in steps[4:-1:2])
    return f"{opening}; it connects to {last} through {middle}."


def step_labels(
    steps: list[str], titles: Mapping[int, str] | None = None, names: Mapping[str, str] | None = None
) -> list[str]:
    """The structured form for prompts: entities as readable labels, relations as words."""
    return [entity_label(s, titles, names) if i % 2 == 0 else _relation_word(s) for i, s in enumerate(steps)]


def movie_titles(items: pl.DataFrame) -> dict[int, str]:
    """item_id -> "Title (year)" from an items artifact."""
    year = pl.col("year").cast(pl.Int64, strict=False)
    label = (
        pl.when(year.is_not_null())
        .then(pl.col("title") + " (" + year.cast(pl.String) + ")")
        .otherwise(pl.col("title"))
    )
    return dict(items.select("item_id", label.alias("label")).iter_rows())


# --------------------------------------------------------------------------- graph


def _index(values: np.ndarray, universe: np.ndarray) -> np.ndarray:
    return np.searchsorted(universe, values)


class Graph:
    """CSR adjacency of the explanation graph (movies and entities indexed by position).

    Attributes: movie_ids (sorted int64), entities (sorted typed ids), entity_relation (the
    relation name shown for each entity), movie_entity (movies x entities CSR), entity_degree,
    incoming links in CSR form (link_indptr over movies i; link_source j, link_relation,
    link_weight: j -relation-> i), relation_edges (relation ->
    edge count), movie_popularity (train interactions per movie), tag_similar (entities x
    entities CSR of `tag -similar_to-> tag` edges, both ways; empty without them) and, when it is
    not empty, TAG_SIMILARITY as the last of `kinds` (`tag_similar_kind`).
    """

    def __init__(self, kg: pl.DataFrame, similar: pl.DataFrame, interactions: pl.DataFrame, movie_ids: np.ndarray):
        self.movie_ids = np.unique(movie_ids.astype(np.int64))
        n = len(self.movie_ids)
        movie_side = kg.filter(pl.col("head").str.starts_with("movie:"))
        movie_side = movie_side.with_columns(
            pl.col("head").str.slice(6).cast(pl.Int64, strict=False).alias("j"),
            pl.col("tail").str.starts_with("movie:").alias("to_movie"),
        ).filter(pl.col("j").is_in(self.movie_ids.tolist()))
        entity_edges = movie_side.filter(~pl.col("to_movie")).unique(["j", "tail"], keep="first", maintain_order=True)
        self.entities = np.unique(entity_edges["tail"].to_numpy().astype(str))
        relation_of = entity_edges.unique("tail", keep="first").select("tail", "relation")
        order = np.searchsorted(self.entities, relation_of["tail"].to_numpy().astype(str))
        self.entity_relation = np.empty(len(self.entities), dtype=object)
        self.entity_relation[order] = relation_of["relation"].to_numpy()
        rows = _index(entity_edges["j"].to_numpy(), self.movie_ids)
        cols = np.searchsorted(self.entities, entity_edges["tail"].to_numpy().astype(str))
        self.movie_entity = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, len(self.entities)))
        self.movie_entity.sum_duplicates()
        self.movie_entity.data[:] = 1
        self.entity_degree = np.asarray(self.movie_entity.sum(axis=0)).ravel()

        movie_links = movie_side.filter(pl.col("to_movie")).with_columns(
            pl.col("tail").str.slice(6).cast(pl.Int64, strict=False).alias("i")
        ).filter(pl.col("i").is_in(self.movie_ids.tolist()))
        links = pl.concat(
            [
                movie_links.select("j", "i", "relation", pl.lit(1.0).alias("weight")),
                similar.select(
                    pl.col("item_id").alias("j"),
                    pl.col("neighbour_item_id").alias("i"),
                    pl.lit(SIMILAR).alias("relation"),
                    pl.col("similarity").alias("weight"),
                ),
                # similarity is symmetric in meaning: i near j also links j to i
                similar.select(
                    pl.col("neighbour_item_id").alias("j"),
                    pl.col("item_id").alias("i"),
                    pl.lit(SIMILAR).alias("relation"),
                    pl.col("similarity").alias("weight"),
                ),
            ]
        ).filter(
            pl.col("i").is_in(self.movie_ids.tolist())
            & pl.col("j").is_in(self.movie_ids.tolist())
            & (pl.col("i") != pl.col("j"))
        )
        links = (
            links.sort("weight", descending=True)
            .unique(["i", "j", "relation"], keep="first")
            .sort("i", "j", "relation")
        )
        li, lj = _index(links["i"].to_numpy(), self.movie_ids), _index(links["j"].to_numpy(), self.movie_ids)
        # CSR by hand (rows sorted by i): scipy would sum a (j, i) pair linked by two relations
        self.link_indptr = np.searchsorted(li, np.arange(n + 1))
        self.link_source = lj
        self.link_relation = links["relation"].to_numpy().astype(object)
        self.link_weight = links["weight"].to_numpy().astype(np.float64)

        # path kinds: entity types (actor, genre, tag, ...) then movie-movie relations; a pattern
        # is "user-rated-movie-<kind>-movie"
        entity_types = np.array([e.partition(":")[0] for e in self.entities], dtype=object)
        link_kinds = np.unique(self.link_relation.astype(str)) if len(self.link_relation) else np.zeros(0, str)
        self.kinds = np.r_[np.unique(entity_types.astype(str)), link_kinds].astype(object)
        n_types = len(self.kinds) - len(link_kinds)
        self.entity_kind = (
            np.searchsorted(self.kinds[:n_types].astype(str), entity_types.astype(str))
            if len(self.entities)
            else np.zeros(0, np.int64)
        )
        self.link_kind = n_types + np.searchsorted(link_kinds, self.link_relation.astype(str))
        counts = kg["relation"].value_counts()
        self.relation_edges = dict(zip(counts["relation"].to_list(), counts["count"].to_list()))
        self.relation_edges[SIMILAR] = similar.height
        self._tag_similarity(kg)
        train = interactions.group_by("item_id").len()
        pop = np.zeros(n)
        ok = train.filter(pl.col("item_id").is_in(self.movie_ids.tolist()))
        pop[_index(ok["item_id"].to_numpy(), self.movie_ids)] = ok["len"].to_numpy()
        self.movie_popularity = pop


    def _tag_similarity(self, kg: pl.DataFrame) -> None:
        """`tag_similar` from the KG's tag-tag `similar_to` edges between tags some movie has."""
        n_ent = len(self.entities)
        edges = kg.filter(pl.col("head").str.starts_with("tag:") & (pl.col("relation") == SIMILAR)
                          & pl.col("tail").str.starts_with("tag:") & (pl.col("head") != pl.col("tail")))
        a = np.searchsorted(self.entities, edges["head"].to_numpy().astype(str)) if n_ent else np.zeros(0, np.int64)
        b = np.searchsorted(self.entities, edges["tail"].to_numpy().astype(str)) if n_ent else np.zeros(0, np.int64)
        known = (a < n_ent) & (b < n_ent)
        known[known] &= (self.entities[a[known]] == edges["head"].to_numpy()[known]) & (
            self.entities[b[known]] == edges["tail"].to_numpy()[known])
        a, b = a[known], b[known]
        both_ways = sp.csr_matrix((np.ones(2 * len(a), np.float32), (np.r_[a, b], np.r_[b, a])), shape=(n_ent, n_ent))
        both_ways.sum_duplicates()
        both_ways.data[:] = 1
        self.tag_similar = both_ways
        self.tag_similar_kind = -1
        if both_ways.nnz:  # appended last: the other kinds keep their indices
            self.kinds = np.r_[self.kinds, [TAG_SIMILARITY]].astype(object)
            self.tag_similar_kind = len(self.kinds) - 1


def build_graph(
    interactions: pl.DataFrame, kg: pl.DataFrame, similar: pl.DataFrame | None = None, min_rating: float = 0.0
):
    """The heterogeneous graph as a networkx MultiDiGraph (for inspection and export, not mining).

    Nodes are typed ids (`user:1`, `movie:50`, `actor:m.0bln8`); edges carry `relation` and,
    for ratings, `rating` and `timestamp`; `similar_to` edges carry `weight`.
    """
    import networkx as nx

    graph = nx.MultiDiGraph()
    train = interactions.filter((pl.col("split") == "train") & (pl.col("rating") >= min_rating))
    for user, item, rating, timestamp in train.select("user_id", "item_id", "rating", "timestamp").iter_rows():
        graph.add_edge(f"user:{user}", f"movie:{item}", relation="rated", rating=rating, timestamp=timestamp)
    for head, relation, tail in kg.select("head", "relation", "tail").iter_rows():
        graph.add_edge(head, tail, relation=relation)
    if similar is not None:
        for item, other, weight in similar.select("item_id", "neighbour_item_id", "similarity").iter_rows():
            graph.add_edge(f"movie:{item}", f"movie:{other}", relation=SIMILAR, weight=weight)
    return graph


# --------------------------------------------------------------------------- quality helpers


def moving_average_rank(values: np.ndarray, groups: np.ndarray, beta: float) -> np.ndarray:
    """Per group (rows contiguous, in order), EMA of `values` min-max normalised to [0, 1].

    EMA_0 = v_0, EMA_k = (1 - beta) EMA_{k-1} + beta v_k. A group whose EMA is constant gets 1.
    Vectorised across groups: one numpy step per position, not one Python loop per group.
    """
    n = len(values)
    out = np.empty(n, dtype=np.float64)
    if n == 0:
        return out
    values = values.astype(np.float64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    lengths = np.diff(np.r_[starts, n])
    position = np.arange(n) - np.repeat(starts, lengths)
    by_position = np.argsort(position, kind="stable")
    bounds = np.searchsorted(position[by_position], np.arange(lengths.max() + 1))
    out[starts] = values[starts]
    for k in range(1, lengths.max()):
        rows = by_position[bounds[k] : bounds[k + 1]]
        out[rows] = (1.0 - beta) * out[rows - 1] + beta * values[rows]
    group = np.repeat(np.arange(len(starts)), lengths)
    lo = np.minimum.reduceat(out, starts)[group]
    hi = np.maximum.reduceat(out, starts)[group]
    span = hi - lo
    return np.where(span > 0, (out - lo) / np.where(span > 0, span, 1.0), 1.0)


# --------------------------------------------------------------------------- mining


def _member(keys: np.ndarray, sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pos = np.searchsorted(sorted_keys, keys)
    pos = np.minimum(pos, len(sorted_keys) - 1)
    return (sorted_keys[pos] == keys) if len(sorted_keys) else np.zeros(len(keys), bool), pos


def _expand(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows with [start, start+count) ranges: (row index per element, element position)."""
    owner = np.repeat(np.arange(len(counts)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, np.repeat(starts, counts) + offsets


def mine(
    cfg: PathsConfig,
    graph: Graph,
    rec: Recommender,
    recs: pl.DataFrame,
    rated: pl.DataFrame,
) -> pl.DataFrame:
    """Candidate paths for recommendations (user_id, item_id, rank), scored and ranked.

    `rated`: the users' train interactions usable as links (user_id, item_id, rating, timestamp).
    Returns one row per kept path with its components (see module docstring), at most
    `cfg.top_p` per recommendation.
    """
    movies = graph.movie_ids
    n_movies, n_ent = len(movies), len(graph.entities)
    r_lo, r_hi = (rated["rating"].min(), rated["rating"].max()) if rated.height else (0.0, 1.0)
    r_span = (r_hi - r_lo) or 1.0
    rated = rated.filter(pl.col("item_id").is_in(movies.tolist()))
    user_ids = np.unique(rated["user_id"].to_numpy())
    u_idx = np.searchsorted(user_ids, rated["user_id"].to_numpy())
    m_idx = _index(rated["item_id"].to_numpy(), movies)
    order = np.lexsort((m_idx, u_idx))
    rated_keys = u_idx[order].astype(np.int64) * n_movies + m_idx[order]
    rated_rating = rated["rating"].to_numpy().astype(np.float64)[order]
    rated_time = rated["timestamp"].to_numpy().astype(np.float64)[order]

    recs = recs.filter(pl.col("user_id").is_in(user_ids.tolist()) & pl.col("item_id").is_in(movies.tolist()))
    p_user = np.searchsorted(user_ids, recs["user_id"].to_numpy())
    p_item = _index(recs["item_id"].to_numpy(), movies)
    max_count = max(graph.relation_edges.values()) if graph.relation_edges else 1
    commonness = {r: math.log1p(c) / math.log1p(max_count) for r, c in graph.relation_edges.items()}
    specificity = 1.0 - np.log(np.maximum(graph.entity_degree, 1)) / math.log(max(n_movies, 2))

    parts = []
    # 2 hops: u -rated-> j -link-> i  (links row i lists sources j)
    link_counts = np.diff(graph.link_indptr)[p_item]
    owner, pos = _expand(graph.link_indptr[p_item], link_counts)
    j = graph.link_source[pos]
    hit, where = _member(p_user[owner].astype(np.int64) * n_movies + j, rated_keys)
    owner, pos, j, where = owner[hit], pos[hit], j[hit], where[hit]
    link_common = np.array([commonness.get(r, 0.0) for r in graph.kinds])[graph.link_kind]
    parts.append(
        dict(
            pair=owner, j=j, middle=np.full(len(owner), -1), middle2=np.full(len(owner), -1),
            hops=np.full(len(owner), 2), hop=graph.link_weight[pos],
            rating=rated_rating[where], named=np.ones(len(owner)), common=link_common[pos], kind=graph.link_kind[pos],
        )
    )

    # 3 hops: u -rated-> j -r-> e <-r- i, a batch of users at a time
    if cfg.max_hops >= 3 and n_ent:
        ent_named = np.array([is_named(e) for e in graph.entities], dtype=np.float64) * 0.5 + 0.5
        ent_common = np.array([commonness.get(r, 0.0) for r in graph.entity_relation])
        me = graph.movie_entity
        pair_order = np.argsort(p_user, kind="stable")
        rated_user = rated_keys // n_movies
        batch = max(1, min(_USER_BATCH, _MASK_CELLS // n_ent))
        needed = np.zeros(batch * n_ent, dtype=bool)  # (user in batch, entity) pairs asked for
        for lo in range(0, len(user_ids), batch):
            hi = min(lo + batch, len(user_ids))
            # pairs of these users x entities of their recommended movie
            sel = pair_order[np.searchsorted(p_user[pair_order], lo) : np.searchsorted(p_user[pair_order], hi)]
            pi = p_item[sel]
            which, epos = _expand(me.indptr[pi], np.diff(me.indptr)[pi])
            pe = me.indices[epos]
            pkey = (p_user[sel][which] - lo).astype(np.int64) * n_ent + pe
            needed[pkey] = True
            # (u, e, j) for every rated j of these users and every needed entity e of j
            r_lo_i, r_hi_i = np.searchsorted(rated_user, [lo, hi])
            rj = rated_keys[r_lo_i:r_hi_i] % n_movies
            ru = rated_user[r_lo_i:r_hi_i] - lo
            which_r, tpos = _expand(me.indptr[rj], np.diff(me.indptr)[rj])
            key = ru[which_r].astype(np.int64) * n_ent + me.indices[tpos]
            wanted = needed[key]
            needed[pkey] = False
            which_r, key = which_r[wanted], key[wanted]
            t_movie, t_rating = rj[which_r], rated_rating[r_lo_i:r_hi_i][which_r]
            t_time = rated_time[r_lo_i:r_hi_i][which_r]
            srt = np.lexsort((-t_time, -t_rating, key))  # best rated, then most recent first
            key, t_movie, t_rating = key[srt], t_movie[srt], t_rating[srt]
            keep = _rank_sorted(key) < cfg.max_links_per_entity
            key, t_movie, t_rating = key[keep], t_movie[keep], t_rating[keep]
            start = np.searchsorted(key, pkey, side="left")
            count = np.searchsorted(key, pkey, side="right") - start
            w2, tpos = _expand(start, count)
            pair = sel[which[w2]]
            jj = t_movie[tpos]
            ok = jj != p_item[pair]
            pair, jj, ee, rr = pair[ok], jj[ok], pe[w2][ok], t_rating[tpos][ok]
            parts.append(
                dict(
                    pair=pair, j=jj, middle=ee, middle2=np.full(len(pair), -1), hops=np.full(len(pair), 3),
                    hop=specificity[ee], rating=rr,
                    named=ent_named[ee], common=ent_common[ee], kind=graph.entity_kind[ee],
                )
            )

    if cfg.max_hops >= 4 and graph.tag_similar.nnz:
        parts.append(_tag_similarity_candidates(graph, p_user, p_item, rated_keys, rated_rating, rated_time,
                                                specificity, commonness.get(SIMILAR, 0.0)))

    cand = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    log.debug("candidates %s", [len(p["pair"]) for p in parts])
    pair, j = cand["pair"], cand["j"]
    affinity = np.clip(item_affinity(rec, movies[j], movies[p_item[pair]]), 0.0, 1.0)
    rating_strength = (cand["rating"] - r_lo) / r_span
    credibility = (rating_strength + affinity + np.clip(cand["hop"], 0, 1)) / 3.0
    readability = (2.0 / cand["hops"] + cand["named"] + cand["common"]) / 3.0
    base = cfg.weight_credibility * credibility + cfg.weight_readability * readability

    # one path per (pair, middle entity, tag pair or link kind): the most credible linking movie
    slot = np.where(cand["middle"] >= 0, cand["middle"], n_ent + cand["kind"])
    tag_pair = cand["middle2"] >= 0
    slot[tag_pair] = n_ent + len(graph.kinds) + cand["middle2"][tag_pair] * n_ent + cand["middle"][tag_pair]
    slots = n_ent + len(graph.kinds) + (n_ent * n_ent if tag_pair.any() else 0)
    keep = _rank_within(pair * slots + slot, (j, -base)) == 0
    keep &= _rank_within_masked(pair, (j, -base), keep) < cfg.max_paths_per_pair
    cand = {k: v[keep] for k, v in cand.items()}
    pair, j, base, credibility, readability = cand["pair"], cand["j"], base[keep], credibility[keep], readability[keep]
    best_of_kind = _rank_within(pair * len(graph.kinds) + cand["kind"], (j, -base)) == 0
    first, novel = _first_paths(pair, cand["kind"], base, best_of_kind, recs["user_id"].to_numpy(),
                                recs["rank"].to_numpy(), cfg.weight_diversity)
    diversity = novel.astype(np.float64)
    score = base + cfg.weight_diversity * diversity
    # the first path, then the best path of each other pattern, then the rest; by score within each
    tier = np.where(first, 0, np.where(best_of_kind, 1, 2))
    path_rank = _rank_within(pair, (j, -score, tier)) + 1
    top = path_rank <= cfg.top_p
    return pl.DataFrame(
        {
            "user_id": recs["user_id"].to_numpy()[pair[top]],
            "item_id": recs["item_id"].to_numpy()[pair[top]],
            "rank": recs["rank"].to_numpy()[pair[top]].astype(np.int64),
            "linking_item_id": movies[j[top]],
            "middle": cand["middle"][top].astype(np.int64),
            "middle2": cand["middle2"][top].astype(np.int64),
            "kind": graph.kinds[cand["kind"][top]],
            "rating": cand["rating"][top],
            "credibility": credibility[top],
            "readability": readability[top],
            "diversity": diversity[top],
            "score": score[top],
            "path_rank": path_rank[top].astype(np.int64),
        },
        schema=_PATH_SCHEMA,
    )


def _tag_similarity_candidates(graph: Graph, p_user: np.ndarray, p_item: np.ndarray, rated_keys: np.ndarray,
                               rated_rating: np.ndarray, rated_time: np.ndarray, specificity: np.ndarray,
                               commonness: float) -> dict[str, np.ndarray]:
    """4-hop candidates u -rated-> j -has_tag-> a -similar_to-> b <-has_tag- i of every pair
    (p_user, p_item): for each tag b of i and each tag a similar to it, the user's best rated,
    then most recent, movie j tagged a. `middle` is a, `middle2` is b (entity indices)."""
    me, similar, n_ent, n_movies = graph.movie_entity, graph.tag_similar, len(graph.entities), len(graph.movie_ids)
    # (user, tag a) -> the user's best linking movie: every rated movie's tags, best first
    rated_user, rated_movie = rated_keys // n_movies, rated_keys % n_movies
    owner, pos = _expand(me.indptr[rated_movie], np.diff(me.indptr)[rated_movie])
    tag_key = rated_user[owner] * n_ent + me.indices[pos]
    order = np.lexsort((-rated_time[owner], -rated_rating[owner], tag_key))
    first = _rank_sorted(tag_key[order]) == 0
    best_key, best = tag_key[order][first], owner[order][first]
    # (pair, tag b of i, tag a similar to b)
    pair, pos = _expand(me.indptr[p_item], np.diff(me.indptr)[p_item])
    b = me.indices[pos]
    which, pos = _expand(similar.indptr[b], np.diff(similar.indptr)[b])
    pair, b, a = pair[which], b[which], similar.indices[pos]
    hit, where = _member(p_user[pair].astype(np.int64) * n_ent + a, best_key)
    pair, a, b, linking = pair[hit], a[hit], b[hit], best[where[hit]]
    j = rated_movie[linking]
    ok = j != p_item[pair]
    pair, a, b, j, linking = pair[ok], a[ok], b[ok], j[ok], linking[ok]
    return dict(pair=pair, j=j, middle=a, middle2=b, hops=np.full(len(pair), 4),
                hop=(specificity[a] + specificity[b]) / 2, rating=rated_rating[linking], named=np.ones(len(pair)),
                common=np.full(len(pair), commonness), kind=np.full(len(pair), graph.tag_similar_kind))


def _first_paths(pair: np.ndarray, kind: np.ndarray, base: np.ndarray, best_of_kind: np.ndarray,
                 rec_user: np.ndarray, rec_rank: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(first, novel) masks over the candidates: the first (chosen) path of every recommendation,
    and the best paths of a pattern that the user's higher-ranked recommendations did not get first.

    Greedy over each user's recommendations in rank order: among the best path of each pattern,
    the first is the one with the highest base score plus `weight` if its pattern is new for the
    user (Sorted Explanation Paths' diversity, which raises ETD).
    """
    first, novel = np.zeros(len(pair), bool), np.zeros(len(pair), bool)
    candidates = np.flatnonzero(best_of_kind)
    candidates = candidates[np.lexsort((-base[candidates], rec_rank[pair[candidates]], rec_user[pair[candidates]]))]
    bounds = np.flatnonzero(np.diff(pair[candidates])) + 1
    used: set[int] = set()
    user = None
    for group in np.split(candidates, bounds) if len(candidates) else ():
        if rec_user[pair[group[0]]] != user:
            user, used = rec_user[pair[group[0]]], set()
        new = np.array([k not in used for k in kind[group].tolist()])
        novel[group] = new
        pick = group[np.argmax(base[group] + weight * new)]
        first[pick] = True
        used.add(int(kind[pick]))
    return first, novel


def _rank_sorted(group: np.ndarray) -> np.ndarray:
    """0-based position of each element within its run of equal values (input sorted)."""
    if len(group) == 0:
        return np.zeros(0, np.int64)
    starts = np.r_[0, np.flatnonzero(group[1:] != group[:-1]) + 1]
    return np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))


def _rank_within(group: np.ndarray, keys: tuple[np.ndarray, ...]) -> np.ndarray:
    """0-based rank of each element inside its group, ordered by lexsort `keys` (last = primary)."""
    order = np.lexsort(keys + (group,))
    rank = np.empty(len(group), np.int64)
    rank[order] = _rank_sorted(group[order])
    return rank


def _rank_within_masked(group: np.ndarray, keys: tuple[np.ndarray, ...], mask: np.ndarray) -> np.ndarray:
    """`_rank_within` over the elements where `mask` holds; the others get a huge rank."""
    rank = np.full(len(group), np.iinfo(np.int64).max)
    rank[mask] = _rank_within(group[mask], tuple(k[mask] for k in keys))
    return rank


_PATH_SCHEMA = {
    "user_id": pl.Int64, "item_id": pl.Int64, "rank": pl.Int64, "linking_item_id": pl.Int64, "middle": pl.Int64,
    "middle2": pl.Int64,
    "kind": pl.String, "rating": pl.Float64, "credibility": pl.Float64, "readability": pl.Float64,
    "diversity": pl.Float64, "score": pl.Float64, "path_rank": pl.Int64,
}


def finish_paths(
    frame: pl.DataFrame, graph: Graph, titles: Mapping[int, str], names: Mapping[str, str] | None
) -> pl.DataFrame:
    """Add steps, pattern and text to mined paths (the contract columns of `paths.parquet`).

    The text is `render_path` of each row, built column-wise (labels computed once per entity
    and movie); tests check that both give the same sentences.
    """
    ents = graph.entities
    middle = frame["middle"].to_numpy()
    has_entity = middle >= 0
    m = np.maximum(middle, 0)
    ent_kind = np.array([e.partition(":")[0] for e in ents], dtype=object)
    ent_label = np.array([entity_label(e, titles, names) for e in ents], dtype=object)
    ent_named = np.array([is_named(e, names) for e in ents], dtype=bool)
    if len(ents) == 0:
        ent_kind = ent_label = np.array([""], dtype=object)
        ent_named = np.array([False])
    # phrase for the middle hop, as in render_path
    kind_word = np.array([k.replace("_", " ") for k in ent_kind], dtype=object)
    shown = np.where(kind_word == "tag", "'" + ent_label.astype(str) + "'", ent_label.astype(str))
    ent_phrase = np.where(ent_named, "the " + kind_word.astype(str) + " " + shown, ent_label.astype(str))
    kinds = frame["kind"].to_numpy().astype(str)
    link_phrase = np.where(
        kinds == SIMILAR,
        "",
        np.char.add("is its ", np.array([_relation_word(k) for k in kinds], dtype=str)) if len(kinds) else kinds,
    )
    first = np.array(
        [entity_label(f"movie:{j}", titles, names) for j in frame["linking_item_id"].to_list()], dtype=object
    )
    last = np.array([entity_label(f"movie:{i}", titles, names) for i in frame["item_id"].to_list()], dtype=object)
    rating = frame["rating"].to_list()
    opening = np.array(
        [f"You rated {a} {r:g}/5" if r is not None and not math.isnan(r) else f"You watched {a}"
         for a, r in zip(first, rating)],
        dtype=object,
    )
    text = np.where(
        has_entity,
        opening + "; " + last + " shares " + ent_phrase[m].astype(object) + " with it.",
        np.where(
            kinds == SIMILAR,
            opening + "; people who liked it also liked " + last + ".",
            opening + "; " + last + " " + link_phrase.astype(object) + ".",
        ),
    )
    # 4-hop paths through similar tags (render_path's sentence)
    tag_pair = frame["middle2"].to_numpy() >= 0
    m2 = np.maximum(frame["middle2"].to_numpy(), 0)
    text[tag_pair] = (opening[tag_pair] + "; it is tagged '" + ent_label[m][tag_pair].astype(object) + "', and "
                      + last[tag_pair] + " is tagged '" + ent_label[m2][tag_pair].astype(object) + "', a similar tag.")
    relation = graph.entity_relation[m] if len(ents) else np.full(len(frame), "", dtype=object)
    user = pl.lit("user:") + pl.col("user_id").cast(pl.String)
    j = pl.lit("movie:") + pl.col("linking_item_id").cast(pl.String)
    i = pl.lit("movie:") + pl.col("item_id").cast(pl.String)
    frame = frame.with_columns(
        _entity=pl.Series(np.where(has_entity, ents[m] if len(ents) else "", "").astype(str)),
        _entity2=pl.Series(np.where(tag_pair, ents[m2] if len(ents) else "", "").astype(str)),
        _relation=pl.Series(np.where(has_entity, relation, kinds).astype(str)),
        _relation2=pl.Series(np.where(tag_pair, graph.entity_relation[m2] if len(ents) else "", "").astype(str)),
    )
    steps = (pl.when(pl.col("middle2") >= 0)
             .then(pl.concat_list(user, pl.lit("rated"), j, pl.col("_relation"), pl.col("_entity"), pl.lit(SIMILAR),
                                  pl.col("_entity2"), pl.col("_relation2"), i))
             .when(pl.col("middle") >= 0)
             .then(pl.concat_list(user, pl.lit("rated"), j, pl.col("_relation"), pl.col("_entity"),
                                  pl.col("_relation"), i))
             .otherwise(pl.concat_list(user, pl.lit("rated"), j, pl.col("_relation"), i)))
    return frame.with_columns(
        pattern=pl.when(pl.col("middle") >= 0)
        .then(pl.lit("user-rated-movie-") + pl.col("kind") + pl.lit("-movie"))
        .otherwise(pl.lit("user-rated-movie-") + pl.col("kind").str.split(".").list.last() + pl.lit("-movie")),
        steps=steps,
        text=pl.Series(text.astype(str), dtype=pl.String),
    ).drop("_entity", "_entity2", "_relation", "_relation2")


def path_quality(
    paths: pl.DataFrame, graph: Graph, interactions: pl.DataFrame, recs: pl.DataFrame, beta: float
) -> tuple[pl.DataFrame, pl.DataFrame, dict]:
    """LIR, SEP (per path) and per-user LIR/SEP/ETD of the chosen (rank-1) paths.

    Returns (paths with `lir` and `sep` columns, per-user table, summary dict).
    """
    train = interactions.filter(pl.col("split") == "train").sort("user_id", "timestamp", "item_id")
    lir = moving_average_rank(train["timestamp"].to_numpy(), train["user_id"].to_numpy(), beta)
    lir_table = (
        train.select("user_id", pl.col("item_id").alias("linking_item_id"))
        .with_columns(lir=pl.Series(lir))
        .unique(["user_id", "linking_item_id"], keep="last")
    )
    # SEP: entities of each type ranked by degree; movies (2-hop middle) by train popularity
    kinds = np.array([e.partition(":")[0] for e in graph.entities] + ["movie"] * len(graph.movie_ids))
    degree = np.r_[graph.entity_degree, graph.movie_popularity]
    order = np.lexsort((degree, kinds))
    sep = np.empty(len(degree))
    sep[order] = moving_average_rank(degree[order], kinds[order], beta)
    ent_sep, movie_sep = sep[: len(graph.entities)], sep[len(graph.entities) :]
    middle = paths["middle"].to_numpy()
    j_idx = np.searchsorted(graph.movie_ids, paths["linking_item_id"].to_numpy())
    path_sep = np.where(middle >= 0, ent_sep[np.maximum(middle, 0)], movie_sep[np.minimum(j_idx, len(movie_sep) - 1)])
    paths = paths.with_columns(sep=pl.Series(path_sep, dtype=pl.Float64)).join(
        lir_table, on=["user_id", "linking_item_id"], how="left"
    )

    n_types = len(set(kinds[: len(graph.entities)].tolist())) + len(set(graph.link_relation.tolist())) \
        + (graph.tag_similar_kind >= 0)
    chosen = paths.filter(pl.col("path_rank") == 1)
    per_user = (
        recs.group_by("user_id").agg(recommendations=pl.len())
        .join(
            chosen.group_by("user_id").agg(
                explained=pl.len(),
                LIR=pl.col("lir").mean(),
                SEP=pl.col("sep").mean(),
                types=pl.col("pattern").n_unique(),
            ),
            on="user_id",
            how="left",
        )
        .with_columns(pl.col("explained").fill_null(0))
        .with_columns(ETD=pl.col("types") / pl.min_horizontal(pl.col("explained"), pl.lit(max(n_types, 1))))
        .drop("types")
        .sort("user_id")
    )
    explained = per_user.filter(pl.col("explained") > 0)
    summary = {
        "recommendations": recs.height,
        "explained": int(chosen.height),
        "coverage": chosen.height / recs.height if recs.height else float("nan"),
        "paths": paths.height,
        "paths_per_recommendation": paths.height / recs.height if recs.height else float("nan"),
        "LIR": float(explained["LIR"].mean()) if explained.height else float("nan"),
        "SEP": float(explained["SEP"].mean()) if explained.height else float("nan"),
        "ETD": float(explained["ETD"].mean()) if explained.height else float("nan"),
        "path_types_possible": n_types,
        "patterns_of_chosen": dict(chosen["pattern"].value_counts(sort=True).iter_rows()),
    }
    return paths, per_user, summary


# --------------------------------------------------------------------------- stage


def _read(path: Path, kind: str) -> pl.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing")
    frame = pl.read_parquet(path)
    check_columns(frame, kind, path)
    return frame


@reads(paths=ALL)
def mine_paths(out: Path, *, paths: PathsConfig, data: Path, recommender: Path) -> None:
    """Stage: explanation paths for every recommendation, their scores and quality metrics."""
    cfg = paths
    started = time.perf_counter()
    interactions = read_interactions(data)
    items = _read(data / "items.parquet", "items")
    kg = _read(data / "kg.parquet", "kg")
    recs = _read(recommender / "recommendations.parquet", "recommendations")
    rec = load_recommender(recommender / "model")
    names = None
    if (data / "entities.parquet").exists():  # optional (entity, name), e.g. IMDb people names
        names = dict(pl.read_parquet(data / "entities.parquet").select("entity", "name").iter_rows())

    movie_ids = np.unique(np.r_[items["item_id"].to_numpy(), interactions["item_id"].to_numpy()])
    train = interactions.filter(pl.col("split") == "train")
    graph = Graph(kg, item_neighbours(rec, cfg.similar_k), train, movie_ids)
    rated = train.filter(pl.col("rating") >= cfg.min_rating).select("user_id", "item_id", "rating", "timestamp")
    mined = mine(cfg, graph, rec, recs.select("user_id", "item_id", "rank"), rated)
    mined = finish_paths(mined, graph, movie_titles(items), names)
    mined, per_user, summary = path_quality(mined, graph, interactions, recs, cfg.quality_beta)
    seconds = round(time.perf_counter() - started, 3)
    speed = round(recs.height / max(seconds, 1e-9), 1)
    write_run_facts(out, seconds=seconds, recommendations_per_second=speed)

    mined.select(
        "user_id", "item_id", "rank", "pattern", "steps", "score", "text", "credibility", "readability", "diversity",
        "linking_item_id", "rating", "lir", "sep", "path_rank",
    ).sort("user_id", "rank", "path_rank").write_parquet(out / "paths.parquet")
    per_user.write_parquet(out / "path_quality.parquet")
    (out / "path_quality.json").write_text(json.dumps(summary, indent=2))
    log.info("mine_paths: coverage %.3f, %s recs/s", summary["coverage"], speed)
