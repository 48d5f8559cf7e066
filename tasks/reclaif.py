"""RecLAIF (He et al. 2025): the language model as the recommender, judged and improved by DPO.

`task: recommend` runs these stages after the evidence stages (data, recommender, paths):

1. `build_candidate_sets`: per sampled user, the held-out next movie plus M negatives (uniform,
   popularity-weighted, or hard negatives from the classic recommender), shuffled, deterministic
   by seed. Train users predict their valid item, eval users their test item.
2. `reclaif_teacher`: the teacher LLM answers every train set in RecLAIF's format (key
   preferences, then the top k candidates with a reason each); an answer that breaks the format
   is re-asked with the reason fed back; valid answers are the SFT data (`sft.jsonl`, trl
   conversational). Or `reclaif_template_teacher` (`reclaif.teacher: template`, the embedded
   default): the classic recommender ranks the set and `template_answer` writes its top k in the
   same format, with preferences and reasons taken from the history's genres and years.
3. `train_sft`, then per round r (Algorithm 1): `reclaif_sample_pairs` draws two answers per train
   set from the current student, `reclaif_judge_pairs` picks one with RecLAIF's judge (0-5
   relevance, diversity, explainability, then A or B; the next movie is shown to it), and
   `train_dpo` trains the round-r student (tasks/train.py).
4. `reclaif_recommend`: every LLM recommender (base, SFT, DPO rounds) answers the eval sets.
5. `reclaif_evaluate`: ValidRatio, Hit@1, Hit@3, NDCG@3, Precision@K, diversity and the
   explainability score for the LLM recommenders, and the classic recommenders (item-KNN, ALS,
   BPR, popularity) scored on the very same candidate sets, with bootstrap CIs over eval users.

Reading an answer (`parse_recommendation`): each listed movie is mapped to a candidate by its
title, exactly (normalised: case, punctuation, year, leading article, "Title, The"), else by
fuzzy similarity (difflib) above `answer.fuzzy_threshold`. An answer is valid when it has key
preferences and a list that names exactly k different candidates and nothing else; a movie
that is not a candidate, a candidate named twice, too few or too many movies, or no
preferences make it invalid (ValidRatio). Relevance is measured on every answer, valid or not,
from the candidates it did name, in its order (an answer naming none misses).

The candidate sets (`CandidateSet`, `read_candidate_sets`, `display_title`) and the comparison's
`METRICS` are in recxplain/reclaif.py, through which the report reads them too.

The judge (`judge_recommendation_pairs`) reuses recxplain/judging.py: the LLM verdict, both
orders and order consistency come from `judge_explanation_pairs` with the RecLAIF template; the
`rubric` (`answer_scores`) is the verifiable counterpart for recommendation answers: relevance
from the rank of the next movie among the picks, diversity from the picks' genres,
explainability from the preferences and reasons given; `ensemble` mixes them as the explanation
judge does.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recxplain.checks import normalize, repetition, title_forms, words
from recxplain.config import (
    JudgeConfig,
    PairsConfig,
    ReclaifAnswerConfig,
    ReclaifCandidatesConfig,
    ReclaifEvaluationConfig,
    RecommenderConfig,
    TeacherConfig,
    TrainingConfig,
)
from recxplain.explainers import expand_rounds, explainer_llm
from recxplain.judging import (
    CandidateScores,
    PairJudgement,
    ensemble_verdict,
    explainability_scores,
    judge_explanation_pairs,
    judge_stats,
    vote_can_change_verdict,
)
from recxplain.llm import load_chat_model, release_models
from recxplain.metrics import load_embedder, mean_cosine_distance
from recxplain.models import pair_sampler_llm
from recxplain.prompts import (
    ChatModel,
    Templates,
    generate_parsed,
    judge_prompts,
    render_messages,
    usage_counts,
    validity_stats,
)
from recxplain.reclaif import METRICS, CandidateSet, display_title, read_candidate_sets
from recxplain.recommenders import (
    fit_recommender,
    load_recommender,
    ranks_to_metrics,
    read_interactions,
    recommend,
    score_candidates,
)
from recxplain.schemas import Movie
from recxplain.stage import ALL, reads
from recxplain.stats import bootstrap_ci

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Candidate sets


def _title_key(title: str) -> str:
    return normalize(title).strip()


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
    seen_titles = {_title_key(titles[target])}
    negatives: list[int] = []
    for item in order.tolist():
        if len(negatives) == m:
            break
        key = _title_key(titles[item])
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


@reads(candidates=ALL)
def build_candidate_sets(out: Path, *, candidates: ReclaifCandidatesConfig, data: Path, recommender: Path) -> None:
    """Write candidates.jsonl (CandidateSet per line, eval sets first) and stats.json.

    The catalogue is the recommender's (movies with a train interaction), so every classic
    baseline can score every negative; the target itself may lie outside it (then no classic
    model can rank it). Negatives are movies the user never interacted with in any split.
    """
    cfg = candidates
    interactions = read_interactions(Path(data))
    items_path = Path(data) / "items.parquet"
    if not items_path.exists():
        raise FileNotFoundError(f"{items_path}: missing (expected the prepare_data output folder)")
    items = pl.read_parquet(items_path)
    movies = {
        row["item_id"]: Movie(item_id=row["item_id"], title=row["title"], year=row["year"], genres=row["genres"] or [])
        for row in items.select("item_id", "title", "year", "genres").iter_rows(named=True)
    }
    titles = {item: movie.title for item, movie in movies.items()}
    unknown = set(interactions["item_id"].unique().to_list()) - movies.keys()
    if unknown:
        raise ValueError(f"{Path(data) / 'interactions.parquet'}: items {sorted(unknown)[:5]} are not in {items_path}")
    rec = load_recommender(Path(recommender) / "model")
    catalogue = rec.item_ids
    popularity = rec.popularity

    ordered = interactions.sort("user_id", "timestamp", "item_id")
    train = ordered.filter(pl.col("split") == "train")
    first = {
        split: dict(ordered.filter(pl.col("split") == split).unique("user_id", keep="first", maintain_order=True)
                    .select("user_id", "item_id").iter_rows())
        for split in ("valid", "test")
    }
    with_history = set(train["user_id"].unique().to_list())
    eval_users, train_users = pick_users(with_history & first["test"].keys(), with_history & first["valid"].keys(), cfg)
    chosen = eval_users + train_users

    rows = ordered.filter(pl.col("user_id").is_in(chosen))
    seen = {u: set(g["item_id"].to_list()) for (u,), g in rows.group_by("user_id")}
    by_user = {u: g for (u,), g in rows.group_by("user_id")}
    hard_top: dict[int, np.ndarray] = {}
    if cfg.sampler == "hard":
        extra = max((len(seen[u]) for u in chosen), default=0)
        top = recommend(rec, cfg.hard_pool + extra + 1, user_ids=chosen)
        for (u,), g in top.sort("user_id", "rank").group_by("user_id", maintain_order=True):
            ids = [i for i in g["item_id"].to_list() if i not in seen[u]][: cfg.hard_pool]
            hard_top[u] = rec.item_cols(ids)

    sets, short = [], 0
    for split, users in (("eval", eval_users), ("train", train_users)):
        for user in users:
            frame = by_user[user]
            target = first["test" if split == "eval" else "valid"][user]
            before = (
                frame.filter(pl.col("split") == "train")
                if split == "train"
                else frame.filter(pl.col("split") != "test")
            )
            history = before["item_id"].to_list()[-cfg.history_length:]
            rng = np.random.default_rng([cfg.seed, user])  # per user: stable when other users change
            pool_mask = np.ones(len(catalogue), bool)
            seen_cols = rec.item_cols(list(seen[user]))
            pool_mask[seen_cols[seen_cols >= 0]] = False
            pool = np.flatnonzero(pool_mask)
            order = negative_order(cfg.sampler, pool, rng, popularity=popularity, hard=hard_top.get(user))
            ids, drawn = draw_candidates(target, catalogue[order], titles, cfg.negatives, rng)
            short += drawn < cfg.negatives
            sets.append(CandidateSet(
                set_id=f"{split}-{user}", split=split, user_id=user, history=[movies[i] for i in history],
                candidates=[movies[i] for i in ids], target=movies[target],
            ))
    with open(Path(out) / "candidates.jsonl", "w") as fh:
        for s in sets:
            fh.write(s.model_dump_json() + "\n")
    in_catalogue = set(catalogue.tolist())
    stats = {
        "sampler": cfg.sampler,
        "negatives": cfg.negatives,
        "sets": {"eval": len(eval_users), "train": len(train_users)},
        "sets_short_of_negatives": int(short),
        "targets_outside_catalogue": sum(s.target.item_id not in in_catalogue for s in sets),
        "mean_history": round(float(np.mean([len(s.history) for s in sets])), 2),
        "mean_target_position": round(float(np.mean([[c.item_id for c in s.candidates].index(s.target.item_id) + 1
                                                     for s in sets])), 2),
    }
    (Path(out) / "stats.json").write_text(json.dumps(stats, indent=2))


# ---------------------------------------------------------------------------------------------
# Prompts


def _shown(movies: Sequence[Movie]) -> list[dict]:
    return [{"title": display_title(m)} for m in movies]


def recommend_messages(cs: CandidateSet, answer: ReclaifAnswerConfig, templates: Templates) -> list[dict]:
    """The RecLAIF recommender prompt for one candidate set (teacher, students and evaluation)."""
    return render_messages(answer.prompt, templates, history=_shown(cs.history), candidates=_shown(cs.candidates),
                           k=wanted_picks(cs, answer))


def judge_context(cs: CandidateSet) -> dict[str, Any]:
    """Template variables of RecLAIF's judge and explainability prompts for one candidate set."""
    return {
        "history": _shown(cs.history),
        "candidates": _shown(cs.candidates),
        "label": {"title": display_title(cs.target)},
    }


def wanted_picks(cs: CandidateSet, answer: ReclaifAnswerConfig) -> int:
    return min(answer.top_k, len(cs.candidates))


# ---------------------------------------------------------------------------------------------
# Reading an answer


@dataclass
class RecommendationAnswer:
    """A recommender answer as parsed against its candidates.

    Attributes:
        preferences: the key preferences stated.
        picks: item ids of the candidates named, in the answer's order, each once.
        reasons: the reason given with each pick ("" when none).
        fuzzy: how many picks matched only by fuzzy title similarity.
        not_candidates: listed titles that match no candidate.
        duplicates: candidates named again (ignored after their first mention).
        problems: why the answer is invalid; empty when it is valid.
    """

    preferences: list[str] = field(default_factory=list)
    picks: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    fuzzy: int = 0
    not_candidates: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    def rank_of(self, item_id: int) -> float:
        """1-based position of `item_id` among the picks; inf when not picked."""
        return float(self.picks.index(item_id) + 1) if item_id in self.picks else math.inf


_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\(?\d{1,2}[.):]|#\d{1,2}[.):]?)\s*")
_DASH = re.compile(r"\s+[-\u2013\u2014]+\s+|\s*[\u2013\u2014]\s*|\s+-(?=[A-Z])")
_PREFERENCES = re.compile(r"^\W*key\s+preferences?\b\W*(.*)$", re.IGNORECASE)
_LIST_HEADING = re.compile(r"^\W*(?:recommended\s+(?:movies?|films?|items?)|recommendations|"
                           r"top\s+\d+\s+(?:movies?|recommendations))\b",
                           re.IGNORECASE)
_PREFERENCE_LABEL = re.compile(r"^\s*preference\s*\d*\s*:\s*", re.IGNORECASE)
_YEAR = re.compile(r"\s*\(\d{4}\)")
# A candidate named by a number ("7", "#7", "[7]", "Candidate 7", "Movie 7"): the prompt lists
# candidates without numbers, so a number names none of them (never mapped by its position).
_NUMBER_REF = re.compile(r"^(?:#|no\.?\s*|(?:number|candidate|movie|option|item)\s*#?)?\[?\d{1,3}\]?[.):]?$",
                         re.IGNORECASE)
# "[6] Fargo", "6) Fargo" (brackets are gone by then): a number before a title, tried only when
# the line does not start with a candidate's title (some titles start with a number).
_NUMBER_PREFIX = re.compile(r"^#?\d{1,3}[.):]?\s+")
# A line "Reason: ..." under a pick belongs to that pick; it names no movie.
_REASON_LABELS = {"reason", "reasons", "why", "explanation", "because", "note"}
_PLACEHOLDERS = {"movie title", "description", "reason for recommendation", "title", "..."}


class _TitleIndex:
    """Candidate titles by their normalised forms (unambiguous forms only), for one candidate set."""

    def __init__(self, candidates: Sequence[Movie]):
        owners: dict[str, set[int]] = {}
        for movie in candidates:
            # Answer lines lose markdown characters (`_clean_line`), and with them the stars of
            # "M*A*S*H": index the title as it reads after that cleaning too.
            for name in {
                movie.title, display_title(movie), _clean_line(movie.title), _clean_line(display_title(movie))
            }:
                for form in title_forms(name):
                    owners.setdefault(form, set()).add(movie.item_id)
        # A form two candidates share ("star trek" before a subtitle) identifies neither.
        self.forms = sorted(((f, next(iter(o))) for f, o in owners.items() if len(o) == 1), key=lambda x: -len(x[0]))
        self.full = {m.item_id: _title_key(_YEAR.sub("", _clean_line(display_title(m)))) for m in candidates}
        self.titles = {m.item_id: display_title(m) for m in candidates}

    def at_start(self, text: str) -> int | None:
        """The candidate whose (longest) title form starts `text`."""
        padded = normalize(text)
        return next((item for form, item in self.forms if padded.startswith(f" {form} ")), None)

    def anywhere(self, text: str) -> int | None:
        """The candidate with the earliest multi-word title form anywhere in `text`."""
        padded = normalize(text)
        found = [(padded.find(f" {form} "), -len(form), item) for form, item in self.forms
                 if len(form.split()) >= 2 and f" {form} " in padded]
        return min(found)[2] if found else None

    def similar(self, name: str, threshold: float) -> int | None:
        """The candidate whose title is most similar to `name` (difflib ratio >= threshold)."""
        key = _title_key(_YEAR.sub("", name))
        if not key:
            return None
        scored = [(difflib.SequenceMatcher(None, key, full).ratio(), item) for item, full in self.full.items()]
        best, item = max(scored, default=(0.0, None))
        return item if best >= threshold else None


def _split_reason(body: str) -> tuple[str, str]:
    """(named title, reason) of an item line: at the first dash separator, else the first ': '."""
    dash = _DASH.search(body)
    if dash:
        return body[: dash.start()].strip(), body[dash.end():].strip()
    head, colon, rest = body.partition(": ")
    return (head.strip(), rest.strip()) if colon else (body.strip(), "")


def _clean_line(line: str) -> str:
    return re.sub(r"[*_`#]+", "", line).strip()


def parse_recommendation(
    text: str, candidates: Sequence[Movie], k: int, fuzzy_threshold: float = 0.85
) -> RecommendationAnswer:
    """Parse a RecLAIF answer (key preferences, then a ranked list) against its candidates.

    Never raises: what is wrong goes to `problems` (see `RecommendationAnswer`). A list line is
    a line after the list heading (or, without a heading, any bulleted or numbered line outside
    the preferences) that starts with a bullet or number or has a "Title - reason" separator;
    other lines (an introduction, a closing summary) are prose and ignored.
    """
    index = _TitleIndex(candidates)
    answer = RecommendationAnswer()
    section, heading_seen = None, False
    lines = [_clean_line(line) for line in text.splitlines()]
    for line in lines:
        if not line:
            continue
        match = _PREFERENCES.match(line)
        if match:
            section = "preferences"
            rest = _PREFERENCE_LABEL.sub("", match.group(1)).strip()
            if rest and _title_key(rest) not in _PLACEHOLDERS:
                answer.preferences.append(rest)
            continue
        if _LIST_HEADING.match(line) and (line.rstrip().endswith(":") or len(words(line)) <= 8):
            section, heading_seen = "list", True
            continue
        bulleted = bool(_BULLET.match(line))
        if section == "preferences" and (bulleted or _PREFERENCE_LABEL.match(line)):
            preference = _PREFERENCE_LABEL.sub("", _BULLET.sub("", line, count=1)).strip()
            if preference and _title_key(preference) not in _PLACEHOLDERS:
                answer.preferences.append(preference)
            continue
        if section == "list" or (not heading_seen and section != "preferences" and bulleted):
            _read_list_line(line, bulleted, index, fuzzy_threshold, answer)
    if not answer.preferences:
        answer.problems.append('no key preferences: start with "Key Preferences:" and 2-3 preferences')
    if not heading_seen:
        answer.problems.append('no "Recommended Movies (from most to least likely):" list')
    if answer.not_candidates:
        answer.problems.append(f"not among the available movies: {'; '.join(answer.not_candidates)}")
    if answer.duplicates:
        answer.problems.append(f"named more than once: {'; '.join(answer.duplicates)}")
    if len(answer.picks) != k:
        answer.problems.append(f"named {len(answer.picks)} different available movies; recommend exactly {k}")
    return answer


def _read_list_line(
    line: str, bulleted: bool, index: _TitleIndex, threshold: float, answer: RecommendationAnswer
) -> None:
    body = _BULLET.sub("", line, count=1).strip()
    body = re.sub(r"[\[\]\"\u201c\u201d]", "", body).strip()
    name, reason = _split_reason(body)
    if _title_key(name) in _REASON_LABELS:  # "Reason: ..." continues the previous pick
        if answer.reasons and not answer.reasons[-1]:
            answer.reasons[-1] = reason
        return
    if _title_key(name) in _PLACEHOLDERS:
        answer.not_candidates.append(name)
        return
    # "1. [7] Heat (1995)": a number before the title is dropped, the title decides.
    item, fuzzy = index.at_start(body), False
    if item is None:
        item = index.at_start(_NUMBER_PREFIX.sub("", body, count=1))
    if item is None:
        item = index.similar(name, threshold)
        fuzzy = item is not None
    if item is None and not _NUMBER_REF.match(name.strip()):
        item = index.anywhere(body)
        if item is not None:
            reason = body
    if item is None:
        if _NUMBER_REF.match(name.strip()):
            answer.not_candidates.append(f"{name[:20]} (a number, not a title)")
        elif bulleted or reason:  # a list line naming no candidate; prose lines are ignored
            answer.not_candidates.append(name[:80])
        return
    if item in answer.picks:
        answer.duplicates.append(index.titles[item])
        return
    answer.picks.append(item)
    answer.reasons.append(reason)
    answer.fuzzy += fuzzy


def require_valid(text: str, candidates: Sequence[Movie], k: int, fuzzy_threshold: float) -> RecommendationAnswer:
    """`parse_recommendation`, raising ValueError with the problems (a re-ask message) when invalid."""
    parsed = parse_recommendation(text, candidates, k, fuzzy_threshold)
    if not parsed.valid:
        raise ValueError("; ".join(parsed.problems))
    return parsed


# ---------------------------------------------------------------------------------------------
# Verifiable scores of an answer (the rubric judge) and the metrics


def genre_diversity(genres: Sequence[Sequence[str]]) -> float:
    """Mean pairwise Jaccard distance of the picks' genre sets (0 with fewer than two picks)."""
    pairs = list(combinations([set(g) for g in genres], 2))
    if not pairs:
        return 0.0
    return float(np.mean([1 - len(a & b) / len(a | b) if a | b else 0.0 for a, b in pairs]))


def answer_scores(parsed: RecommendationAnswer, text: str, cs: CandidateSet, k: int) -> CandidateScores:
    """RecLAIF's three criteria, 0-5, computed from a parsed answer (the `rubric` judge).

    relevance: 5 x NDCG@k of the next movie among the picks (5: ranked first). diversity:
    5 x `genre_diversity` of the picks. explainability: 5 x the mean of (2+ key preferences
    given, share of picks with a reason of 4+ words, the answer does not loop).
    """
    rank = parsed.rank_of(cs.target.item_id)
    relevance = 5.0 / math.log2(rank + 1) if rank <= k else 0.0
    genres = {m.item_id: m.genres for m in cs.candidates}
    diversity = 5.0 * genre_diversity([genres[i] for i in parsed.picks[:k]])
    reasons = [len(words(r)) >= 4 for r in parsed.reasons[:k]]
    parts = [min(len(parsed.preferences), 2) / 2, float(np.mean(reasons)) if reasons else 0.0,
             float(repetition(text) is None)]
    return CandidateScores(relevance=round(relevance, 6), diversity=round(diversity, 6),
                           explainability=round(5.0 * float(np.mean(parts)), 6))


def ranking_values(rank: float, k: int) -> dict[str, float]:
    """Hit@1, Hit@3, NDCG@3 and Precision@k of one answer from the rank of the next movie
    (recxplain.recommenders.ranks_to_metrics' definitions, one user at a time)."""
    values = ranks_to_metrics(np.array([rank]), sorted({1, 3, k}))
    return {"Hit@1": values["HR@1"], "Hit@3": values["HR@3"], "NDCG@3": values["NDCG@3"],
            f"Precision@{k}": values[f"Precision@{k}"]}


# ---------------------------------------------------------------------------------------------
# Models


def _load(cfg, artifacts_dir: Path, cache_path: Path) -> ChatModel:
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    return load_chat_model(cfg, Path(artifacts_dir), cache_path)


def _parsers(sets: Sequence[CandidateSet], answer: ReclaifAnswerConfig) -> list:
    return [partial(require_valid, candidates=cs.candidates, k=wanted_picks(cs, answer),
                    fuzzy_threshold=answer.fuzzy_threshold) for cs in sets]


# ---------------------------------------------------------------------------------------------
# Stage: the teacher's answers (SFT data)


@reads(answer=ALL, teacher=ALL, templates=("answer.prompt",))
def reclaif_teacher(
    out: Path,
    *,
    answer: ReclaifAnswerConfig,
    teacher: TeacherConfig,
    candidates: Path,
    templates: dict[str, str],
    artifacts_dir: Path,
) -> None:
    """The teacher answers every train set; write sft.jsonl (valid answers only, trl
    conversational rows with case_id = set_id), generations.parquet (every sample) and stats.json.

    Uses teacher.llm, teacher.sampling, teacher.max_parse_retries (re-asks of an invalid answer
    with its problems fed back) and teacher.best_of: with more than one sample per set, the
    valid sample with the best `answer_scores` quality is kept. Those scores know the next
    movie, so best-of is rejection sampling on the training labels (never used on eval sets).
    `templates`: `read_templates(answer.prompt)`.
    """
    out = Path(out)
    sets = read_candidate_sets(candidates, "train")
    prompts = [recommend_messages(cs, answer, templates) for cs in sets]
    model = _load(teacher.llm, artifacts_dir, out / "cache" / "teacher.sqlite")
    results = generate_parsed(model, prompts, _parsers(sets, answer), teacher.sampling, n=teacher.best_of,
                              max_retries=teacher.max_parse_retries)
    rows, kept_rows = [], 0
    with open(out / "sft.jsonl", "w") as fh:
        for cs, messages, samples in zip(sets, prompts, results, strict=True):
            k = wanted_picks(cs, answer)
            quality = [answer_scores(p.value, p.text, cs, k).quality if p.valid else None for p in samples]
            valid = [j for j, p in enumerate(samples) if p.valid]
            kept = max(valid, key=lambda j: (quality[j], -j)) if valid else None
            for j, parsed in enumerate(samples):
                rows.append({
                    "case_id": cs.set_id, "sample": j, "text": parsed.text, "valid": parsed.valid,
                    "attempts": parsed.attempts,
                    "error": parsed.errors[-1] if parsed.errors and not parsed.valid else None,
                    "quality": quality[j], "kept": j == kept, "prompt_tokens": parsed.prompt_tokens,
                    "completion_tokens": parsed.completion_tokens, "latency_s": parsed.latency_s,
                })
            if kept is not None:
                kept_rows += 1
                reply = {"role": "assistant", "content": samples[kept].text.strip()}
                fh.write(json.dumps({"messages": [*messages, reply], "case_id": cs.set_id}) + "\n")
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(out / "generations.parquet")
    samples = [p for s in results for p in s]
    stats = {
        "sets": len(sets),
        **validity_stats(samples),
        "sft_rows": kept_rows,
        "best_of": teacher.best_of,
        "model": teacher.llm.model,
        "usage": usage_counts(model),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    if kept_rows == 0:
        raise ValueError(f"reclaif_teacher: none of the teacher's {len(samples)} answers is valid "
                         f"(first problem: {samples[0].errors[-1] if samples[0].errors else 'none'}); "
                         "nothing to fine-tune on: raise teacher.sampling.max_new_tokens or teacher.max_parse_retries, "
                         "or use a stronger teacher")


def _plural(genre: str) -> str:
    return {"Comedy": "comedies", "Documentary": "documentaries", "Mystery": "mysteries",
            "Children's": "children's movies", "Film-Noir": "film noirs",
            "Sci-Fi": "science fiction movies"}.get(genre, f"{genre.lower()} movies")


def template_answer(cs: CandidateSet, ranking: Sequence[int], k: int) -> str:
    """A RecLAIF answer written from a classic recommender's ranking (the `template` teacher).

    Key preferences: the history's two most frequent genres with counts (its dominant decade
    when it has a single genre). Each of the top k picks gets a reason naming its genres and the
    most recent history movie sharing the most genres with it (title without year or alternative
    title; its own year when none shares a genre). Every statement is true of the data; nothing
    is invented. Kept terse: the student imitates it, and an answer longer than the students'
    `max_new_tokens` is cut before its last pick and counts as invalid (SmolLM2 spends a token
    per digit, so years are costly).
    """
    genres = [g for m in cs.history for g in m.genres]
    counts = {g: genres.count(g) for g in dict.fromkeys(genres)}
    top = sorted(counts, key=lambda g: -counts[g])[:2]
    n = len(cs.history)
    lines = ["Key Preferences:"]
    for i, genre in enumerate(top, 1):
        lines.append(f"- Preference {i}: {_plural(genre)} ({counts[genre]} of {n} watched)")
    decades = [m.year // 10 * 10 for m in cs.history if m.year]
    if decades and len(top) < 2:
        decade = max(dict.fromkeys(decades), key=decades.count)
        lines.append(f"- Preference {len(top) + 1}: {decade}s movies ({decades.count(decade)} of {n} watched)")
    lines += ["", "Recommended Movies (from most to least likely):"]
    by_id = {m.item_id: m for m in cs.candidates}
    for rank, item in enumerate(ranking[:k], 1):
        movie = by_id[item]
        shared = [(len(set(movie.genres) & set(h.genres)), i, h) for i, h in enumerate(cs.history)]
        overlap, _, like = max(shared, key=lambda x: (x[0], x[1]), default=(0, 0, None))
        kinds = "/".join(movie.genres[:2]) or "Movie"
        if like is not None and overlap:
            reason = f"{kinds}, like {re.split(r' [(]', like.title)[0]}"
        elif movie.year:
            reason = f"{kinds} from {movie.year}, a change from your {_plural(top[0]) if top else 'recent movies'}"
        else:
            reason = f"{kinds} to broaden your recent choices"
        lines.append(f"{rank}. {display_title(movie)} - {reason}.")
    return "\n".join(lines)


@reads(answer=ALL, recommender=ALL, templates=("answer.prompt",))
def reclaif_template_teacher(
    out: Path, *, answer: ReclaifAnswerConfig, recommender: RecommenderConfig, candidates: Path, data: Path,
    templates: dict[str, str],
) -> None:
    """The `template` teacher: the classic recommender (`recommender.model`, fit on the train
    split, so it never sees the train sets' targets) ranks each train set's candidates and
    `template_answer` writes its top k in RecLAIF's format. Writes the same files as
    `reclaif_teacher` (sft.jsonl, generations.parquet, stats.json); every answer is checked by
    `parse_recommendation`. `templates`: `read_templates(answer.prompt)`."""
    out = Path(out)
    sets = read_candidate_sets(candidates, "train")
    interactions = read_interactions(Path(data)).filter(pl.col("split") == "train")
    rec = fit_recommender(recommender, interactions)
    matrix = np.array([[c.item_id for c in cs.candidates] for cs in sets], dtype=np.int64)
    scores = score_candidates(rec, [cs.user_id for cs in sets], matrix)
    order = np.argsort(-scores, axis=1, kind="stable")
    rows, invalid, ranks, positions = [], [], [], []
    with open(out / "sft.jsonl", "w") as fh:
        for i, cs in enumerate(sets):
            k = wanted_picks(cs, answer)
            ranking = matrix[i, order[i]].tolist()
            text = template_answer(cs, ranking, k)
            parsed = parse_recommendation(text, cs.candidates, k, answer.fuzzy_threshold)
            if not parsed.valid or parsed.picks != ranking[:k]:  # a template bug, not a model's slip: report it
                invalid.append(f"{cs.set_id}: {'; '.join(parsed.problems) or 'picks differ from the ranking'}")
            ranks.append(parsed.rank_of(cs.target.item_id))
            positions += [shown_position(cs, item) for item in ranking[:k]]
            messages = recommend_messages(cs, answer, templates)
            fh.write(
                json.dumps({"messages": [*messages, {"role": "assistant", "content": text}], "case_id": cs.set_id})
                + "\n"
            )
            rows.append({"case_id": cs.set_id, "sample": 0, "text": text, "valid": parsed.valid, "kept": True,
                         "quality": answer_scores(parsed, text, cs, k).quality})
    if invalid:
        raise ValueError(f"template teacher wrote answers its own parser rejects: {invalid[:3]}")
    pl.DataFrame(rows).write_parquet(out / "generations.parquet")
    # What the SFT rows teach about ranking: how often the answer holds the next movie, and where.
    stats = {"sets": len(sets), "samples": len(sets), "validity_ratio": 1.0, "sft_rows": len(sets),
             "teacher": f"template ({recommender.model})",
             "next_movie_in_answer": round(float(np.mean([r <= answer.top_k for r in ranks])), 4),
             "next_movie_ranks": {str(r): sum(int(x) == r for x in ranks if x <= answer.top_k)
                                  for r in range(1, answer.top_k + 1)},
             "mean_pick_position": round(float(np.mean(positions)), 2)}
    (out / "stats.json").write_text(json.dumps(stats, indent=2))


# ---------------------------------------------------------------------------------------------
# Stage: two answers per train set from the current student (RecLAIF Algorithm 1, step 1)


@reads(answer=ALL, pairs=ALL, teacher=ALL, training=("base_model", "thinking"), templates=("answer.prompt",))
def reclaif_sample_pairs(
    out: Path,
    *,
    answer: ReclaifAnswerConfig,
    pairs: PairsConfig,
    teacher: TeacherConfig,
    training: TrainingConfig,
    candidates: Path,
    student: Path | None,
    templates: dict[str, str],
    artifacts_dir: Path,
) -> None:
    """Write pairs.parquet (case_id = set_id, text_a, text_b, source, prompt as JSON messages,
    model, valid_a, valid_b) and stats.json: two samples per train set at `pairs.sampling`.

    From the student in `student` (pairs.source `student`, RecLAIF) or the teacher. Samples are
    not re-asked (an invalid answer is what the judge should reject); identical twins carry no
    preference and are dropped.
    """
    out = Path(out)
    cfg = pair_sampler_llm(pairs, teacher, training, student)
    sets = read_candidate_sets(candidates, "train")
    prompts = [recommend_messages(cs, answer, templates) for cs in sets]
    model = _load(cfg, artifacts_dir, out / "cache" / "pairs.sqlite")
    outputs = model.generate(prompts, pairs.sampling, n=2)
    usage = usage_counts(model)
    model = None  # one model in memory at a time
    release_models()
    rows, identical, tokens = [], 0, 0
    name = cfg.model if cfg.adapter is None else f"{cfg.model}+{cfg.adapter}"
    for cs, messages, samples in zip(sets, prompts, outputs, strict=True):
        text_a, text_b = (g.text.strip() for g in samples)
        tokens += sum(g.completion_tokens for g in samples)
        if " ".join(text_a.split()) == " ".join(text_b.split()):
            identical += 1
            continue
        k = wanted_picks(cs, answer)
        valid_a, valid_b = (
            parse_recommendation(t, cs.candidates, k, answer.fuzzy_threshold).valid for t in (text_a, text_b)
        )
        rows.append({"case_id": cs.set_id, "text_a": text_a, "text_b": text_b, "source": pairs.source,
                     "prompt": json.dumps(messages), "model": name, "valid_a": valid_a, "valid_b": valid_b})
    schema = {"case_id": pl.String, "text_a": pl.String, "text_b": pl.String, "source": pl.String,
              "prompt": pl.String, "model": pl.String, "valid_a": pl.Boolean, "valid_b": pl.Boolean}
    pl.DataFrame(rows, schema=schema).write_parquet(out / "pairs.parquet")
    answers = 2 * len(rows)
    stats = {
        "sets": len(sets), "pairs": len(rows), "identical_dropped": identical, "source": pairs.source, "model": name,
        "validity_ratio": round(sum(r["valid_a"] + r["valid_b"] for r in rows) / answers, 4) if answers else None,
        "completion_tokens": tokens, "usage": usage,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))


# ---------------------------------------------------------------------------------------------
# Judging two answers (RecLAIF Algorithm 1, step 2)


@dataclass
class RecommendationJudgement:
    """The judgement of answers A and B of one candidate set: the judge's `PairJudgement` (verdict,
    LLM verdicts of both orders, 0-1 scores) plus the parsed answers and their rubric scores."""

    judgement: PairJudgement
    answer_a: RecommendationAnswer
    answer_b: RecommendationAnswer
    rubric_a: CandidateScores
    rubric_b: CandidateScores


def judge_recommendation_pairs(
    items: Sequence[tuple[CandidateSet, str, str]],
    *,
    judge: JudgeConfig,
    answer: ReclaifAnswerConfig,
    templates: Templates | None = None,
    model: ChatModel | None = None,
) -> list[RecommendationJudgement]:
    """Judge each (candidate set, answer A, answer B) with the configured judge.

    `llm`: RecLAIF's judge through `recxplain.judging.judge_explanation_pairs` (both orders when
    judge.both_orders, order-consistent choices only; score = mean 0-5 score / 5). `rubric`:
    the rank of the next movie first: when the answers' relevance differs (one ranks the next
    movie higher in its top k), the higher-ranking answer wins if it is valid, and the pair is a
    tie if it is not (a broken answer that happens to name the next movie would teach the broken
    format, a valid one that misses it would teach missing it); a relevance sum of 0.5 x 5 over
    the three criteria would otherwise let genre diversity outvote a hit. Equal relevance:
    validity, both-bad when neither answer is valid, the valid one when only one is (teaching
    the format is the point of the first rounds); between two valid answers the `answer_scores`
    quality margin decides (tie below judge.tie_margin). `ensemble`: the same rules, then margin
    = w * LLM vote + (1 - w) * rubric margin, w = judge.llm_weight. The LLM cannot change a
    rank or validity decision, so the ensemble asks it only about pairs of two valid answers of
    equal relevance whose verdict its vote can change (each question is two long generations;
    `llm_choice` stays None for the rest).
    """
    needs_llm = judge.kind in ("llm", "ensemble")
    if needs_llm and (model is None or templates is None):
        raise ValueError(f"judge.kind={judge.kind!r} needs a model and the judge template ({judge.prompt})")
    parsed = [tuple(parse_recommendation(t, cs.candidates, wanted_picks(cs, answer), answer.fuzzy_threshold)
                    for t in (text_a, text_b)) for cs, text_a, text_b in items]
    rubrics = [tuple(answer_scores(p, t, cs, wanted_picks(cs, answer)) for p, t in zip(pair, (text_a, text_b)))
               for pair, (cs, text_a, text_b) in zip(parsed, items)]

    ask = [i for i, ((pa, pb), (ra, rb)) in enumerate(zip(parsed, rubrics)) if judge.kind == "llm"
           or (judge.kind == "ensemble" and pa.valid and pb.valid and ra.relevance == rb.relevance
               and vote_can_change_verdict(ra.quality - rb.quality, True, judge))]
    llm: list[PairJudgement | None] = [None] * len(items)
    if ask:
        verdicts = judge_explanation_pairs([(judge_context(items[i][0]), items[i][1], items[i][2]) for i in ask],
                                           judge=judge.model_copy(update={"kind": "llm"}), templates=templates,
                                           model=model)
        for i, found in zip(ask, verdicts, strict=True):
            llm[i] = found
    judged = []
    for (parsed_a, parsed_b), (rubric_a, rubric_b), verdict_llm in zip(parsed, rubrics, llm, strict=True):
        gate = parsed_a.valid or parsed_b.valid
        fields: dict[str, Any] = {}
        if verdict_llm is not None:
            fields = {
                name: getattr(verdict_llm, name) for name in ("llm_choice", "llm_ab", "llm_ba", "raw_ab", "raw_ba")
            }
        w = judge.llm_weight
        score_a, score_b = rubric_a.quality, rubric_b.quality
        if judge.kind == "llm":
            verdict, score_a, score_b = verdict_llm.verdict, verdict_llm.score_a, verdict_llm.score_b
        elif rubric_a.relevance != rubric_b.relevance:
            higher_a = rubric_a.relevance > rubric_b.relevance
            verdict = ("a" if higher_a else "b") if (parsed_a if higher_a else parsed_b).valid else "tie"
        elif parsed_a.valid != parsed_b.valid:
            verdict = "a" if parsed_a.valid else "b"
        else:  # rubric (its LLM weight is 0) or ensemble
            choice = verdict_llm.llm_choice if verdict_llm is not None else None
            verdict = ensemble_verdict(choice, rubric_a.quality - rubric_b.quality, gate, judge)
            if judge.kind == "ensemble" and verdict_llm is not None and verdict_llm.score_a is not None:
                score_a = w * verdict_llm.score_a + (1 - w) * rubric_a.quality
                score_b = w * verdict_llm.score_b + (1 - w) * rubric_b.quality
        judged.append(RecommendationJudgement(
            PairJudgement(verdict=verdict, score_a=score_a, score_b=score_b, **fields),
            parsed_a, parsed_b, rubric_a, rubric_b,
        ))
    return judged


@reads(judge=ALL, answer=ALL, templates=lambda judge, **_: judge_prompts(judge))
def reclaif_judge_pairs(
    out: Path,
    *,
    judge: JudgeConfig,
    answer: ReclaifAnswerConfig,
    candidates: Path,
    pairs: Path,
    templates: dict[str, str],
    artifacts_dir: Path,
) -> None:
    """Judge every sampled pair; write preferences.jsonl (kept pairs in trl's conversational
    preference format + case_id and scores: what train_dpo reads), verdicts.parquet (every pair)
    and stats.json (recxplain.judging.judge_stats counts: kept, ties, both-bad, order-inconsistent,
    invalid, position-bias rate, LLM validity ratio). `templates`: `read_templates(judge.prompt)`.
    """
    out = Path(out)
    sets = {cs.set_id: cs for cs in read_candidate_sets(candidates, "train")}
    pairs_path = Path(pairs) / "pairs.parquet"
    if not pairs_path.exists():
        raise FileNotFoundError(f"{pairs_path}: missing (written by reclaif_sample_pairs)")
    frame = pl.read_parquet(pairs_path)
    missing = [c for c in ("case_id", "text_a", "text_b", "prompt") if c not in frame.columns]
    if missing:
        raise ValueError(f"{pairs_path}: lacks column(s) {missing}; has {frame.columns}")
    rows = frame.to_dicts()
    unknown = sorted({r["case_id"] for r in rows} - sets.keys())
    if unknown:
        raise ValueError(f"{pairs_path}: case_id(s) {unknown[:5]} are not train sets of {candidates}")
    model = None
    if judge.kind != "rubric":
        model = _load(judge.llm, artifacts_dir, out / "cache" / "judge.sqlite")
    judged = judge_recommendation_pairs([(sets[r["case_id"]], r["text_a"], r["text_b"]) for r in rows],
                                        judge=judge, answer=answer, templates=templates, model=model)
    usage = usage_counts(model)
    model = None  # one model in memory at a time: the next stage loads its own
    release_models()
    verdict_rows = []
    with open(out / "preferences.jsonl", "w") as fh:
        for row, result in zip(rows, judged, strict=True):
            j = result.judgement
            verdict_rows.append({
                "case_id": row["case_id"], "judge": judge.kind, "verdict": j.verdict, "kept": j.kept,
                "score_a": j.score_a, "score_b": j.score_b, "llm_choice": j.llm_choice,
                "llm_choice_ab": j.llm_ab.choice if j.llm_ab else None,
                "llm_choice_ba": j.llm_ba.choice if j.llm_ba else None, "order_consistent": j.order_consistent,
                "rubric_a": result.rubric_a.model_dump_json(), "rubric_b": result.rubric_b.model_dump_json(),
                "valid_a": result.answer_a.valid, "valid_b": result.answer_b.valid,
                "raw_ab": json.dumps(j.raw_ab), "raw_ba": json.dumps(j.raw_ba),
            })
            if not j.kept:
                continue
            a_wins = j.verdict == "a"
            chosen, rejected = (row["text_a"], row["text_b"]) if a_wins else (row["text_b"], row["text_a"])
            scores = (j.score_a, j.score_b) if a_wins else (j.score_b, j.score_a)
            fh.write(json.dumps({
                "prompt": json.loads(row["prompt"]),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "case_id": row["case_id"], "scores": {"chosen": scores[0], "rejected": scores[1]},
            }) + "\n")
    pl.DataFrame(verdict_rows, infer_schema_length=None).write_parquet(out / "verdicts.parquet")
    stats = judge_stats([r.judgement for r in judged]) | ranking_signal(judged) | {
        "judge": judge.kind,
        "llm": judge.llm.model if judge.kind != "rubric" else None,
        "usage": usage,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))


def ranking_signal(judged: Sequence[RecommendationJudgement]) -> dict[str, int]:
    """What the judged pairs can teach about ranking: pairs where an answer has the next movie in
    its top k, pairs whose two answers rank it differently, and among the kept pairs those whose
    chosen answer ranks it higher or lower than the rejected one (lower should never happen with
    the rubric and ensemble judges); `rank_vs_format`: pairs left as ties because the answer
    ranking the next movie higher was invalid."""
    differ = [j for j in judged if j.rubric_a.relevance != j.rubric_b.relevance]
    kept = [j for j in differ if j.judgement.kept]

    def chosen_higher(j: RecommendationJudgement) -> bool:
        return (j.rubric_a.relevance > j.rubric_b.relevance) == (j.judgement.verdict == "a")

    return {
        "pairs_with_next_movie": sum(max(j.rubric_a.relevance, j.rubric_b.relevance) > 0 for j in judged),
        "pairs_rank_differs": len(differ),
        "kept_chosen_ranks_higher": sum(chosen_higher(j) for j in kept),
        "kept_chosen_ranks_lower": sum(not chosen_higher(j) for j in kept),
        "rank_vs_format": sum(j.judgement.verdict == "tie" for j in differ),
    }


def kept_preferences(folder: Path) -> int:
    """How many preference pairs a reclaif_judge_pairs folder kept (0: nothing for DPO to learn)."""
    path = Path(folder) / "preferences.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


# ---------------------------------------------------------------------------------------------
# Stage: every LLM recommender answers the eval sets


def recommender_names(evaluation: ReclaifEvaluationConfig, training: TrainingConfig) -> list[str]:
    """The configured LLM recommenders with `dpo` expanded to one name per DPO round."""
    return expand_rounds(evaluation.recommenders, training.rounds)


def student_recommenders(evaluation: ReclaifEvaluationConfig, training: TrainingConfig) -> list[str]:
    """The recommenders that need a trained student folder (the flow passes them as `students`)."""
    return [n for n in recommender_names(evaluation, training) if n not in ("teacher", "base")]


@reads(evaluation=ALL, answer=ALL, teacher=ALL, training=("base_model", "thinking", "rounds"),
       templates=("answer.prompt",))
def reclaif_recommend(
    out: Path,
    *,
    evaluation: ReclaifEvaluationConfig,
    answer: ReclaifAnswerConfig,
    teacher: TeacherConfig,
    training: TrainingConfig,
    candidates: Path,
    templates: dict[str, str],
    artifacts_dir: Path,
    students: dict[str, Path] | None = None,
) -> None:
    """Every LLM recommender answers every eval set once at `evaluation.sampling` (no re-asks);
    write answers.parquet (case_id = set_id, model, text, prompt_tokens, completion_tokens,
    latency_s, cached, finish_reason). `students`: name -> student folder for every name
    `student_recommenders` lists. `templates`: `read_templates(answer.prompt)`."""
    out, students = Path(out), dict(students or {})
    sets = read_candidate_sets(candidates, "eval")
    prompts = [recommend_messages(cs, answer, templates) for cs in sets]
    rows: list[dict] = []
    answered: dict[str, list[dict]] = {}  # model config -> its rows
    for name in recommender_names(evaluation, training):
        started = time.perf_counter()
        llm = explainer_llm(name, teacher=teacher, training=training, students=students)
        same = answered.get(llm.model_dump_json())
        if same is not None:  # a DPO round that kept no pair is the previous student: same answers
            rows += [row | {"model": name} for row in same]
            continue
        model = _load(llm, artifacts_dir, out / "cache" / f"{name}.sqlite")
        mine = []
        for cs, (generation, *_) in zip(sets, model.generate(prompts, evaluation.sampling, n=1), strict=True):
            mine.append({"case_id": cs.set_id, "model": name, "text": generation.text.strip(),
                         "prompt_tokens": int(generation.prompt_tokens),
                         "completion_tokens": int(generation.completion_tokens),
                         "latency_s": float(generation.latency_s), "cached": bool(generation.cached),
                         "finish_reason": getattr(generation, "finish_reason", None)})
        rows += mine
        answered[llm.model_dump_json()] = mine
        log.info("recommender %s: %d sets in %.1f s", name, len(sets), time.perf_counter() - started)
        model = None  # one model in memory at a time
        release_models()
        del model  # before the next recommender loads: one model in memory at a time
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(out / "answers.parquet")


# ---------------------------------------------------------------------------------------------
# Stage: the comparison table


def classic_rankings(
    recommender: RecommenderConfig, baselines: Sequence[str], interactions: pl.DataFrame, sets: Sequence[CandidateSet]
) -> dict[str, list[list[int]]]:
    """Each baseline's full ranking of every set's candidates (item ids, best first).

    Every baseline is fit on the interactions before the eval targets (train + valid splits),
    as the LLM sees them in its history. Ties keep the candidates' shown order; a candidate
    outside the model's catalogue scores -inf (ranked last).
    """
    known = interactions.filter(pl.col("split") != "test")
    users = [cs.user_id for cs in sets]
    matrix = np.array([[c.item_id for c in cs.candidates] for cs in sets], dtype=np.int64)
    rankings = {}
    for name in baselines:
        rec = fit_recommender(recommender.model_copy(update={"model": name}), known)
        scores = score_candidates(rec, users, matrix)
        order = np.argsort(-scores, axis=1, kind="stable")
        rankings[name] = [matrix[i, order[i]].tolist() for i in range(len(sets))]
    return rankings


def item_text(movie: Movie) -> str:
    """The text of a movie that diversity embeds: title, year and genres."""
    return f"{display_title(movie)}. Genres: {', '.join(movie.genres) or 'unknown'}."


def embedding_diversity(picks: Sequence[Sequence[int]], movies: dict[int, Movie], model_name: str) -> list[float]:
    """Mean pairwise cosine distance of each answer's picked movies (NaN with fewer than two)."""
    distinct = sorted({i for p in picks for i in p})
    if not distinct:
        return [math.nan] * len(picks)
    vectors = load_embedder(model_name).encode([item_text(movies[i]) for i in distinct], batch_size=64,
                                               show_progress_bar=False, convert_to_numpy=True)
    row = {item: n for n, item in enumerate(distinct)}
    return [
        float(mean_cosine_distance(vectors[[row[i] for i in p]]).mean()) if len(p) >= 2 else math.nan for p in picks
    ]


def per_answer_table(
    sets: Sequence[CandidateSet],
    answers: pl.DataFrame,
    rankings: dict[str, list[list[int]]],
    answer: ReclaifAnswerConfig,
) -> pl.DataFrame:
    """One row per (recommender, eval set): kind, valid, rank of the next movie, picks and the
    ranking metrics. LLM answers are parsed; a classic model's picks are its top k.

    Position columns: `target_position` (1-based place of the next movie in the shown candidate
    list), `pick_positions` (places of the top-k picks), `names_target` (the next movie is among
    ALL the movies an answer named, beyond k too) and `history_named` (listed titles that are
    movies of the user's history, not candidates). Kind: `llm`, `classic`, or `chance` for the
    `random` and `listed` rankings (`CHANCE_BASELINES`).
    """
    by_id = {cs.set_id: cs for cs in sets}
    rows = []
    for row in answers.iter_rows(named=True):
        cs = by_id.get(row["case_id"])
        if cs is None:
            raise ValueError(f"answers: case_id {row['case_id']!r} is not an eval set")
        k = wanted_picks(cs, answer)
        parsed = parse_recommendation(row["text"], cs.candidates, k, answer.fuzzy_threshold)
        rank = parsed.rank_of(cs.target.item_id)
        history = {_title_key(_YEAR.sub("", display_title(m))) for m in cs.history}
        rows.append({"model": row["model"], "kind": "llm", "case_id": cs.set_id, "user_id": cs.user_id,
                     "valid": parsed.valid, "rank": rank, "picks": parsed.picks[:k], "fuzzy": parsed.fuzzy,
                     "not_candidates": len(parsed.not_candidates), "duplicates": len(parsed.duplicates),
                     "problems": "; ".join(parsed.problems), "text": row["text"],
                     "target_position": shown_position(cs, cs.target.item_id),
                     "pick_positions": [shown_position(cs, i) for i in parsed.picks[:k]],
                     "names_target": cs.target.item_id in parsed.picks,
                     "history_named": sum(_title_key(_YEAR.sub("", n)) in history for n in parsed.not_candidates),
                     **_ranking(rank, k)})
    for name, ranked in rankings.items():
        for cs, order in zip(sets, ranked, strict=True):
            k = wanted_picks(cs, answer)
            rank = float(order.index(cs.target.item_id) + 1)
            rows.append({"model": name, "kind": "chance" if name in CHANCE_BASELINES else "classic",
                         "case_id": cs.set_id, "user_id": cs.user_id, "valid": True,
                         "rank": rank, "picks": order[:k], "fuzzy": 0, "not_candidates": 0, "duplicates": 0,
                         "problems": "", "text": None, "target_position": shown_position(cs, cs.target.item_id),
                         "pick_positions": [shown_position(cs, i) for i in order[:k]], "names_target": rank <= k,
                         "history_named": 0, **_ranking(rank, k)})
    return pl.DataFrame(rows, infer_schema_length=None)


def shown_position(cs: CandidateSet, item_id: int) -> int:
    """1-based place of `item_id` in the candidate list as the prompt shows it."""
    return [c.item_id for c in cs.candidates].index(item_id) + 1


# Rankings that use nothing about the user: a seeded shuffle of each set (`random`, what chance
# gets on these very sets) and the shown order (`listed`, what copying the list's top gets).
CHANCE_BASELINES = ("random", "listed")
RANDOM_EXPECTED = "random (expected)"


def chance_rankings(names: Sequence[str], sets: Sequence[CandidateSet], seed: int) -> dict[str, list[list[int]]]:
    """The `CHANCE_BASELINES` among `names`: full rankings of every set's candidates."""
    rankings = {}
    for name in names:
        if name == "random":
            rankings[name] = [[cs.candidates[j].item_id for j in np.random.default_rng([seed, cs.user_id]).permutation(
                len(cs.candidates))] for cs in sets]
        elif name == "listed":
            rankings[name] = [[c.item_id for c in cs.candidates] for cs in sets]
    return rankings


def random_expected(sets: Sequence[CandidateSet], k: int, draws: int, seed: int) -> pl.DataFrame:
    """The `random (expected)` rows of the comparison: the exact expectation of each ranking
    metric when the next movie's rank is uniform over its set's candidates, with the 2.5-97.5%
    range of the mean over these sets that `draws` random rankings give (how far chance alone
    moves a recommender's mean on this many users)."""
    sizes = np.array([len(cs.candidates) for cs in sets])
    ranks = np.floor(np.random.default_rng(seed).random((draws, len(sets))) * sizes).astype(np.int64) + 1
    simulated = {metric: np.array([_ranking(float(r), k)[metric] for r in range(1, sizes.max() + 1)])
                 for metric in ("Hit@1", "Hit@3", "NDCG@3", "Precision@K")}
    rows = []
    for metric, by_rank in simulated.items():
        exact = float(np.mean([by_rank[:n].mean() for n in sizes]))
        means = by_rank[ranks - 1].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        rows.append({"model": RANDOM_EXPECTED, "kind": "chance", "metric": metric, "value": exact,
                     "ci_low": float(low), "ci_high": float(high), "n": len(sets)})
    return pl.DataFrame(rows, schema=SUMMARY_SCHEMA)


POSITION_BIAS = ("copies first k", "picks in first k", "mean pick position", "names next movie (valid)",
                 "names next movie (any)", "history titles named")


def position_groups(n: int, k: int) -> list[tuple[int, int]]:
    """Shown positions 1..n in groups: the first k alone, the rest in three near-equal runs."""
    rest = [chunk for chunk in np.array_split(np.arange(k + 1, n + 1), 3) if len(chunk)]
    return [(1, k), *[(int(c[0]), int(c[-1])) for c in rest]] if n > k else [(1, n)]


def position_table(per_answer: pl.DataFrame, order: Sequence[str], k: int) -> pl.DataFrame:
    """Where each recommender's hits come from: per recommender and group of shown positions of
    the next movie (`position_groups`), the sets in the group and their Hit@1 and Hit@k."""
    n = int(per_answer["target_position"].max())
    rows = []
    for name in order:
        frame = per_answer.filter(pl.col("model") == name)
        for first, last in position_groups(n, k):
            group = frame.filter(pl.col("target_position").is_between(first, last))
            rows.append({"model": name, "positions": f"{first}-{last}" if last > first else str(first),
                         "sets": group.height,
                         "Hit@1": float(group["Hit@1"].mean()) if group.height else math.nan,
                         f"Hit@{k}": float((group["rank"] <= k).mean()) if group.height else math.nan})
    return pl.DataFrame(rows)


def position_bias(per_answer: pl.DataFrame, order: Sequence[str], k: int) -> pl.DataFrame:
    """Per recommender (`POSITION_BIAS`): share of answers whose top k are the first k candidates
    as listed, in that order; share of picks from the first k places; mean shown place of the
    picks (chance: (n + 1) / 2); share of valid answers, and of all answers, that name the next
    movie anywhere (beyond k too); listed titles that are history movies, per answer."""
    rows = []
    for name in order:
        frame = per_answer.filter(pl.col("model") == name)
        if frame.height == 0:
            continue
        positions = frame["pick_positions"].to_list()
        flat = [p for ps in positions for p in ps]
        valid = frame.filter(pl.col("valid"))
        rows.append({
            "model": name, "kind": frame["kind"][0], "answers": frame.height,
            "copies first k": float(np.mean([ps == list(range(1, k + 1)) for ps in positions])),
            "picks in first k": float(np.mean([p <= k for p in flat])) if flat else math.nan,
            "mean pick position": float(np.mean(flat)) if flat else math.nan,
            "names next movie (valid)": float(valid["names_target"].mean()) if valid.height else math.nan,
            "valid answers": valid.height,
            "names next movie (any)": float(frame["names_target"].mean()),
            "history titles named": float(frame["history_named"].mean()),
        })
    return pl.DataFrame(rows)


def _ranking(rank: float, k: int) -> dict[str, float]:
    values = ranking_values(rank, k)
    values["Precision@K"] = values.pop(f"Precision@{k}")
    return values



def summarise(per_answer: pl.DataFrame, order: Sequence[str], n_boot: int, seed: int) -> pl.DataFrame:
    """Long table (model, kind, metric, value, ci_low, ci_high, n): mean over eval sets and the
    percentile bootstrap CI (recxplain.stats.bootstrap_ci); NaN values (no explainability score,
    fewer than two picks) are left out of their metric."""
    rows = []
    for name in order:
        frame = per_answer.filter(pl.col("model") == name)
        if frame.height == 0:
            continue
        kind = frame["kind"][0]
        for metric in METRICS:
            column = "valid" if metric == "ValidRatio" else metric
            if column not in frame.columns:
                continue
            values = frame[column].cast(pl.Float64).to_numpy()
            values = values[~np.isnan(values)]
            if metric == "Explainability" and kind != "llm":
                continue
            low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed)
            rows.append({"model": name, "kind": kind, "metric": metric,
                         "value": float(values.mean()) if len(values) else math.nan,
                         "ci_low": low, "ci_high": high, "n": int(len(values))})
    return pl.DataFrame(rows, schema=SUMMARY_SCHEMA)


SUMMARY_SCHEMA = {"model": pl.String, "kind": pl.String, "metric": pl.String, "value": pl.Float64,
                  "ci_low": pl.Float64, "ci_high": pl.Float64, "n": pl.Int64}


def comparison_markdown(summary: pl.DataFrame, k: int, sets: int, negatives: int, sampler: str,
                        positions: pl.DataFrame | None = None, bias: pl.DataFrame | None = None) -> str:
    """The comparison table as markdown: one row per recommender, `value [ci_low, ci_high]` cells;
    then, when given, Hit@k by the next movie's shown position (`position_table`) and the
    position-bias table (`position_bias`)."""
    header = ["recommender", "kind", *[m.replace("@K", f"@{k}") for m in METRICS]]
    lines = [
        f"RecLAIF comparison on {sets} eval users, each ranking 1 held-out next movie + {negatives} {sampler} "
        f"negatives; mean [95% bootstrap CI]. Explainability: the judge's 1-100 score (LLM answers only). "
        f"random: a seeded shuffle of each set; {RANDOM_EXPECTED}: the exact expectation of a random ranking "
        f"[the 2.5-97.5% range of its mean over these {sets} users]; listed: the first {k} candidates as the "
        f"prompt lists them.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * len(METRICS)) + "|",
    ]
    for name in summary["model"].unique(maintain_order=True).to_list():
        frame = summary.filter(pl.col("model") == name)
        cells = {r["metric"]: r for r in frame.iter_rows(named=True)}
        values = []
        for metric in METRICS:
            r = cells.get(metric)
            if r is None or r["n"] == 0:
                values.append("–")
            elif metric == "Explainability":
                values.append(f"{r['value']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]")
            else:
                values.append(f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")
        lines.append(f"| {name} | {frame['kind'][0]} | " + " | ".join(values) + " |")
    if positions is not None and positions.height:
        groups = positions["positions"].unique(maintain_order=True).to_list()
        sizes = dict(zip(positions["positions"], positions["sets"]))
        lines += ["", f"Hit@{k} by the next movie's position in the candidate list as shown (sets per group in "
                  f"brackets; chance: {k}/{negatives + 1} in every group).", "",
                  "| recommender | " + " | ".join(f"{g} ({sizes[g]})" for g in groups) + " |",
                  "|---|" + "---:|" * len(groups)]
        for name in positions["model"].unique(maintain_order=True).to_list():
            cells = positions.filter(pl.col("model") == name)[f"Hit@{k}"].to_list()
            lines.append(f"| {name} | " + " | ".join("–" if v != v else f"{v:.3f}" for v in cells) + " |")
    if bias is not None and bias.height:
        lines += ["", f"Position bias and reach: share of answers whose top {k} are the first {k} candidates as "
                  f"listed; share of picks from the first {k} places (chance {k}/{negatives + 1}); mean place of "
                  f"the picks (chance {(negatives + 2) / 2:g}); share of valid answers (count) and of all "
                  "answers naming the next movie anywhere; history titles listed as picks per answer.", "",
                  "| recommender | " + " | ".join(POSITION_BIAS) + " |", "|---|" + "---:|" * len(POSITION_BIAS)]
        for r in bias.iter_rows(named=True):
            valid = "–" if r["valid answers"] == 0 else f"{r['names next movie (valid)']:.3f} ({r['valid answers']})"
            lines.append(f"| {r['model']} | {r['copies first k']:.3f} | {r['picks in first k']:.3f} | "
                         f"{r['mean pick position']:.1f} | {valid} | {r['names next movie (any)']:.3f} | "
                         f"{r['history titles named']:.2f} |")
    return "\n".join(lines) + "\n"


@reads(evaluation=ALL, answer=ALL, judge=ALL, recommender=ALL, training=("base_model", "thinking", "rounds"),
       templates=lambda judge, evaluation, **_: [judge.explainability_prompt] if evaluation.explainability else [])
def reclaif_evaluate(
    out: Path,
    *,
    evaluation: ReclaifEvaluationConfig,
    answer: ReclaifAnswerConfig,
    judge: JudgeConfig,
    recommender: RecommenderConfig,
    data: Path,
    candidates: Path,
    answers: Path,
    templates: dict[str, str],
    artifacts_dir: Path,
    training: TrainingConfig | None = None,
) -> None:
    """The comparison table: classic baselines and LLM recommenders on the same eval sets.

    Writes per_answer.parquet (one row per recommender and set), comparison.parquet (model, kind,
    metric, value, ci_low, ci_high, n), comparison.md and stats.json. `templates`:
    `read_templates(judge.explainability_prompt)`. `training`: only orders the DPO rounds.
    """
    out = Path(out)
    sets = read_candidate_sets(candidates, "eval")
    answers_path = Path(answers) / "answers.parquet"
    if not answers_path.exists():
        raise FileNotFoundError(f"{answers_path}: missing (written by reclaif_recommend)")
    llm_answers = pl.read_parquet(answers_path)
    interactions = read_interactions(Path(data))
    fitted = [b for b in evaluation.baselines if b not in CHANCE_BASELINES]
    rankings = classic_rankings(recommender, fitted, interactions, sets)
    rankings |= chance_rankings(evaluation.baselines, sets, evaluation.seed)
    rankings = {name: rankings[name] for name in evaluation.baselines}  # the configured order
    per_answer = per_answer_table(sets, llm_answers, rankings, answer)

    movies = {m.item_id: m for cs in sets for m in cs.candidates}
    diversity = [math.nan] * per_answer.height
    if evaluation.diversity:
        diversity = embedding_diversity(per_answer["picks"].to_list(), movies, evaluation.embedding_model)
    explainability = [math.nan] * per_answer.height
    usage = {}
    if evaluation.explainability:
        by_id = {cs.set_id: cs for cs in sets}
        llm_rows = [i for i, kind in enumerate(per_answer["kind"].to_list()) if kind == "llm"]
        model = _load(judge.llm, artifacts_dir, out / "cache" / "explainability.sqlite")
        scored = explainability_scores(
            [({"history": _shown(by_id[per_answer["case_id"][i]].history)}, per_answer["text"][i]) for i in llm_rows],
            judge=judge.model_copy(update={"sampling": evaluation.explainability_sampling}), templates=templates,
            model=model,
        )
        for i, parsed in zip(llm_rows, scored, strict=True):
            explainability[i] = float(parsed.value) if parsed.valid else math.nan
        usage = usage_counts(model)
        model = None  # one model in memory at a time
        release_models()
    per_answer = per_answer.with_columns(pl.Series("Diversity", diversity, dtype=pl.Float64),
                                         pl.Series("Explainability", explainability, dtype=pl.Float64))
    per_answer.write_parquet(out / "per_answer.parquet")

    order = list(evaluation.baselines) + recommender_names(evaluation, training or TrainingConfig())
    order += [m for m in llm_answers["model"].unique(maintain_order=True).to_list() if m not in order]
    k = min(answer.top_k, min(len(cs.candidates) for cs in sets))
    summary = summarise(per_answer, order, evaluation.bootstrap, evaluation.seed)
    if "random" in evaluation.baselines:  # the expectation right after the observed shuffle
        at = summary["model"].to_list().index("random") + sum(1 for m in summary["model"] if m == "random")
        expected = random_expected(sets, k, evaluation.bootstrap, evaluation.seed)
        summary = pl.concat([summary.slice(0, at), expected, summary.slice(at)])
    summary.write_parquet(out / "comparison.parquet")
    positions = position_table(per_answer, order, k)
    positions.write_parquet(out / "positions.parquet")
    bias = position_bias(per_answer, order, k)
    bias.write_parquet(out / "position_bias.parquet")
    negatives = max(len(cs.candidates) for cs in sets) - 1
    (out / "comparison.md").write_text(
        comparison_markdown(summary, k, len(sets), negatives, _sampler(candidates), positions, bias))
    llm_rows_frame = per_answer.filter(pl.col("kind") == "llm")
    stats = {
        "eval_sets": len(sets), "recommenders": order, "top_k": answer.top_k,
        "target_positions": sorted(per_answer.filter(pl.col("model") == order[0])["target_position"].to_list()),
        "position_bias": bias.to_dicts(),
        "explainability_scored": int(np.isfinite(np.array(explainability, dtype=float)).sum()),
        "explainability_requests": int(llm_rows_frame.height) if evaluation.explainability else 0,
        "fuzzy_matches": int(llm_rows_frame["fuzzy"].sum()) if llm_rows_frame.height else 0,
        "usage": usage,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))


def _sampler(candidates: Path) -> str:
    path = Path(candidates) / "stats.json"
    return json.loads(path.read_text()).get("sampler", "sampled") if path.exists() else "sampled"
