"""Checks that see what a reader sees in an explanation: one implementation for every consumer.

`check_explanation(case, text)` runs every check of one explanation against the evidence of its
case and returns a `CheckResult`. The same result labels preference pairs (the rubric judge in
recxplain/judging.py), selects the teacher's best-of-n answer (tasks/teacher.py) and grades the
held-out explanations (tasks/evaluate.py), so training and grading measure the same thing.

The checks (each passes or fails):
- `complete`: not empty and ends a sentence (an answer cut off mid-sentence fails);
- `length_ok`: within the word bounds;
- `no_repetition`: no sentence said twice, no word 4-gram said more than twice (`repetition`);
- `grounded`: names no title, genre or capitalised name that the evidence does not hold, and
  gives no movie of the case a genre it does not have ("Casablanca is a sci-fi movie");
- `consistent_ratings`: every claim about the user's own ratings matches the history ("you rated
  X 4/5" when they did; not a rating of the recommended movie, which they have not seen, nor a
  star count outside the 5-star scale), and what the answer recommends ("you may enjoy X") is
  the recommended movie, not one the user already rated;
- `no_technical_terms`: no leftovers of the recommender's internals (similarity scores, KNN,
  node, ids);
- `mentions_title`: names the recommended movie;
- `personal`: names at least one movie the user rated (an explanation for this user, not a
  blurb about the movie).
Plus a graded `specificity` (distinct evidence items used, up to 3). `score` is the share of
checks passed with specificity as one more, `passed` is every check passing, `usable` is the
format part alone (complete, within bounds, no loop): the validity of an answer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, computed_field

from recxplain.schemas import Case
from recxplain.text import MIN_SENTENCE_WORDS, SENTENCE_BREAK, sentence_key

# ---------------------------------------------------------------------------------------------
# Words, titles and phrases


def words(text: str) -> list[str]:
    """Word tokens (letters, digits, apostrophes) of `text`."""
    return re.findall(r"[\w']+", text)


def normalize(text: str) -> str:
    """Lowercase, apostrophes dropped, every other non-alphanumeric run -> one space, padded."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return " " + " ".join(re.findall(r"[a-z0-9]+", text)) + " "


ARTICLES = ("the", "a", "an")


def title_forms(title: str) -> set[str]:
    """Normalised ways a title may be written: with and without a leading article, a trailing
    year, an alternative title in parentheses or a subtitle after a colon."""
    base = re.sub(r"\s*\(\d{4}\)\s*$", "", title).strip()
    variants = {base, re.split(r"\s*\(", base)[0], re.split(r"\s*:", base)[0]}
    # MovieLens "Godfather, The", also before an alternative title: "Big Blue, The (Grand bleu, Le)"
    for variant in list(variants):
        moved = re.fullmatch(r"(.*), (The|A|An)", variant)
        if moved:
            variants.add(f"{moved.group(2)} {moved.group(1)}")
    forms = set()
    for variant in variants:
        form = normalize(variant).strip()
        if not form:
            continue
        forms.add(form)
        first, _, rest = form.partition(" ")
        if first in ARTICLES and rest:
            forms.add(rest)
    return forms


# Words a title or a name may keep in lowercase ("Back to the Future", "Sex, Lies, and Videotape").
LOWER_WORDS = {"a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "for", "with", "from", "by",
               "as", "vs", "nor", "but", "de", "la", "le", "du", "des", "et"}


def _tokens(text: str) -> tuple[list[str], list[bool], list[bool]]:
    """Lowercased alphanumeric tokens of `text` (apostrophes dropped, as `normalize`), whether
    each started with a capital letter, and whether punctuation separates it from the previous."""
    text = text.replace("'", "").replace("\u2019", "")
    tokens, caps, breaks, last = [], [], [], 0
    for match in re.finditer(r"[A-Za-z0-9]+", text):
        tokens.append(match.group().lower())
        caps.append(match.group()[0].isupper())
        breaks.append(bool(re.search(r"[^\s-]", text[last : match.start()])))
        last = match.end()
    return tokens, caps, breaks


class _Phrases:
    """Token sequences to find in a text (titles, genres), longest match first at each position."""

    def __init__(self, phrases: dict[tuple[str, ...], str]):
        self.by_first: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        for tokens, label in phrases.items():
            self.by_first.setdefault(tokens[0], []).append((tokens, label))
        for options in self.by_first.values():
            options.sort(key=lambda option: -len(option[0]))

    def find(self, tokens: list[str]) -> list[tuple[int, int, str]]:
        """(start, end, label) of every non-overlapping match, left to right."""
        found, i = [], 0
        while i < len(tokens):
            for phrase, label in self.by_first.get(tokens[i], ()):
                if tuple(tokens[i : i + len(phrase)]) == phrase:
                    found.append((i, i + len(phrase), label))
                    i += len(phrase)
                    break
            else:
                i += 1
        return found


def _title_case(tokens: list[str], caps: list[bool], start: int, end: int) -> bool:
    """Written like a title: every word but the small ones capitalised (so "a chain reaction"
    is not the movie "Chain Reaction")."""
    words = [i for i in range(start, end) if tokens[i] not in LOWER_WORDS and not tokens[i].isdigit()]
    return bool(words) and all(caps[i] for i in words)


def _genre_phrases(genres: Sequence[str]) -> dict[tuple[str, ...], str]:
    """Token sequences naming each genre, singular and plural ("comedy", "comedies")."""
    phrases = {}
    for genre in genres:
        tokens = tuple(normalize(genre).split())
        if not tokens:
            continue
        last = tokens[-1]
        plurals = {last + "s", last + "es"} | ({last[:-1] + "ies"} if last.endswith("y") else set())
        for variant in {last, *plurals}:
            phrases[tokens[:-1] + (variant,)] = genre
    return phrases


# Leftovers of the recommender's internals that a user-facing explanation must not contain
# (the first seed measures their rate). Each entry: (label, regex on the raw text).
TECHNICAL_TERMS: list[tuple[str, str]] = [
    ("cosine", r"\bcosine\b"),
    ("similarity score", r"\bsimilarity (?:score|value|weight)s?\b"),
    ("KNN", r"\b(?:k-?nn|item-?knn|k-nearest)\b"),
    ("nearest neighbour", r"\bnearest[- ]neighbou?rs?\b"),
    ("neighbour", r"\bneighbou?rs?\b"),
    ("node", r"\bnodes?\b"),
    ("knowledge graph", r"\bknowledge[- ]graph\b"),
    ("graph", r"\bgraphs?\b"),
    ("embedding", r"\bembeddings?\b"),
    ("vector", r"\bvectors?\b"),
    ("entity", r"\bentit(?:y|ies)\b"),
    ("path", r"(?<!-)\bpaths?\b(?!-)"),  # not "path-breaking"
    ("item/user id", r"\b(?:item|user|movie)[ _-]?ids?\b"),
    ("typed entity id", r"\b(?:movie|actor|director|writer|producer|genre|tag|user|company|award):\S+"),
    ("freebase id", r"\bm\.0[0-9a-z_]+\b"),
    ("relation name", r"\bfilm\.film\.\w+|\bhas_tag\b|\bsimilar_to\b"),
    ("raw weight", r"(?<![\w.])0\.\d{2,}\b"),
]


def find_technical_terms(text: str) -> list[str]:
    """Labels of the technical leftovers found in `text` (each label once, in table order)."""
    return [label for label, pattern in TECHNICAL_TERMS if re.search(pattern, text, re.IGNORECASE)]


def repetition(text: str, n: int = 4, max_count: int = 2, long_n: int = 8, titles: Sequence[str] = ()) -> str | None:
    """The repeated fragment when `text` loops: a sentence said twice, a word n-gram said more
    than `max_count` times, or a `long_n`-word span said twice; None otherwise. Each mention of
    one of `titles` counts as one word, and n-grams inside or across a title are not counted:
    naming a four-word title three times is no loop, repeating a clause around it is."""
    seen = set()
    for sentence in SENTENCE_BREAK.split(text):
        key = sentence_key(sentence)
        if len(key.split()) >= MIN_SENTENCE_WORDS and key in seen:
            return key
        seen.add(key)
    padded = normalize(text)
    for title in sorted(titles, key=len, reverse=True):
        padded = padded.replace(normalize(title), " | ")
    tokens = padded.split()
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        if "|" in gram:
            continue
        counts[gram] = counts.get(gram, 0) + 1
        if counts[gram] > max_count:
            return " ".join(gram)
    spans: set[tuple[str, ...]] = set()
    for i in range(len(tokens) - long_n + 1):
        span = tuple(tokens[i : i + long_n])
        if span in spans:
            return " ".join(span)
        spans.add(span)
    return None


# ---------------------------------------------------------------------------------------------
# The checks


class CheckResult(BaseModel):
    """Every check of one explanation against its case (see `check_explanation`).

    The checks in `CHECKS` pass or fail; `specificity` (0-1) grades how many distinct evidence
    items (titles, genres) the explanation uses, up to 3. `score` = (passed checks + specificity)
    / (len(CHECKS) + 1). The lists say what failed, for a reader of the artifacts.
    """

    model_config = ConfigDict(frozen=True)

    complete: bool
    length_ok: bool
    no_repetition: bool
    grounded: bool
    consistent_ratings: bool
    no_technical_terms: bool
    mentions_title: bool
    personal: bool
    specificity: float = Field(ge=0, le=1)
    words: int
    supported: int = 0
    unknown_titles: list[str] = []
    unknown_genres: list[str] = []
    unknown_names: list[str] = []
    wrong_years: list[str] = []
    wrong_genres: list[str] = []
    false_rating_claims: list[str] = []
    technical_terms: list[str] = []
    repeated: str | None = None

    CHECKS: ClassVar[tuple[str, ...]] = ("complete", "length_ok", "no_repetition", "grounded", "consistent_ratings",
                                         "no_technical_terms", "mentions_title", "personal")

    @property
    def checks(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in self.CHECKS}

    @property
    def failed(self) -> list[str]:
        return [name for name, ok in self.checks.items() if not ok]

    @computed_field
    @property
    def score(self) -> float:
        return round((sum(self.checks.values()) + self.specificity) / (len(self.CHECKS) + 1), 6)

    @property
    def passed(self) -> bool:
        """Every check passes."""
        return all(self.checks.values())

    @property
    def usable(self) -> bool:
        """The format alone: complete, within the word bounds, no loop (an answer's validity)."""
        return self.complete and self.length_ok and self.no_repetition

    @property
    def unsupported(self) -> int:
        """Claims the evidence does not support: unknown titles, genres and names, wrong years and
        genres, false claims about the user's ratings."""
        return (len(self.unknown_titles) + len(self.unknown_genres) + len(self.unknown_names)
                + len(self.wrong_years) + len(self.wrong_genres) + len(self.false_rating_claims))

    @property
    def faithfulness(self) -> float:
        """Supported claims / all checkable claims (NaN when the text makes none)."""
        total = self.supported + self.unsupported
        return self.supported / total if total else math.nan


@dataclass
class Catalogue:
    """Every title and genre of the dataset (build_cases' catalogue.json): lets the rubric spot
    a real movie or genre that the explanation names but the case's evidence does not hold."""

    titles: list[str] = field(default_factory=list)
    genres: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Single-word titles ("Heat", "Big") are common words: only multi-word forms are searched.
        # Full titles are added last so that they win over a shorter form of another title
        # ("The Godfather" over the "The Godfather" form of "The Godfather: Part II").
        forms: dict[tuple[str, ...], str] = {}
        for title in self.titles:
            for form in title_forms(title) - {normalize(title).strip()}:
                forms.setdefault(tuple(form.split()), title)
        for title in self.titles:
            forms[tuple(normalize(title).split())] = title
        self.title_phrases = _Phrases({form: title for form, title in forms.items() if len(form) >= 2})

    @classmethod
    def read(cls, cases_dir: Path) -> Catalogue:
        path = Path(cases_dir) / "catalogue.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (build_cases writes it next to the cases)")
        data = json.loads(path.read_text())
        return cls(titles=data["titles"], genres=data["genres"])


def _capitalised_runs(tokens: list[str], caps: list[bool], breaks: list[bool], covered: list[bool]) -> list[str]:
    """Runs of two or more capitalised words (small words such as "of the" may sit inside, as in
    "Lord of the Rings") outside `covered` tokens and not split by punctuation."""
    runs, current = [], []

    def close() -> None:
        while current and current[-1] in LOWER_WORDS:
            current.pop()
        if sum(t not in LOWER_WORDS for t in current) >= 2:
            runs.append(" ".join(current))
        current.clear()

    for i, token in enumerate(tokens):
        if breaks[i] or covered[i]:
            close()
        if covered[i]:
            continue
        if caps[i] and not token.isdigit() and token != "i":  # "When I ..." names nobody
            current.append(token)
        elif current and token in LOWER_WORDS and token not in ("and", "or", "nor", "but"):
            current.append(token)  # "Lord of the Rings"; "A and B" are two names
        else:
            close()
    close()
    return runs


# The user's own ratings as the path texts state them: "You rated Pulp Fiction (1994) 5/5; ...".
_PATH_RATING = re.compile(r"You rated (.+?) \((\d{4})\) (\d+(?:\.\d+)?)/5")
# Star counts in prose: "4/5", "4 out of 5", "4 stars" (out of 5).
_STARS = re.compile(r"\b(\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+)\b|\b(\d+(?:\.\d+)?)\s+stars?\b", re.IGNORECASE)
_YEAR = re.compile(r"\((\d{4})\)")
# "you rated / gave / loved ... X": a claim about the user's own past ("you may enjoy X" is a
# recommendation: RECOMMEND_VERBS).
RATED_VERBS = {"rated", "gave", "scored"}
# The lowest rating each verb of liking fits: "you loved X" for a 3/5 overstates.
LIKED_VERBS = {"loved": 4, "adored": 4, "enjoyed": 3, "liked": 3}
WATCHED_VERBS = {"watched", "saw", "seen"}
# "you may enjoy X", "you'll love X", "I recommend X": X is what the answer recommends, which must
# be the recommended movie ("You may enjoy E.T. 5/5" offers the user a movie they already rated).
RECOMMEND_VERBS = {"enjoy", "like", "love", "watch"}
MODALS = {"may", "might", "will", "would", "should", "could", "can", "youll", "youd"}
SUGGEST_VERBS = {"recommend", "suggest"}
CLAIM_REACH = 5  # tokens between the claim's verb and the title it is about
STARS_REACH = 6  # tokens between a title and the star count that follows it


def user_ratings(case: Case) -> dict[str, float]:
    """Title form -> the user's rating, from the history, the rated neighbours and the path texts."""
    ratings: dict[str, float] = {}
    rated = [(m.title, m.rating) for m in case.history]
    rated += [(n.title, n.rated) for n in case.neighbours if n.rated is not None]
    rated += [(m.group(1), float(m.group(3))) for p in case.paths for m in _PATH_RATING.finditer(p.text)]
    for title, rating in rated:
        for form in title_forms(title):
            ratings.setdefault(form, float(rating))
    return ratings


def _years(case: Case) -> dict[str, int]:
    years: dict[str, int] = {}
    dated = [(m.title, m.year) for m in [case.item, *case.history] if m.year]
    dated += [(m.group(1), int(m.group(2))) for p in case.paths for m in _PATH_RATING.finditer(p.text)]
    for title, year in dated:
        for form in title_forms(title):
            years.setdefault(form, year)
    return years


def _rating_of(title: str, ratings: dict[str, float]) -> float | None:
    return next((ratings[f] for f in title_forms(title) if f in ratings), None)


def _token_starts(text: str) -> list[int]:
    """Start offset of every `_tokens` token in the apostrophe-free text `_tokens` reads."""
    return [m.start() for m in re.finditer(r"[A-Za-z0-9]+", text)]


def rating_claims(case: Case, text: str, titles: list[tuple[int, int, str]],
                  ratings: dict[str, float]) -> tuple[list[str], list[str], int]:
    """(false rating claims, wrong years, supported claims) of `text`, whose evidence-title
    mentions are `titles` ((start, end, title) over `_tokens(text)`); `ratings`: `user_ratings(case)`."""
    plain = text.replace("'", "").replace("\u2019", "")
    starts = _token_starts(plain)
    tokens = [t.lower() for t in re.findall(r"[A-Za-z0-9]+", plain)]
    years = _years(case)
    item = case.item.title
    false, wrong_years, supported = [], [], 0

    def token_at(offset: int) -> int:
        return next((i for i, s in enumerate(starts) if s >= offset), len(starts))

    def title_after(i: int, reach: int = CLAIM_REACH) -> str | None:
        # The verb's object, not a title after a clause break: "Like X, which you rated 5/5, Y is ...".
        return next((t for start, _, t in titles if i < start <= i + reach
                     and not re.search(r"[,;:.!?]", plain[starts[i] + len(tokens[i]) : starts[start]])), None)

    for i, token in enumerate(tokens):
        recommends = (token in RECOMMEND_VERBS and i and tokens[i - 1] in MODALS
                      and (tokens[i - 1].startswith("you") or i > 1 and tokens[i - 2] == "you")
                      or token in SUGGEST_VERBS and i and tokens[i - 1] in ("i", "we"))
        if recommends:
            title = title_after(i, reach=2)  # its object: "enjoy X", "enjoy watching X", not "like it as much as X"
            if title is not None and title != item:
                seen = ", which you already rated," if _rating_of(title, ratings) is not None else ""
                false.append(f'recommends "{title}"{seen} instead of "{item}"')
            continue
        if token not in RATED_VERBS | LIKED_VERBS.keys() | WATCHED_VERBS or "you" not in tokens[max(0, i - 2):i]:
            continue
        title = title_after(i)
        if title is None:
            continue
        rating = _rating_of(title, ratings)
        if title == item:
            false.append(f'says you {token} "{item}", the movie recommended to you')
        elif rating is None:
            false.append(f'says you {token} "{title}", which is not among your ratings')
        elif rating < LIKED_VERBS.get(token, 0):
            false.append(f'says you {token} "{title}", which you rated {rating:g}/5')
        else:
            supported += 1
    for match in _STARS.finditer(plain):
        number = float(match.group(1) or match.group(3))
        scale = float(match.group(2) or 5)
        at = token_at(match.start())
        title = next((t for start, end, t in reversed(titles) if end <= at and at - end <= STARS_REACH), None)
        if scale != 5 or not 0 < number <= 5:
            false.append(f"gives a rating of {match.group(0)}, outside the 5-star scale")
        elif title is None:
            continue
        elif title == item:
            false.append(f'gives "{item}" {number:g}/5, but it is the movie recommended to you')
        elif (rating := _rating_of(title, ratings)) is None:
            false.append(f'gives "{title}" {number:g}/5, which is not among your ratings')
        elif abs(rating - number) > 1e-6:
            false.append(f'gives "{title}" {number:g}/5; you rated it {rating:g}/5')
        else:
            supported += 1
    for match in _YEAR.finditer(plain):
        at = token_at(match.start())
        title = next((t for _, end, t in titles if end == at), None)
        known = next((years[f] for f in title_forms(title) if f in years), None) if title else None
        if known is not None and known != int(match.group(1)):
            wrong_years.append(f"{title} ({match.group(1)}; it is from {known})")
    return false, wrong_years, supported


# "<title> (1942) is a sci-fi movie", "<title>, which is a sci-fi movie", "<title> was an action and":
# the copula, then at most two words
_GENRE_CLAIM = re.compile(
    r"\s*(?:\(\d{4}\)\s*)?,?\s*(?:(?:which|that)\s+)?(?:is|was)\s+(?:(?:a|an|the)\s+)?(?:[a-z]+\s+){0,2}", re.I)


# The worked example's shape, up to the genre: "Like <title>, which you rated 4/5, it is a " (one sentence)
_LIKE_IT = re.compile(r"(?:^|[.!?]\s+)Like [^.!?]*,\s*it\s+(?:is|was)\s+(?:(?:a|an)\s+)?(?:[a-z]+\s+){0,2}$")


def genre_claims(case: Case, text: str, titles: list[tuple[int, int, str]],
                 genres: list[tuple[int, str]]) -> list[str]:
    """Genres claimed for a movie of the case that it does not have: each genre mention right after
    "<title> (year) is a" or "<title>, which is a", or after "Like <title>, ..., it is a" for the
    recommended movie (`titles`: evidence-title mentions (start, end, title), `genres`: genre mentions (start,
    genre), both over `_tokens(text)`). Movies whose genres the case does not hold (a path's
    linking movie outside the history) are not judged."""
    plain = text.replace("'", "").replace("\u2019", "")
    starts = _token_starts(plain)
    known = {m.title: set(m.genres) for m in [case.item, *case.history] if m.genres}
    wrong = []
    for at, genre in genres:
        subject = next(((end, t) for _, end, t in reversed(titles) if end <= at), None)
        if subject is None:
            continue
        end, title = subject
        between = plain[starts[end - 1]:starts[at]]
        between = between[re.match(r"[A-Za-z0-9]+", between).end():]  # after the title's last word
        if not _GENRE_CLAIM.fullmatch(between):
            # "Like <title>, which you rated 4/5, it is a sci-fi movie": "it" is the recommended movie
            like = _LIKE_IT.search(plain[:starts[at]])
            if not like or case.item.title not in known:
                continue
            title = case.item.title
        if title in known and genre not in known[title]:
            wrong.append(f"{title} is not {genre} ({', '.join(sorted(known[title]))})")
    return wrong


def ends_sentence(text: str) -> bool:
    """Whether `text` ends a sentence (a full stop, ! or ?, maybe inside quotes or brackets)."""
    return bool(re.search(r"[.!?][\"')\u201d\u2019]*\s*$", text))


def check_explanation(
    case: Case,
    text: str,
    *,
    catalogue: Catalogue | None = None,
    min_words: int = 15,
    max_words: int = 120,
) -> CheckResult:
    """Run every check of `text` as an explanation of `case` (see the module docstring).

    Evidence = the recommended movie, the history, the neighbours, their genres and whatever the
    path texts name (not `next_item`: explainers never see it). Ungrounded, each listed in the
    result:
    - `unknown_titles`: a catalogue title (two or more words, written in title case) or a quoted
      capitalised phrase that is not an evidence title;
    - `unknown_genres`: a catalogue genre no evidence movie or path has;
    - `unknown_names`: a run of two or more capitalised words (a person, a place, an invented
      title) that appears nowhere in the evidence;
    - `wrong_years`: an evidence title followed by a year that is not its own;
    - `wrong_genres`: "<title> (year) is a <genre> ...", "<title>, which is a <genre> ..." (or
      "Like <title>, ..., it is a <genre>" of the recommended movie) for a movie of the case
      whose genres are known and do not include that genre.
    Without a catalogue, titles are checked through quoted phrases and capitalised runs only.
    """
    catalogue = catalogue or Catalogue()
    tokens, caps, breaks = _tokens(text)
    path_tokens = _tokens(" ".join(p.text for p in case.paths))[0]
    evidence_titles = case_titles(case)
    evidence_titles += [title for _, _, title in catalogue.title_phrases.find(path_tokens)]
    evidence_forms = {form for title in evidence_titles for form in title_forms(title)}
    evidence = _Phrases(
        {tuple(form.split()): title for title in reversed(evidence_titles) for form in title_forms(title)}
    )
    genre_phrases = _Phrases(
        _genre_phrases(sorted(set(catalogue.genres) | {g for m in [case.item, *case.history] for g in m.genres}))
    )
    evidence_genres = {g for m in [case.item, *case.history] for g in m.genres}
    evidence_genres |= {genre for _, _, genre in genre_phrases.find(path_tokens)}

    covered = [False] * len(tokens)

    def cover(start: int, end: int) -> None:
        covered[start:end] = [True] * (end - start)

    used_titles, mentions = set(), evidence.find(tokens)
    for start, end, title in mentions:
        used_titles.add(title)
        cover(start, end)
    unknown_titles = []
    for start, end, title in catalogue.title_phrases.find(tokens):
        if any(covered[start:end]) or not _title_case(tokens, caps, start, end):
            continue
        cover(start, end)
        if not title_forms(title) & evidence_forms and title not in unknown_titles:
            unknown_titles.append(title)
    for quoted in re.findall(r"[\"\u201c*]([A-Z][^\"\u201d*\n]{1,60})[\"\u201d*]", text):
        quoted = quoted.strip()
        if len(quoted.split()) <= 8 and not title_forms(quoted) & evidence_forms and quoted not in unknown_titles:
            if not genre_phrases.find(_tokens(quoted)[0]):
                unknown_titles.append(quoted)

    named_genres, genre_mentions = set(), []
    for start, end, genre in genre_phrases.find(tokens):
        if not any(covered[start:end]):  # a word inside a title ("Star Wars") names no genre
            named_genres.add(genre)
            genre_mentions.append((start, genre))
            cover(start, end)
    unknown_genres = sorted(named_genres - evidence_genres)
    wrong_genres = genre_claims(case, text, mentions, genre_mentions)

    evidence_text = normalize(" ".join([*evidence_titles, *(p.text for p in case.paths), *evidence_genres]))
    unknown_names = []
    for name in _capitalised_runs(tokens, caps, breaks, covered):
        if f" {name} " not in evidence_text and not any(name in t.lower() for t in unknown_titles):
            unknown_names.append(name)

    ratings = user_ratings(case)
    false_claims, wrong_years, supported_claims = rating_claims(case, text, mentions, ratings)
    used_items = (used_titles - {case.item.title}) | (named_genres & evidence_genres)
    count = len(words(text))
    repeated = repetition(text, titles=[form for title in used_titles for form in title_forms(title)])
    technical = find_technical_terms(text)
    return CheckResult(
        complete=count > 0 and ends_sentence(text),
        length_ok=min_words <= count <= max_words,
        no_repetition=repeated is None,
        grounded=not (unknown_titles or unknown_genres or unknown_names or wrong_years or wrong_genres),
        consistent_ratings=not false_claims,
        no_technical_terms=not technical,
        mentions_title=case.item.title in used_titles,
        personal=any(_rating_of(t, ratings) is not None for t in used_titles - {case.item.title}),
        specificity=min(len(used_items), 3) / 3,
        words=count,
        supported=len(used_titles) + len(named_genres & evidence_genres) + supported_claims,
        unknown_titles=unknown_titles,
        unknown_genres=unknown_genres,
        unknown_names=unknown_names,
        wrong_years=wrong_years,
        wrong_genres=wrong_genres,
        false_rating_claims=false_claims,
        technical_terms=technical,
        repeated=repeated,
    )


def check_explanations(
    items: Sequence[tuple[Case, str]], *, catalogue: Catalogue | None = None, min_words: int = 15,
    max_words: int = 120,
) -> list[CheckResult]:
    """`check_explanation` of every (case, text)."""
    return [check_explanation(c, t, catalogue=catalogue, min_words=min_words, max_words=max_words) for c, t in items]


# ---------------------------------------------------------------------------------------------
# Answers: cleaning, the usable-format rule, best-of-n


def clean_explanation(text: str) -> str:
    """The explanation inside a model's answer: code fences, an "Explanation:" label and
    surrounding quotes removed, whitespace collapsed, an unfinished last sentence cut (when at
    least one sentence is complete)."""
    text = re.sub(r"```[a-z]*", "", text).strip()
    text = re.sub(r"^\s*\**(?:explanation|answer)\**\s*:\s*", "", text, flags=re.IGNORECASE)
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] in "\"\u201c" and text[-1] in "\"\u201d":
        text = text[1:-1].strip()
    if text and text[-1] not in ".!?\"')\u201d":
        ends = [m.end() for m in re.finditer(r"[.!?][\"')\u201d]?(?=\s)", text)]
        if ends:
            text = text[: ends[-1]]
    return text


def case_titles(case: Case) -> list[str]:
    """The titles a case's evidence names: the recommended movie, the user's history, the
    neighbours and the rated movies of its paths."""
    titles = [case.item.title, *(m.title for m in case.history), *(n.title for n in case.neighbours)]
    return titles + [m.group(1) for p in case.paths for m in _PATH_RATING.finditer(p.text)]


def parse_explanation(text: str, *, min_words: int, max_words: int, case: Case | None = None) -> str:
    """`clean_explanation(text)` when it is a usable explanation; ValueError saying why not.

    With `case`, its titles count as one word each for the loop rule, as in `check_explanation`
    (a long title named twice is no loop)."""
    cleaned = clean_explanation(text)
    count = len(words(cleaned))
    if count == 0:
        raise ValueError("the answer is empty; write the explanation")
    if not ends_sentence(cleaned):
        raise ValueError("the explanation stops mid-sentence; finish every sentence")
    if count < min_words:
        raise ValueError(f"the explanation has {count} words; write at least {min_words}")
    if count > max_words:
        raise ValueError(f"the explanation has {count} words; write at most {max_words}")
    titles = [form for title in case_titles(case) for form in title_forms(title)] if case is not None else ()
    looped = repetition(cleaned, titles=titles)
    if looped:
        raise ValueError(f'the explanation repeats itself ("{looped}"); give each reason once')
    return cleaned


def pick_best(
    cases: Sequence[Case], samples: Sequence[Sequence[str | None]], *, catalogue: Catalogue | None = None,
    min_words: int = 15, max_words: int = 120, require_passed: bool = True,
) -> tuple[list[int | None], list[list[CheckResult | None]]]:
    """Best-of-n: per case, the index of the sample the checks rate best (highest score, then
    the lowest index), None when no sample qualifies; and the checks of every sample.

    `samples[i]` holds case i's answers, None for an answer that is not usable (skipped). With
    `require_passed`, only a sample that passes every check qualifies.
    """
    kept, checks = [], []
    for case, answers in zip(cases, samples, strict=True):
        results = [None if text is None else check_explanation(case, text, catalogue=catalogue, min_words=min_words,
                                                                 max_words=max_words) for text in answers]
        qualify = [j for j, r in enumerate(results) if r is not None and (r.passed or not require_passed)]
        kept.append(max(qualify, key=lambda j: (results[j].score, -j)) if qualify else None)
        checks.append(results)
    return kept, checks
