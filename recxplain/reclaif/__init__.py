"""RecLAIF's library, under its stages (tasks/reclaif/, one module per stage).

Here: the candidate sets as the stages write and read them (`CandidateSet`,
`read_candidate_sets`), how a movie is shown to the models (`display_title`) and the
comparison's metrics (`METRICS`); the report (tasks/report.py) reads the stages' outputs through
them. The rest, one module per concern:

- sampling.py: the negatives of a candidate set and the users sampled (build_candidate_sets).
- answers.py: the recommender prompt, reading an answer (`parse_recommendation`), its rubric
  scores and ranking metrics, the models that answer, the `template` teacher's answers.
- judge.py: judging two answers of a set (reclaif_judge_pairs).
- evaluation.py: the comparison: the recommenders compared, classic and chance rankings, the
  per-answer table, its summary and the markdown tables (reclaif_recommend, reclaif_evaluate).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from recxplain.schemas import Movie

# The comparison's metrics, in the order of its table (recxplain/reclaif/evaluation.py and the report).
METRICS = ("ValidRatio", "Hit@1", "Hit@3", "NDCG@3", "Precision@K", "Diversity", "Explainability")


class CandidateSet(BaseModel):
    """One user's recommendation task: history, shuffled candidates, the held-out next movie.

    `set_id` is `<split>-<user_id>`; `target` is one of `candidates`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    set_id: str
    split: Literal["train", "eval"]
    user_id: int
    history: list[Movie]
    candidates: list[Movie]
    target: Movie


def display_title(movie: Movie) -> str:
    """How a movie is shown to the models: its title and year (titles repeat across years)."""
    return f"{movie.title} ({movie.year})" if movie.year else movie.title


def read_candidate_sets(folder: Path, split: str | None = None) -> list[CandidateSet]:
    """The sets of a `build_candidate_sets` folder (one split, or all); bad lines name file and line."""
    path = Path(folder) / "candidates.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (written by build_candidate_sets)")
    sets = []
    with open(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                found = CandidateSet.model_validate_json(line)
            except ValueError as err:
                raise ValueError(f"{path}:{number}: not a valid candidate set: {err}") from None
            if split is None or found.split == split:
                sets.append(found)
    if not sets:
        raise ValueError(f"{path}: no {split or ''} candidate sets".replace("  ", " "))
    return sets
