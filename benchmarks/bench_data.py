"""Time and peak memory of prepare_data: ml-100k, and a synthetic ML-32M-sized ratings file
(32M rows, generated here) cut to the 1M most recent ratings of active users.

    .venv/bin/python benchmarks/bench_data.py [--rows 32000000] [--keep 1000000]

Goals (issue 2): ml-100k under 2 s; the 32M-row case under 60 s and under 8 GiB peak.
Each measurement runs in a fresh process, so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent

MEASURE = """
import json, resource, sys, time
from pathlib import Path
from recxplain.config import DataConfig
from tasks.data import prepare_data
cfg = DataConfig.model_validate_json(sys.argv[1])
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
started = time.perf_counter()
prepare_data(out, data=cfg)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "summary": json.loads((out / "data_summary.json").read_text())}))
"""


def measure(cfg: dict, out: Path) -> dict:
    from recxplain.config import DataConfig

    text = DataConfig(**cfg).model_dump_json()
    done = subprocess.run([sys.executable, "-c", MEASURE, text, str(out)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def synthetic_ml32m(folder: Path, rows: int, seed: int = 0) -> None:
    """ML-32M-shaped ratings: 200k users with long-tailed activity, 87k movies, 1995-2023."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 200_948, 87_585
    activity = rng.pareto(1.2, n_users) + 1
    counts = np.maximum(1, (activity / activity.sum() * rows).astype(np.int64))
    counts = np.minimum(counts, n_items - 1)
    counts[: rows - counts.sum()] += 1 if counts.sum() < rows else 0
    users = np.repeat(np.arange(1, n_users + 1), counts)
    position = np.arange(len(users)) - np.repeat(np.cumsum(counts) - counts, counts)
    # item = (start + j * step) mod n_items is distinct for j < n_items: no duplicate pairs.
    start = rng.integers(0, n_items, n_users)[users - 1]
    items = (start + position * 7919) % n_items + 1
    timestamps = rng.integers(789_652_009, 1_697_164_000, len(users))
    ratings = (rng.integers(1, 11, len(users)) / 2).astype(np.float32)
    pl.DataFrame({"userId": users, "movieId": items, "rating": ratings, "timestamp": timestamps}).write_csv(
        folder / "ratings.csv"
    )
    genres = np.array(["Action", "Comedy", "Drama", "Thriller", "Romance", "Horror", "Sci-Fi"])
    pl.DataFrame(
        {
            "movieId": np.arange(1, n_items + 1),
            "title": [f"Movie {i} ({1950 + i % 74})" for i in range(1, n_items + 1)],
            "genres": ["|".join(genres[[i % 7, (i * 3) % 7]]) for i in range(n_items)],
        }
    ).write_csv(folder / "movies.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=32_000_000)
    parser.add_argument("--keep", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        tmp = Path(tmp)
        small = measure({"source": "ml-100k"}, tmp / "ml100k")
        print(f"ml-100k: {small['seconds']:.2f} s, peak {small['peak_rss_mib']:.0f} MiB, "
              f"{small['summary']['ratings']} ratings (goal < 2 s)")
        folder = tmp / "ml32m"
        folder.mkdir()
        started = time.perf_counter()
        synthetic_ml32m(folder, args.rows)
        size = (folder / "ratings.csv").stat().st_size / 2**30
        print(
            f"generated {args.rows:,} synthetic ratings ({size:.2f} GiB CSV) in {time.perf_counter() - started:.0f} s"
        )
        big = measure(
            {"source": "ml-latest", "path": str(folder), "min_user_ratings": 20, "max_ratings": args.keep},
            tmp / "ml32m-out",
        )
        s = big["summary"]
        print(f"ml-32m-shaped {args.rows:,} rows -> {s['ratings']:,} ratings of {s['users']:,} users: "
              f"{big['seconds']:.1f} s, peak {big['peak_rss_mib'] / 1024:.2f} GiB (goal < 60 s, < 8 GiB)")


if __name__ == "__main__":
    main()
