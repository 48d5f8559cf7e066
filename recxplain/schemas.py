"""Data contracts between stages (README, "What `make flow` does").

Tabular artifacts are parquet files with the columns listed in `COLUMNS`; `check_columns` gives
a clear error naming the file when one is missing. Explanation cases are JSONL of `Case`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict

# Required columns of each tabular artifact (extra columns are allowed: metadata differs by source).
COLUMNS: dict[str, tuple[str, ...]] = {
    "interactions": ("user_id", "item_id", "rating", "timestamp", "split"),
    "items": ("item_id", "title", "year", "genres"),
    "users": ("user_id",),
    "kg": ("head", "relation", "tail"),
    "recommendations": ("user_id", "rank", "item_id", "score", "model"),
    "neighbours": ("user_id", "item_id", "neighbour_item_id", "weight"),
    "paths": ("user_id", "item_id", "rank", "pattern", "steps", "score"),
    "explanations": ("case_id", "model", "text", "tokens", "valid"),
    "pairs": ("case_id", "text_a", "text_b", "source", "prompt"),  # sample_pairs, reclaif_sample_pairs
    "metrics": ("explainer", "metric", "value", "ci_low", "ci_high", "n"),
}


def check_columns(frame, kind: str, source: Path | str) -> None:
    """Raise ValueError naming `source` and the missing columns of a `kind` artifact (a polars or
    pandas frame)."""
    names = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else list(frame.columns)
    missing = [c for c in COLUMNS[kind] if c not in names]
    if missing:
        raise ValueError(f"{source}: {kind} artifact lacks column(s) {missing}; has {names}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Movie(Strict):
    item_id: int
    title: str
    year: int | None = None
    genres: list[str] = []


class RatedMovie(Movie):
    rating: float
    timestamp: int


class Neighbour(Strict):
    """One of the item-KNN neighbours behind a recommendation (the intrinsic explanation)."""

    item_id: int
    title: str
    weight: float
    rated: float | None = None  # the user's rating of the neighbour, when the user rated it


class PathEvidence(Strict):
    """One knowledge-graph path from the user to the recommended movie (post-hoc explanation)."""

    pattern: str  # e.g. "user-rated-movie-actor-movie"
    steps: list[str]  # alternating typed entity ids and relation names
    text: str  # readable rendering, no raw Freebase ids
    score: float


class Case(Strict):
    """Everything an explainer may use to explain one recommendation."""

    case_id: str  # f"{user_id}-{item_id}"
    split: Literal["train", "eval"]
    user_id: int
    profile: dict[str, str | int] = {}  # age, gender, occupation where the source has them
    history: list[RatedMovie]  # last L rated movies, oldest first
    item: Movie  # the recommended movie
    rank: int
    score: float
    neighbours: list[Neighbour] = []
    paths: list[PathEvidence] = []
    next_item: Movie | None = None  # the held-out next movie (RecLAIF's relevance reference)


def read_cases(path: Path) -> list[Case]:
    """Load a cases JSONL file; a bad line raises ValueError with file and line number."""
    cases = []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                cases.append(Case.model_validate_json(line))
            except ValueError as err:
                raise ValueError(f"{path}:{number}: not a valid case: {err}") from None
    return cases


def write_cases(cases: list[Case], path: Path) -> None:
    with open(path, "w") as fh:
        for case in cases:
            fh.write(case.model_dump_json() + "\n")
