"""Suspicious votes, for the admin: who voted how much, from where, and how fast.

FastChat cleans its arena's battles before the leaderboard by counting votes per IP and dropping
the votes of banned IPs. Here the IP is only a salted hash, and two rules flag votes:
- a voter whose median time from seeing a pair to voting on it is under `fast_seconds` (nobody
  reads two explanations that fast: a script, or a person clicking through);
- an IP hash with more than `votes_per_ip` votes in all (one machine or network voting for many).
The admin sees the tables and can leave flagged votes out of the leaderboard.
"""

from __future__ import annotations

import pandas as pd

FAST = "fast voter"
BUSY = "busy network"


def flag_votes(votes: pd.DataFrame, fast_seconds: float, votes_per_ip: int) -> pd.Series:
    """One flag per vote (storage.votes_frame rows): '' or the reasons, joined by ', '."""
    median = votes.groupby("voter_id")["seconds"].transform("median")
    per_ip = votes.groupby("ip_hash")["vote_id"].transform("count")  # NaN for votes stored before IP hashes
    fast = (median < fast_seconds).map({True: FAST, False: ""})
    busy = (per_ip > votes_per_ip).map({True: BUSY, False: ""})
    return (fast + ", " + busy).str.strip(", ")  # 'fast voter', 'busy network', both, or ''


def by_network(votes: pd.DataFrame, flags: pd.Series, top: int = 20) -> pd.DataFrame:
    """The IP hashes with the most votes: ip_hash, voters, votes, median seconds, flagged votes."""
    frame = votes.assign(flagged=flags != "", ip_hash=votes["ip_hash"].fillna("(not kept)"))
    table = frame.groupby("ip_hash").agg(
        voters=("voter_id", "nunique"), votes=("vote_id", "count"), median_seconds=("seconds", "median"),
        flagged=("flagged", "sum"),
    )
    return table.sort_values("votes", ascending=False).head(top).reset_index()


def by_voter(votes: pd.DataFrame, flags: pd.Series, top: int = 20) -> pd.DataFrame:
    """The voters with the most votes, flagged ones first: voter_id, ip_hash, votes, median seconds, flag."""
    frame = votes.assign(flag=flags, ip_hash=votes["ip_hash"].fillna("(not kept)"))
    table = frame.groupby("voter_id").agg(
        ip_hash=("ip_hash", "first"), votes=("vote_id", "count"), median_seconds=("seconds", "median"),
        flag=("flag", "max"),  # the longest list of reasons among its votes
    )
    table["flagged_first"] = table["flag"] == ""
    return (
        table.sort_values(["flagged_first", "votes"], ascending=[True, False])
        .head(top)
        .drop(columns="flagged_first")
        .reset_index()
    )
