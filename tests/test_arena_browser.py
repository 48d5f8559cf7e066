"""The arena in a real browser: Debian's chromium driven by Playwright (never a downloaded one).

Loads the app served on a free 127.0.0.1 port, casts votes by clicking, checks that hostile model
text is shown as text (no script runs, no CSP violation), then logs in as admin and reads the
leaderboard. Skipped when /usr/bin/chromium is missing (`apt-get install chromium`).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pandas as pd
import pytest
from werkzeug.serving import make_server

from arena.app import create_app
from arena.bundle import export_arena
from recxplain.config import ArenaConfig
from recxplain.schemas import Case, Movie, RatedMovie, write_cases

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
    ),
]


@pytest.fixture()
def server(tmp_path, monkeypatch):
    """The arena for 3 cases x 3 explainers, served by werkzeug in a thread; yields (url, db)."""
    monkeypatch.setenv("ARENA_SECRET_KEY", "browser-test-key")
    monkeypatch.setenv("ARENA_ADMIN_PASSWORD", "browser-admin")
    cases_dir, expl_dir, bundle_dir = tmp_path / "cases", tmp_path / "expl", tmp_path / "bundle"
    for folder in (cases_dir, expl_dir, bundle_dir):
        folder.mkdir()
    history = [
        RatedMovie(item_id=k, title=f"Watched {k}", year=1990 + k, rating=3 + k % 3, timestamp=k) for k in range(6)
    ]
    write_cases(
        [
            Case(case_id=f"{n}-{50 + n}", split="eval", user_id=n, history=history, rank=1, score=1.0,
                 item=Movie(item_id=50 + n, title=f"Pick {n}", year=2001, genres=["Sci-Fi", "Thriller"]))
            for n in range(3)
        ],
        cases_dir / "eval.jsonl",
    )
    rows = [
        {"case_id": f"{n}-{50 + n}", "model": model, "tokens": 9, "latency_s": 0.1, "valid": True,
         "text": HOSTILE if model == "dpo"
         else f"Because you liked Watched {n}, {model} thinks you will enjoy Pick {n}."}
        for n in range(3) for model in ("dpo", "sft", "template")
    ]
    pd.DataFrame(rows).to_parquet(expl_dir / "explanations.parquet")
    export_arena(bundle_dir, arena=ArenaConfig(), cases=cases_dir, explanations=expl_dir)
    db = tmp_path / "votes.db"
    app = create_app(bundle_dir, db, ArenaConfig(bootstrap=100))
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", db
    finally:
        httpd.shutdown()
        thread.join(timeout=10)


def test_vote_in_chromium_and_read_the_leaderboard(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, db = server
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
            page.on(
                "console",
                lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None,
            )
            page.on(
                "response",
                lambda response: problems.append(f"{response.status} {response.url}")
                if response.status >= 400
                else None,
            )
            page.on(
                "request",
                lambda request: None
                if request.url.startswith(url)
                else problems.append(f"outside request: {request.url}"),
            )

            page.goto(url + "/")
            assert page.locator("#recommended").inner_text().startswith("Pick ")
            page.screenshot(path=str(tmp_path / "vote.png"), full_page=True)
            choices = ["A is better", "B is better", "Tie", "Both are bad", "A is better", "B is better"]
            hostile_seen = 0
            for number, label in enumerate(choices, 1):
                texts = page.locator(".explanation .text").all_inner_texts()
                assert len(texts) == 2 and texts[0] != texts[1]
                hostile_seen += HOSTILE in texts  # shown literally, as text
                if number == 1:
                    page.fill("#comment", "A is <b>clearer</b>")
                page.get_by_role("button", name=label).click()
                page.wait_for_load_state()
                assert "your vote is saved" in page.locator(".flash").inner_text()
                assert f"You have cast {number} vote" in page.locator(".count").inner_text()
            assert hostile_seen >= 2  # each of the 3 cases shows dpo in 2 of its 3 pairs

            page.goto(url + "/admin")
            page.fill("#password", "browser-admin")
            page.get_by_role("button", name="Log in").click()
            page.wait_for_load_state()
            assert "6 votes from 1 voter" in page.locator("#totals").inner_text()
            rows = page.locator("#strengths tbody tr").all_inner_texts()
            assert len(rows) == 3 and {row.split("\t")[1] for row in rows} == {"dpo", "sft", "template"}
            assert page.locator("#win-rates tbody tr").count() == 3
            assert page.locator("#tests tbody tr").count() >= 2
            page.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0] == 6
        assert conn.execute("SELECT comment FROM votes WHERE comment != ''").fetchall() == [("A is <b>clearer</b>",)]
