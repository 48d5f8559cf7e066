"""The admin leaderboard: every statistic comes from recxplain.stats, computed on the votes.

Bradley-Terry strengths with bootstrap 95% intervals, the win-rate matrix, exact binomial tests
per pair on decisive votes (with Holm's correction and the votes a 80%-power test would need),
and, when the bundle carries the AI judge's tournament, Cohen's kappa between judge and people.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from recxplain import stats


@dataclass
class Leaderboard:
    votes: int
    voters: int
    strengths: pd.DataFrame  # model, strength, ci_low, ci_high, battles
    win_rates: pd.DataFrame  # row model's win rate against column model
    tests: pd.DataFrame  # stats.pairwise_tests
    agreement: dict | None  # stats.agreement, None without judge verdicts


def build_leaderboard(votes: pd.DataFrame, judge: pd.DataFrame | None, n_boot: int, seed: int) -> Leaderboard:
    """Statistics of a votes table (storage.votes_frame: model_a, model_b, outcome, case_id, voter_id)."""
    battles = votes[["case_id", "model_a", "model_b", "outcome"]]
    return Leaderboard(
        votes=len(votes),
        voters=votes["voter_id"].nunique(),
        strengths=stats.bradley_terry(battles, n_boot=n_boot, seed=seed),
        win_rates=stats.win_rate_matrix(battles),
        tests=stats.pairwise_tests(battles),
        agreement=stats.agreement(battles, judge) if judge is not None else None,
    )
