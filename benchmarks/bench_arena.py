"""Load test of the arena: N concurrent voters on 127.0.0.1 for a bounded time.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_arena.py [--voters 50] [--seconds 30]

Builds a synthetic bundle (cases x explainers) in a temporary folder, starts `python -m arena`
(waitress) in a separate process, and runs one thread per voter, each with its own session:
GET the page, POST a vote, repeat, until the time is up. Every request has a timeout and the run
stops at the deadline, so the benchmark is bounded (about `--seconds` + 15 s).

Reports votes/s, p50/p95 latency of a vote (the POST) and of a full round (page + vote), and
the votes acknowledged by the server (302) against the votes stored in SQLite afterwards: the
two must be equal, and the benchmark exits with status 1 when they are not. The per-session rate
limit is raised for the run (one voter here clicks far faster than a person).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from arena.bundle import export_arena  # noqa: E402
from recxplain.config import ArenaConfig  # noqa: E402
from recxplain.schemas import Case, Movie, RatedMovie, write_cases  # noqa: E402

TOKEN = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
MATCHUP = re.compile(r'id="matchup" name="matchup" type="hidden" value="([^"]+)"')


def build_bundle(folder: Path, n_cases: int, explainers: list[str]) -> Path:
    """A bundle of synthetic cases, exported by the real stage."""
    cases_dir, expl_dir, bundle_dir = folder / "cases", folder / "explanations", folder / "bundle"
    for path in (cases_dir, expl_dir, bundle_dir):
        path.mkdir()
    history = [
        RatedMovie(item_id=k, title=f"Movie {k}", year=1980 + k, genres=["Drama"], rating=1 + k % 5, timestamp=k)
        for k in range(10)
    ]
    cases = [
        Case(case_id=f"{n}-{1000 + n}", split="eval", user_id=n, history=history, rank=1, score=1.0,
             item=Movie(item_id=1000 + n, title=f"Pick {n}", year=2000, genres=["Comedy"]))
        for n in range(n_cases)
    ]
    write_cases(cases, cases_dir / "eval.jsonl")
    rows = [
        {"case_id": case.case_id, "model": model,
         "text": f"{model}: because you liked Movie {n % 10}, try Pick {n}. " * 3, "tokens": 40, "valid": True}
        for n, case in enumerate(cases) for model in explainers
    ]
    pd.DataFrame(rows).to_parquet(expl_dir / "explanations.parquet")
    export_arena(bundle_dir, arena=ArenaConfig(), cases=cases_dir, explanations=expl_dir)
    return bundle_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the arena server exited with status {server.returncode}")
        try:
            requests.get(url + "/static/arena.css", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError(f"the arena server did not answer on {url} within {timeout:.0f} s")


def voter(url: str, deadline: float, seed: int, results: dict, lock: threading.Lock) -> None:
    """One voter: page, vote, page, vote... until the deadline. Records what the server acknowledged."""
    rng = random.Random(seed)
    session = requests.Session()
    acknowledged, vote_latency, round_latency, errors = [], [], [], []
    while time.monotonic() < deadline:
        start = time.perf_counter()
        try:
            page = session.get(url + "/", timeout=10)
            matchup = MATCHUP.search(page.text)
            if page.status_code != 200 or matchup is None:
                errors.append(f"GET / {page.status_code}")
                break  # this voter has seen everything, or the server failed
            posted = time.perf_counter()
            form = {"csrf_token": TOKEN.search(page.text).group(1), "matchup": matchup.group(1),
                    "choice": rng.choice(["a", "b", "tie", "both_bad"]), "comment": ""}
            response = session.post(url + "/vote", data=form, allow_redirects=False, timeout=10)
        except requests.RequestException as err:
            errors.append(type(err).__name__)
            continue
        done = time.perf_counter()
        if response.status_code == 302:
            acknowledged.append(matchup.group(1))
            vote_latency.append(done - posted)
            round_latency.append(done - start)
        else:
            errors.append(f"POST /vote {response.status_code}")
    with lock:
        results["acknowledged"] += acknowledged
        results["vote_latency"] += vote_latency
        results["round_latency"] += round_latency
        results["errors"] += errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voters", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--explainers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8, help="waitress worker threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_arena_") as tmp:
        folder = Path(tmp)
        bundle = build_bundle(folder, args.cases, [f"model{i}" for i in range(args.explainers)])
        db = folder / "votes.sqlite3"
        config = folder / "arena.yaml"
        # Every voter here comes from 127.0.0.1: the per-IP limits would cap the run, not the server.
        config.write_text(
            f"arena:\n  rate_limit: 1000000 per minute\n  new_voters_per_ip: 1000000 per hour\n"
            f"  votes_per_ip: 1000000 per hour\n  threads: {args.threads}\n"
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "ARENA_SECRET_KEY": "bench", "HF_HUB_OFFLINE": "1"}
        # The server's log goes to a file: an undrained pipe fills up and blocks the server.
        server_log = open(folder / "server.log", "w")
        server = subprocess.Popen(
            [sys.executable, "-m", "arena", "--bundle", str(bundle), "--db", str(db), "--config", str(config),
             "--port", str(port)],
            cwd=ROOT, env=env, stdout=server_log, stderr=subprocess.STDOUT,
        )
        try:
            wait_until_up(url, server)
            results = {"acknowledged": [], "vote_latency": [], "round_latency": [], "errors": []}
            lock = threading.Lock()
            start = time.monotonic()
            deadline = start + args.seconds
            threads = [
                threading.Thread(target=voter, args=(url, deadline, i, results, lock)) for i in range(args.voters)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=args.seconds + 15)
            elapsed = time.monotonic() - start
            hung = sum(thread.is_alive() for thread in threads)
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            server_log.close()
            queue_warnings = (folder / "server.log").read_text().count("Task queue depth")
        with sqlite3.connect(db) as conn:
            stored = {row[0] for row in conn.execute("SELECT matchup_id FROM votes")}
            journal = conn.execute("PRAGMA journal_mode").fetchone()[0]

    sent = results["acknowledged"]
    vote_ms = np.array(results["vote_latency"]) * 1000
    round_ms = np.array(results["round_latency"]) * 1000
    report = {
        "voters": args.voters,
        "seconds": round(elapsed, 1),
        "server_threads": args.threads,
        "votes_acknowledged": len(sent),
        "votes_stored": len(stored),
        "acknowledged_and_stored_equal": set(sent) == stored and len(sent) == len(set(sent)),
        "votes_per_s": round(len(sent) / elapsed, 1),
        "vote_p50_ms": round(float(np.percentile(vote_ms, 50)), 1) if len(vote_ms) else None,
        "vote_p95_ms": round(float(np.percentile(vote_ms, 95)), 1) if len(vote_ms) else None,
        "round_p95_ms": round(float(np.percentile(round_ms, 95)), 1) if len(round_ms) else None,
        "errors": len(results["errors"]),
        "error_kinds": sorted(set(results["errors"]))[:5],
        "hung_voters": hung,
        "server_queue_warnings": queue_warnings,
        "journal_mode": journal,
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if report["acknowledged_and_stored_equal"] and not hung else 1


if __name__ == "__main__":
    sys.exit(main())
