"""Persistent response cache: one SQLite file (WAL mode), one row per answer.

The key is a SHA-256 of (provider identity, messages, sampling parameters, sample index); see
`cache_key`. Each answer is committed as soon as it arrives, so a crash or a kill loses at most
the answer in flight, and WAL lets several processes (parallel stages) share one file. Only
usable answers are stored (errors are asked again next run). No API key is ever part of a key
or a row: identities hold the name of the key's environment variable at most.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path

from recxplain.config import SamplingConfig

KEY_VERSION = 1  # bump when the meaning of a cached answer changes


def cache_key(identity: dict, messages: list[dict], sampling: SamplingConfig, index: int) -> str:
    """Stable hex key of one answer (independent of dict order and of the process)."""
    payload = {"v": KEY_VERSION, "model": identity, "messages": messages,
               "sampling": sampling.model_dump(mode="json"), "index": index}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ResponseCache:
    """A SQLite table `responses(key, value, provider, model, created)`; value is the answer's JSON."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
            "provider TEXT, model TEXT, created REAL)"
        )

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"

    def get_many(self, keys: list[str]) -> dict[int, dict]:
        """{position in `keys`: stored answer fields} for the keys present."""
        found: dict[str, dict] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), 500):  # SQLite caps bound parameters per query
                chunk = unique[start:start + 500]
                rows = self._db.execute(
                    f"SELECT key, value FROM responses WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                found.update((key, json.loads(value)) for key, value in rows)
        return {j: found[key] for j, key in enumerate(keys) if key in found}

    def put(self, key: str, fields: dict, identity: dict) -> None:
        """Store one answer and commit it (autocommit: one transaction per row)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, value, provider, model, created) VALUES (?, ?, ?, ?, ?)",
                (key, json.dumps(fields, ensure_ascii=False), identity.get("provider"), identity.get("model"),
                 time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
