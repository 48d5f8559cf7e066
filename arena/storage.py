"""Votes in SQLite (WAL mode): voters, the matchups shown to them, and their votes.

Every statement is parameterised. A vote is committed (synchronous=FULL) before the voter sees
the next page, so a restart or crash loses nothing that was acknowledged. One vote per voter per
(case, pair of explainers) is a UNIQUE constraint, not an application check.

Explainers are stored under their bundle code names (`e1`, ...); the admin export maps them back.
A database serves one bundle: opening it with another bundle is refused, so votes on different
explanation sets never mix.

Only actions write: a voter and a matchup row are stored with the first vote or skip, never for a
page view (the pair on screen lives in the signed session cookie). A voter and a vote carry the
salted hash of the IP address they came from (never the address), which the per-IP limits count
within one write transaction, so concurrent requests cannot overshoot them.
"""

from __future__ import annotations

import random
import secrets
import sqlite3
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import limits
import pandas as pd

from arena.bundle import Bundle
from recxplain.stats import OUTCOMES

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS voters (
    voter_id TEXT PRIMARY KEY,
    invite_code TEXT,
    created_at REAL NOT NULL,
    ip_hash TEXT              -- salted hash of the address it came from (NULL before they were kept)
);
-- What a voter voted on or skipped: a case and two explainers, left (A) and right (B).
CREATE TABLE IF NOT EXISTS matchups (
    matchup_id TEXT PRIMARY KEY,
    voter_id TEXT NOT NULL REFERENCES voters (voter_id),
    case_id TEXT NOT NULL,
    left_code TEXT NOT NULL,
    right_code TEXT NOT NULL,
    pair_low TEXT NOT NULL,   -- the pair in sorted order, for counting and uniqueness
    pair_high TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'shown' CHECK (status IN ('shown', 'voted', 'skipped')),
    shown_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS matchups_by_voter ON matchups (voter_id, status);
CREATE TABLE IF NOT EXISTS votes (
    vote_id INTEGER PRIMARY KEY,
    matchup_id TEXT NOT NULL UNIQUE REFERENCES matchups (matchup_id),
    voter_id TEXT NOT NULL REFERENCES voters (voter_id),
    case_id TEXT NOT NULL,
    model_a TEXT NOT NULL,    -- code shown as A
    model_b TEXT NOT NULL,    -- code shown as B
    pair_low TEXT NOT NULL,
    pair_high TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('a', 'b', 'tie', 'both_bad')),
    comment TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    ip_hash TEXT,
    UNIQUE (voter_id, case_id, pair_low, pair_high)
);
"""

# After the columns they index exist (databases from before the IP hashes get them added first).
IP_INDEXES = """
CREATE INDEX IF NOT EXISTS voters_by_ip ON voters (ip_hash, created_at);
CREATE INDEX IF NOT EXISTS votes_by_ip ON votes (ip_hash, created_at);
"""


# Writers of one process take turns here instead of in SQLite's busy handler, whose sleeps (up
# to 100 ms) made throughput collapse with 50 concurrent voters. Other processes still wait on
# the busy timeout.
_WRITE_LOCK = threading.Lock()


def connect(db_path: Path) -> sqlite3.Connection:
    """A connection for one thread (sqlite3 connections are not shared between threads).

    Keep it open for the thread's life: closing the last connection of a WAL database
    checkpoints it, which cost ~10 ms per request when connections were per request.
    """
    conn = sqlite3.connect(db_path, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = FULL")  # a vote acknowledged is a vote on disk
    return conn


@contextmanager
def writing(conn: sqlite3.Connection):
    """One write transaction: committed on success, rolled back on error."""
    with _WRITE_LOCK, conn:
        yield conn


def init_db(db_path: Path, bundle: Bundle) -> None:
    """Create the database (WAL mode) or open an existing one made for the same bundle."""
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    conn = connect(db_path)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{db_path}: SQLite refused WAL mode (got {mode!r}); use a local disk")
        conn.executescript(SCHEMA)
        for table in ("voters", "votes"):
            if "ip_hash" not in {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN ip_hash TEXT")
        conn.executescript(IP_INDEXES)
        with writing(conn):
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('bundle_digest', ?)", (bundle.digest,))
        stored = conn.execute("SELECT value FROM meta WHERE key = 'bundle_digest'").fetchone()[0]
        if stored != bundle.digest:
            raise ValueError(
                f"{db_path}: these votes were cast on another bundle (sha256 {stored[:12]}..., this one is "
                f"{bundle.digest[:12]}...); start a new database for a new bundle"
            )
    finally:
        conn.close()


@dataclass(frozen=True)
class Quota:
    """At most `amount` rows per IP hash within the last `seconds`."""

    amount: int
    seconds: float


def parse_quotas(limit: str) -> tuple[Quota, ...]:
    """Quotas of a limit in flask-limiter's syntax: `30 per hour`, `30 per hour; 100 per day`."""
    return tuple(Quota(item.amount, item.get_expiry()) for item in limits.parse_many(limit))


def over_quota(conn: sqlite3.Connection, table: str, ip_hash: str, quotas: tuple[Quota, ...]) -> bool:
    """Whether `ip_hash` has as many rows in `table` ("voters" or "votes") as one of `quotas` allows."""
    now = time.time()
    for quota in quotas:
        # `table` is one of this module's constants ("voters", "votes"), never user input.
        count = conn.execute(
            f"SELECT COUNT(*) FROM {table} WHERE ip_hash = ? AND created_at > ?", (ip_hash, now - quota.seconds)
        ).fetchone()[0]
        if count >= quota.amount:
            return True
    return False


def add_voter(
    conn: sqlite3.Connection, ip_hash: str, quotas: tuple[Quota, ...] = (), invite_code: str | None = None
) -> str | None:
    """Register a new anonymous voter; return its id (kept in the signed session cookie), or None
    when its IP hash has started as many voters as `quotas` allow."""
    voter_id = secrets.token_urlsafe(16)
    with writing(conn):
        if over_quota(conn, "voters", ip_hash, quotas):
            return None
        conn.execute(
            "INSERT INTO voters (voter_id, invite_code, created_at, ip_hash) VALUES (?, ?, ?, ?)",
            (voter_id, invite_code, time.time(), ip_hash),
        )
    return voter_id


def voter_exists(conn: sqlite3.Connection, voter_id: str) -> bool:
    return conn.execute("SELECT 1 FROM voters WHERE voter_id = ?", (voter_id,)).fetchone() is not None


def get_matchup(conn: sqlite3.Connection, matchup_id: str, voter_id: str) -> sqlite3.Row | None:
    """A matchup this voter voted on or skipped."""
    return conn.execute(
        "SELECT * FROM matchups WHERE matchup_id = ? AND voter_id = ?", (matchup_id, voter_id)
    ).fetchone()


def choose_matchup(
    bundle: Bundle,
    done: set[tuple[str, str, str]],
    pair_counts: Counter,
    case_counts: Counter,
    rng: random.Random,
) -> tuple[str, str, str] | None:
    """Pick (case_id, code_low, code_high) the voter has not seen: least-shown pair first, then
    least-shown case, ties broken at random. None when the voter has seen everything."""
    best, best_key = None, None
    for case_id, case in bundle.cases.items():
        codes = sorted(case["explanations"])
        for i, low in enumerate(codes):
            for high in codes[i + 1 :]:
                if (case_id, low, high) in done:
                    continue
                key = (pair_counts[(low, high)], case_counts[case_id], rng.random())
                if best_key is None or key < best_key:
                    best, best_key = (case_id, low, high), key
    return best


def new_matchup(conn: sqlite3.Connection, voter_id: str | None, bundle: Bundle, rng: random.Random) -> dict | None:
    """Draw a matchup for the voter (None: not registered yet), sides in random order; None when
    the voter has voted on or skipped every pair. Nothing is stored until a vote or skip."""
    done = {
        (row["case_id"], row["pair_low"], row["pair_high"])
        for row in conn.execute("SELECT case_id, pair_low, pair_high FROM matchups WHERE voter_id = ?", (voter_id,))
    }
    pair_counts = Counter(
        {
            (r["pair_low"], r["pair_high"]): r["n"]
            for r in conn.execute(
                "SELECT pair_low, pair_high, COUNT(*) AS n FROM matchups GROUP BY pair_low, pair_high"
            )
        }
    )
    case_counts = Counter(
        {r["case_id"]: r["n"] for r in conn.execute("SELECT case_id, COUNT(*) AS n FROM matchups GROUP BY case_id")}
    )
    # Tie-breaks from a generator seeded by `rng` (one draw of the OS's randomness, not one per candidate).
    chosen = choose_matchup(bundle, done, pair_counts, case_counts, random.Random(rng.getrandbits(64)))
    if chosen is None:
        return None
    case_id, low, high = chosen
    left, right = (low, high) if rng.random() < 0.5 else (high, low)
    return {
        "matchup_id": secrets.token_urlsafe(12), "case_id": case_id, "left_code": left, "right_code": right,
        "pair_low": low, "pair_high": high, "shown_at": time.time(),
    }


def _insert_matchup(conn: sqlite3.Connection, voter_id: str, shown: dict, status: str) -> None:
    conn.execute(
        "INSERT INTO matchups (matchup_id, voter_id, case_id, left_code, right_code, pair_low, pair_high, status,"
        " shown_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (shown["matchup_id"], voter_id, shown["case_id"], shown["left_code"], shown["right_code"],
         shown["pair_low"], shown["pair_high"], status, shown["shown_at"]),
    )


def record_vote(
    conn: sqlite3.Connection, voter_id: str, shown: dict, outcome: str, comment: str, ip_hash: str,
    quotas: tuple[Quota, ...] = (),
) -> str:
    """Store a vote on the matchup `shown` to the voter (outcome relative to its A/B sides).

    Returns "saved", "repeat" (this voter already voted on or skipped it, or on the same case and
    pair) or "limited" (its IP hash has cast as many votes as `quotas` allow).
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r} is not one of {OUTCOMES}")
    try:
        with writing(conn):
            if over_quota(conn, "votes", ip_hash, quotas):
                return "limited"
            _insert_matchup(conn, voter_id, shown, "voted")
            conn.execute(
                "INSERT INTO votes (matchup_id, voter_id, case_id, model_a, model_b, pair_low, pair_high, outcome,"
                " comment, created_at, ip_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    shown["matchup_id"], voter_id, shown["case_id"], shown["left_code"], shown["right_code"],
                    shown["pair_low"], shown["pair_high"], outcome, comment, time.time(), ip_hash,
                ),
            )
    except sqlite3.IntegrityError:
        return "repeat"
    return "saved"


def skip_matchup(conn: sqlite3.Connection, voter_id: str, shown: dict) -> None:
    """Record that the voter skipped `shown`: it is not drawn for them again."""
    try:
        with writing(conn):
            _insert_matchup(conn, voter_id, shown, "skipped")
    except sqlite3.IntegrityError:
        pass  # already voted on or skipped


def vote_count(conn: sqlite3.Connection, voter_id: str | None = None) -> int:
    if voter_id is None:
        return conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]
    return conn.execute("SELECT COUNT(*) FROM votes WHERE voter_id = ?", (voter_id,)).fetchone()[0]


def votes_frame(conn: sqlite3.Connection, bundle: Bundle) -> pd.DataFrame:
    """All votes with real explainer names: vote_id, created_at (UTC), voter_id, invite_code,
    ip_hash, case_id, model_a, model_b, code_a, code_b, outcome, comment, and seconds (from the
    pair appearing on the voter's screen to the vote)."""
    rows = conn.execute(
        "SELECT v.vote_id, v.created_at, v.voter_id, w.invite_code, v.ip_hash, v.case_id, v.model_a AS code_a,"
        " v.model_b AS code_b, v.outcome, v.comment, v.created_at - m.shown_at AS seconds"
        " FROM votes AS v JOIN voters AS w USING (voter_id) JOIN matchups AS m USING (matchup_id)"
        " ORDER BY v.vote_id"
    ).fetchall()
    columns = [
        "vote_id", "created_at", "voter_id", "invite_code", "ip_hash", "case_id",
        "code_a", "code_b", "outcome", "comment", "seconds",
    ]
    frame = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    frame["created_at"] = pd.to_datetime(frame["created_at"].astype(float), unit="s", utc=True)
    frame["seconds"] = frame["seconds"].astype(float)
    frame["model_a"] = frame["code_a"].map(bundle.mapping)
    frame["model_b"] = frame["code_b"].map(bundle.mapping)
    return frame[
        ["vote_id", "created_at", "voter_id", "invite_code", "ip_hash", "case_id", "model_a", "model_b", "code_a",
         "code_b", "outcome", "comment", "seconds"]
    ]
