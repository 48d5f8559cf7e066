"""One RecLAIF answer: the recommender prompt of a candidate set, reading the answer, its
verifiable scores and ranking metrics, the models that answer, and the `template` teacher's
answers (`template_answer`).

Reading an answer (`parse_recommendation`): each listed movie is mapped to a candidate by its
title, exactly (normalised: case, punctuation, year, leading article, "Title, The"), else by
fuzzy similarity (difflib) above `answer.fuzzy_threshold`. An answer is valid when it has key
preferences and a list that names exactly k different candidates and nothing else; a movie
that is not a candidate, a candidate named twice, too few or too many movies, or no
preferences make it invalid (ValidRatio). Relevance is measured on every answer, valid or not,
from the candidates it did name, in its order (an answer naming none misses).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from recxplain.checks import normalize, repetition, title_forms, words
from recxplain.config import ReclaifAnswerConfig
from recxplain.judging import CandidateScores
from recxplain.llm import load_chat_model
from recxplain.prompts import ChatModel, Templates, render_messages
from recxplain.reclaif import CandidateSet, display_title
from recxplain.recommenders import ranks_to_metrics
from recxplain.schemas import Movie


def title_key(title: str) -> str:
    return normalize(title).strip()


# ---------------------------------------------------------------------------------------------
# Prompts


def shown_movies(movies: Sequence[Movie]) -> list[dict]:
    """Movies as the prompts list them: `{"title": display_title(movie)}` each."""
    return [{"title": display_title(m)} for m in movies]


def recommend_messages(cs: CandidateSet, answer: ReclaifAnswerConfig, templates: Templates) -> list[dict]:
    """The RecLAIF recommender prompt for one candidate set (teacher, students and evaluation)."""
    return render_messages(answer.prompt, templates, history=shown_movies(cs.history),
                           candidates=shown_movies(cs.candidates), k=wanted_picks(cs, answer))


def judge_context(cs: CandidateSet) -> dict[str, Any]:
    """Template variables of RecLAIF's judge and explainability prompts for one candidate set."""
    return {
        "history": shown_movies(cs.history),
        "candidates": shown_movies(cs.candidates),
        "label": {"title": display_title(cs.target)},
    }


def wanted_picks(cs: CandidateSet, answer: ReclaifAnswerConfig) -> int:
    return min(answer.top_k, len(cs.candidates))


def shown_position(cs: CandidateSet, item_id: int) -> int:
    """1-based place of `item_id` in the candidate list as the prompt shows it."""
    return [c.item_id for c in cs.candidates].index(item_id) + 1


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
        self.full = {m.item_id: title_key(_YEAR.sub("", _clean_line(display_title(m)))) for m in candidates}
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
        key = title_key(_YEAR.sub("", name))
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
            if rest and title_key(rest) not in _PLACEHOLDERS:
                answer.preferences.append(rest)
            continue
        if _LIST_HEADING.match(line) and (line.rstrip().endswith(":") or len(words(line)) <= 8):
            section, heading_seen = "list", True
            continue
        bulleted = bool(_BULLET.match(line))
        if section == "preferences" and (bulleted or _PREFERENCE_LABEL.match(line)):
            preference = _PREFERENCE_LABEL.sub("", _BULLET.sub("", line, count=1)).strip()
            if preference and title_key(preference) not in _PLACEHOLDERS:
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
    if title_key(name) in _REASON_LABELS:  # "Reason: ..." continues the previous pick
        if answer.reasons and not answer.reasons[-1]:
            answer.reasons[-1] = reason
        return
    if title_key(name) in _PLACEHOLDERS:
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


def load_model(cfg, artifacts_dir: Path, cache_path: Path) -> ChatModel:
    """`recxplain.llm.load_chat_model` with its response cache at `cache_path` (folder created)."""
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    return load_chat_model(cfg, Path(artifacts_dir), cache_path)


def answer_parsers(sets: Sequence[CandidateSet], answer: ReclaifAnswerConfig) -> list:
    """Per set, `require_valid` on its candidates and k: the parsers `generate_parsed` re-asks with."""
    return [partial(require_valid, candidates=cs.candidates, k=wanted_picks(cs, answer),
                    fuzzy_threshold=answer.fuzzy_threshold) for cs in sets]


# ---------------------------------------------------------------------------------------------
# The template teacher's answers


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
