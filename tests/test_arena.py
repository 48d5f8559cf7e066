"""The arena: bundle export, every route through Flask's test client, storage and sampling."""

from __future__ import annotations

import io
import json
import random
import re
import sqlite3
from collections import Counter

import pandas as pd
import pytest

from arena import storage
from arena.app import create_app
from arena.bundle import export_arena, load_bundle
from recxplain.config import ArenaConfig
from recxplain.schemas import Case, Movie, RatedMovie, write_cases

EXPLAINERS = ["dpo", "sft", "template"]
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def make_case(n: int) -> Case:
    history = [
        RatedMovie(
            item_id=100 + k, title=f"Old Movie {n}-{k}", year=1990 + k, genres=["Drama"], rating=1 + k % 5, timestamp=k
        )
        for k in range(12)
    ]
    return Case(
        case_id=f"{n}-{500 + n}",
        split="eval",
        user_id=n,
        history=history,
        item=Movie(item_id=500 + n, title=f"Recommended {n}", year=1999, genres=["Comedy", "Romance"]),
        rank=1,
        score=0.9,
    )


@pytest.fixture()
def run_dirs(tmp_path):
    """A cases folder (4 eval cases), an explanations folder, a judge tournament folder."""
    cases_dir, expl_dir, eval_dir = tmp_path / "cases", tmp_path / "explanations", tmp_path / "evaluate"
    for folder in (cases_dir, expl_dir, eval_dir):
        folder.mkdir()
    write_cases([make_case(n) for n in range(5)], cases_dir / "eval.jsonl")
    rows = []
    for n in range(4):
        for model in EXPLAINERS:
            text = XSS if (n, model) == (0, "dpo") else f"{model} explains case {n}."
            rows.append({"case_id": f"{n}-{500 + n}", "model": model, "text": text, "tokens": 5, "latency_s": 0.1,
                         "valid": True})
    # Case 4: only one non-empty explanation, so it cannot be compared and is left out.
    rows.append({"case_id": "4-504", "model": "sft", "text": "only one", "tokens": 2, "latency_s": 0.1, "valid": True})
    rows.append({"case_id": "4-504", "model": "dpo", "text": "   ", "tokens": 0, "latency_s": 0.1, "valid": False})
    rows.append(
        {"case_id": "9-999", "model": "sft", "text": "not an eval case", "tokens": 3, "latency_s": 0.1, "valid": True}
    )
    pd.DataFrame(rows).to_parquet(expl_dir / "explanations.parquet")
    judge = pd.DataFrame(
        {
            "case_id": ["0-500", "1-501", "2-502", "3-503", "3-503", "2-502"],
            "model_a": ["sft", "dpo", "template", "sft", "sft", "dpo"],
            "model_b": ["dpo", "sft", "sft", "other", "dpo", "sft"],
            "outcome": ["a", "b", "tie", "a", "both_bad", "invalid"],
        }
    )
    judge.to_parquet(eval_dir / "tournament.parquet")
    return cases_dir, expl_dir, eval_dir


@pytest.fixture()
def bundle_dir(tmp_path, run_dirs):
    out = tmp_path / "bundle"
    out.mkdir()
    cases_dir, expl_dir, eval_dir = run_dirs
    export_arena(out, arena=ArenaConfig(max_history=5), cases=cases_dir, explanations=expl_dir, evaluation=eval_dir)
    return out


@pytest.fixture()
def env(monkeypatch):
    monkeypatch.setenv("ARENA_SECRET_KEY", "test-secret-key")
    monkeypatch.setenv("ARENA_ADMIN_PASSWORD", "correct horse")


def make_client(bundle_dir, db, **settings):
    app = create_app(bundle_dir, db, ArenaConfig(bootstrap=50, **settings))
    return app, app.test_client()


def form_values(html: str) -> dict:
    """csrf_token and matchup of the vote form on a page."""
    vote_form = html.split('action="/vote"', 1)[1].split("</form>", 1)[0]
    return {
        "csrf_token": re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', vote_form).group(1),
        "matchup": re.search(r'id="matchup" name="matchup" type="hidden" value="([^"]+)"', vote_form).group(1),
    }


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html).group(1)


def cast(client, choice="a", comment=""):
    page = client.get("/").get_data(as_text=True)
    values = form_values(page)
    return client.post("/vote", data={**values, "choice": choice, "comment": comment}), values


def count_votes(db) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0]


# --- the bundle -----------------------------------------------------------------------------


def test_export_writes_an_anonymised_bundle(bundle_dir):
    raw = (bundle_dir / "bundle.json").read_text()
    for name in EXPLAINERS:
        assert f'"{name}"' not in raw  # model names only in admin.json
    bundle = json.loads(raw)
    assert bundle["codes"] == ["e1", "e2", "e3"]
    assert [c["case_id"] for c in bundle["cases"]] == ["0-500", "1-501", "2-502", "3-503"]
    case = bundle["cases"][1]
    # The five most recent ratings, newest first, with titles and ratings.
    assert [m["title"] for m in case["history"]] == [f"Old Movie 1-{k}" for k in (11, 10, 9, 8, 7)]
    assert case["history"][0]["rating"] == 1 + 11 % 5
    assert case["item"] == {"title": "Recommended 1", "year": 1999, "genres": ["Comedy", "Romance"]}
    mapping = json.loads((bundle_dir / "admin.json").read_text())["mapping"]
    assert sorted(mapping.values()) == EXPLAINERS
    assert {mapping[code]: text for code, text in case["explanations"].items()} == {
        m: f"{m} explains case 1." for m in EXPLAINERS
    }
    # The judge tournament keeps only exported cases and explainers.
    judge = pd.read_parquet(bundle_dir / "judge.parquet")
    assert judge.values.tolist() == [
        ["0-500", "sft", "dpo", "a"],
        ["1-501", "dpo", "sft", "b"],
        ["2-502", "template", "sft", "tie"],
        ["3-503", "sft", "dpo", "both_bad"],
    ]
    loaded = load_bundle(bundle_dir)
    assert len(loaded.cases) == 4 and loaded.mapping == mapping and len(loaded.judge) == 4


def test_export_choice_of_explainers_and_clear_errors(tmp_path, run_dirs):
    cases_dir, expl_dir, eval_dir = run_dirs
    out = tmp_path / "two"
    out.mkdir()
    export_arena(out, arena=ArenaConfig(explainers=["sft", "template"]), cases=cases_dir, explanations=expl_dir)
    assert sorted(json.loads((out / "admin.json").read_text())["mapping"].values()) == ["sft", "template"]
    assert not (out / "judge.parquet").exists()
    with pytest.raises(ValueError, match=r"arena.explainers \['gpt'\] not found"):
        export_arena(out, arena=ArenaConfig(explainers=["sft", "gpt"]), cases=cases_dir, explanations=expl_dir)
    with pytest.raises(FileNotFoundError, match="no eval.jsonl"):
        export_arena(out, arena=ArenaConfig(), cases=expl_dir, explanations=expl_dir)
    bad = tmp_path / "bad_judge.parquet"
    pd.DataFrame({"case_id": ["0-500"], "model_a": ["sft"], "model_b": ["dpo"], "outcome": ["A"]}).to_parquet(bad)
    with pytest.raises(ValueError, match=r"bad_judge.parquet: row 0: outcome 'A'"):
        export_arena(out, arena=ArenaConfig(), cases=cases_dir, explanations=expl_dir, evaluation=bad)
    with pytest.raises(ValueError, match="at least two"):
        ArenaConfig(explainers=["sft"])


# --- voting ---------------------------------------------------------------------------------


def test_vote_page_escapes_model_text_and_sets_security_headers(env, bundle_dir, tmp_path):
    app, client = make_client(bundle_dir, tmp_path / "votes.db")
    seen_xss = False
    for _ in range(12):  # every (case, pair) once: one of them shows the hostile text
        page = client.get("/")
        html = page.get_data(as_text=True)
        assert "<script>alert" not in html and "<img src=x" not in html
        seen_xss |= "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        cookie = page.headers.get("Set-Cookie", "session=; HttpOnly; SameSite=Lax")
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
        values = form_values(html)
        assert client.post("/vote", data={**values, "choice": "tie"}).status_code == 302
    assert seen_xss
    assert "every pair" in client.get("/").get_data(as_text=True)  # 4 cases x 3 pairs: done
    assert count_votes(tmp_path / "votes.db") == 12


def test_vote_is_stored_once_and_reload_shows_the_same_pair(env, bundle_dir, tmp_path):
    db = tmp_path / "votes.db"
    app, client = make_client(bundle_dir, db)
    first = client.get("/").get_data(as_text=True)
    again = client.get("/").get_data(as_text=True)
    assert form_values(first)["matchup"] == form_values(again)["matchup"]
    assert "Explanation A" in first and "Recommended" in first and "Old Movie" in first
    values = form_values(first)
    response = client.post("/vote", data={**values, "choice": "b", "comment": "B names a movie I rated"})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert "your vote is saved" in client.get("/").get_data(as_text=True)
    replay = client.post("/vote", data={**values, "choice": "a"})
    assert replay.status_code == 302 and count_votes(db) == 1
    with sqlite3.connect(db) as conn:
        outcome, comment = conn.execute("SELECT outcome, comment FROM votes").fetchone()
    assert (outcome, comment) == ("b", "B names a movie I rated")


def test_forms_need_csrf_and_valid_fields(env, bundle_dir, tmp_path):
    db = tmp_path / "votes.db"
    app, client = make_client(bundle_dir, db, max_comment_chars=10)
    values = form_values(client.get("/").get_data(as_text=True))
    assert client.post("/vote", data={"matchup": values["matchup"], "choice": "a"}).status_code == 400
    assert client.post("/vote", data={**values, "choice": "a", "csrf_token": "forged"}).status_code == 400
    assert client.post("/vote", data={**values, "choice": "best"}).status_code == 400
    assert client.post("/vote", data={**values, "choice": "a", "comment": "x" * 11}).status_code == 400
    assert client.post("/vote", data={**values, "matchup": "not-mine", "choice": "a"}).status_code == 404
    assert count_votes(db) == 0
    # A matchup shown to another voter cannot be voted by this one.
    other = app.test_client()
    theirs = form_values(other.get("/").get_data(as_text=True))["matchup"]
    assert client.post("/vote", data={**values, "matchup": theirs, "choice": "a"}).status_code == 404


def test_skip_moves_on_without_a_vote(env, bundle_dir, tmp_path):
    db = tmp_path / "votes.db"
    app, client = make_client(bundle_dir, db)
    page = client.get("/").get_data(as_text=True)
    skip_form = page.split('action="/skip"', 1)[1]
    token = csrf_of(skip_form)
    matchup = re.search(r'name="matchup" type="hidden" value="([^"]+)"', skip_form).group(1)
    assert client.post("/skip", data={"csrf_token": token, "matchup": matchup}).status_code == 302
    assert form_values(client.get("/").get_data(as_text=True))["matchup"] != matchup
    assert client.post("/vote", data={"csrf_token": token, "matchup": matchup, "choice": "a"}).status_code == 302
    assert count_votes(db) == 0  # a skipped pair cannot be voted afterwards


def test_rate_limit_per_session(env, bundle_dir, tmp_path):
    app, client = make_client(bundle_dir, tmp_path / "votes.db", rate_limit="3 per minute")
    for _ in range(3):
        assert cast(client)[0].status_code == 302
    response, _ = cast(client)
    assert response.status_code == 429
    assert count_votes(tmp_path / "votes.db") == 3
    # Another voter has a budget of its own.
    assert cast(app.test_client())[0].status_code == 302


def test_invite_codes(env, bundle_dir, tmp_path):
    db = tmp_path / "votes.db"
    app, client = make_client(bundle_dir, db, invite_codes=["spring-2025", "lab"])
    response = client.get("/")
    assert response.status_code == 302 and response.headers["Location"] == "/join"
    page = client.get("/join").get_data(as_text=True)
    assert client.post("/join", data={"csrf_token": csrf_of(page), "code": "guess"}).status_code == 403
    assert client.post("/join", data={"csrf_token": csrf_of(page), "code": " lab "}).status_code == 302
    assert cast(client)[0].status_code == 302
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT invite_code FROM voters").fetchall() == [("lab",)]


def test_static_and_unknown_paths(env, bundle_dir, tmp_path):
    app, client = make_client(bundle_dir, tmp_path / "votes.db")
    css = client.get("/static/arena.css")
    assert css.status_code == 200 and "font" in css.get_data(as_text=True)
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/bundle.json").status_code == 404
    assert client.get("/admin/../../etc/passwd").status_code == 404
    assert client.get("/vote").status_code == 405


# --- admin ----------------------------------------------------------------------------------


def admin_login(client, password="correct horse"):
    page = client.get("/admin/login").get_data(as_text=True)
    return client.post("/admin/login", data={"csrf_token": csrf_of(page), "password": password})


def test_admin_leaderboard_and_exports(env, bundle_dir, tmp_path):
    db = tmp_path / "votes.db"
    app, client = make_client(bundle_dir, db)
    assert client.get("/admin").headers["Location"] == "/admin/login"
    assert client.get("/admin/votes.csv").status_code == 302
    assert "No votes yet" in (admin_login(client), client.get("/admin"))[1].get_data(as_text=True)
    assert admin_login(app.test_client(), "wrong").status_code == 403

    # Three voters vote on everything: "sft" always wins, the rest tie.
    mapping = load_bundle(bundle_dir).mapping
    code_of = {name: code for code, name in mapping.items()}
    for voter in range(3):
        voter_client = app.test_client()
        while True:
            html = voter_client.get("/").get_data(as_text=True)
            if "every pair" in html:
                break
            values = form_values(html)
            with voter_client.session_transaction() as session:  # the pair on screen lives in the signed cookie
                left, right = session["shown"]["left_code"], session["shown"]["right_code"]
            choice = "a" if left == code_of["sft"] else "b" if right == code_of["sft"] else "tie"
            comment = "=HYPERLINK(\"http://evil\")" if voter == 0 else ""
            assert voter_client.post("/vote", data={**values, "choice": choice, "comment": comment}).status_code == 302
    assert count_votes(db) == 36

    html = client.get("/admin").get_data(as_text=True)
    assert "36 votes from 3 voters" in html
    strengths = html.split('id="strengths"', 1)[1].split("</table>", 1)[0]
    assert strengths.index("sft") < strengths.index("dpo")  # ranked first
    tests = html.split('id="tests"', 1)[1].split("</table>", 1)[0]
    assert "dpo vs sft" in tests and "0–12" in tests  # 12 decisive votes, all for sft
    assert "dpo vs template" in tests
    # Judge: sft better on cases 0 and 1 (people agree), template~sft on case 2 and sft~dpo on
    # case 3 (people: sft) -> agreement 2/4. Kappa: people's labels b, b, a, b, judge's b, b,
    # none, none; p_e = (1*0 + 3*2 + 0*2) / 16 = 0.375, kappa = (0.5 - 0.375) / 0.625 = 0.2.
    agreement = html.split('id="agreement"', 1)[1].split("</p>", 1)[0]
    assert "On 4 (case, pair)" in agreement and "raw agreement 0.50" in agreement and "κ 0.20" in agreement

    csv_response = client.get("/admin/votes.csv")
    assert csv_response.status_code == 200 and csv_response.mimetype == "text/csv"
    votes = pd.read_csv(io.StringIO(csv_response.get_data(as_text=True)))
    assert len(votes) == 36 and set(votes["model_a"]) == set(EXPLAINERS)
    assert (votes["comment"].dropna() == "'=HYPERLINK(\"http://evil\")").sum() == 12  # formula defused
    parquet = pd.read_parquet(io.BytesIO(client.get("/admin/votes.parquet").get_data()))
    assert len(parquet) == 36 and parquet["voter_id"].nunique() == 3
    assert (parquet["comment"] == "=HYPERLINK(\"http://evil\")").sum() == 12  # parquet keeps the text as typed
    row = parquet.iloc[0]
    assert mapping[row["code_a"]] == row["model_a"]

    page = client.get("/admin").get_data(as_text=True)
    assert client.post("/admin/logout", data={"csrf_token": csrf_of(page)}).status_code == 302
    assert client.get("/admin").status_code == 302


def test_admin_disabled_without_password(monkeypatch, bundle_dir, tmp_path):
    monkeypatch.setenv("ARENA_SECRET_KEY", "k")
    monkeypatch.delenv("ARENA_ADMIN_PASSWORD", raising=False)
    app, client = make_client(bundle_dir, tmp_path / "votes.db")
    assert client.get("/admin").status_code == 403
    assert "ARENA_ADMIN_PASSWORD" in client.get("/admin/login").get_data(as_text=True)


# --- storage --------------------------------------------------------------------------------


def test_votes_survive_a_restart_and_a_database_serves_one_bundle(env, bundle_dir, tmp_path, run_dirs):
    db = tmp_path / "votes.db"
    app, client = make_client(bundle_dir, db)
    cast(client)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    app2, client2 = make_client(bundle_dir, db)  # a restart with the same secret key
    client2.set_cookie("session", client.get_cookie("session").value)
    assert "You have cast 1 vote." in client2.get("/").get_data(as_text=True)
    cases_dir, expl_dir, _ = run_dirs
    other = tmp_path / "other_bundle"
    other.mkdir()
    export_arena(other, arena=ArenaConfig(seed=5), cases=cases_dir, explanations=expl_dir)
    with pytest.raises(ValueError, match="another bundle"):
        create_app(other, db, ArenaConfig())


def test_unique_constraint_holds_in_the_database(env, bundle_dir, tmp_path):
    db = tmp_path / "votes.db"
    app, client = make_client(bundle_dir, db)
    cast(client)
    with sqlite3.connect(db) as conn, pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        conn.execute(
            "INSERT INTO votes (matchup_id, voter_id, case_id, model_a, model_b, pair_low, pair_high, outcome,"
            " created_at) SELECT matchup_id || 'x', voter_id, case_id, model_b, model_a, pair_low, pair_high, 'a', 0"
            " FROM votes"
        )


def test_sampling_balances_pairs_then_cases(env, bundle_dir, tmp_path):
    bundle = load_bundle(bundle_dir)
    rng = random.Random(0)
    # The least shown pair wins, then the least shown case.
    pair_counts = Counter({("e1", "e2"): 3, ("e1", "e3"): 1, ("e2", "e3"): 1})
    case_counts = Counter({"0-500": 2, "1-501": 0, "2-502": 1, "3-503": 2})
    done = {("1-501", "e1", "e3")}
    assert storage.choose_matchup(bundle, done, pair_counts, case_counts, rng) == ("1-501", "e2", "e3")
    # Through the app: 6 voters x 4 votes spread evenly over the 3 pairs and the 4 cases.
    db = tmp_path / "votes.db"
    app, _ = make_client(bundle_dir, db)
    for _ in range(6):
        client = app.test_client()
        for _ in range(4):
            cast(client)
    with sqlite3.connect(db) as conn:
        pairs = Counter(dict(conn.execute("SELECT pair_low || pair_high, COUNT(*) FROM votes GROUP BY 1").fetchall()))
        cases = Counter(dict(conn.execute("SELECT case_id, COUNT(*) FROM votes GROUP BY 1").fetchall()))
        sides = conn.execute("SELECT SUM(model_a = pair_low) FROM votes").fetchone()[0]
    assert sorted(pairs.values()) == [8, 8, 8]
    assert sorted(cases.values()) == [6, 6, 6, 6]
    assert 4 <= sides <= 20  # sides are random (24 votes; P(outside) < 0.2%)


def test_command_line_finds_the_bundle_or_says_why_not(tmp_path, capsys, monkeypatch, bundle_dir):
    from arena import __main__ as cli

    assert cli.main(["--bundle", str(tmp_path / "nowhere"), "--db", str(tmp_path / "v.db")]) == 2
    assert "not an arena bundle" in capsys.readouterr().err
    config = tmp_path / "run.yaml"
    config.write_text(f"runtime:\n  artifacts_dir: {tmp_path / 'artifacts'}\n  run_name: r1\n")
    assert cli.main(["--config", str(config)]) == 2
    assert "runs/r1/summary.json: no pipeline run" in capsys.readouterr().err
    # With a run summary: its bundle, and a database named after the bundle, are served.
    run_dir = tmp_path / "artifacts" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"artifacts": {"arena": str(bundle_dir)}}))
    served = {}
    monkeypatch.setattr(cli.waitress, "serve", lambda app, **kw: served.update(app=app, **kw))
    assert cli.main(["--config", str(config), "--set", "arena.port=9123"]) == 0
    assert served["port"] == 9123 and served["host"] == "127.0.0.1"
    digest = load_bundle(bundle_dir).digest[:12]
    assert (tmp_path / "artifacts" / "arena" / f"votes-{digest}.sqlite3").is_file()


# --- abuse: per-IP limits, stored rows, admin lockout, anomalies --------------------------------


def client_at(app, ip: str):
    """A fresh cookie jar whose requests come from `ip`."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = ip
    return client


def count_rows(db) -> int:
    with sqlite3.connect(db) as conn:
        return sum(
            conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in ("voters", "matchups", "votes")
        )


@pytest.mark.parametrize(
    "limits, stored",
    [({"new_voters_per_ip": "10 per hour", "votes_per_ip": "1000 per hour"}, 10),
     ({"new_voters_per_ip": "1000 per hour", "votes_per_ip": "20 per hour"}, 20)],
    ids=["new-voters-per-ip", "votes-per-ip"],
)
def test_votes_from_fresh_sessions_on_one_ip_are_cut_to_the_limit(env, bundle_dir, tmp_path, limits, stored):
    db = tmp_path / "votes.db"
    app, _ = make_client(bundle_dir, db, **limits)
    statuses = Counter(cast(client_at(app, "203.0.113.7"))[0].status_code for _ in range(60))
    assert statuses == {302: stored, 429: 60 - stored}
    assert count_votes(db) == stored
    with sqlite3.connect(db) as conn:  # a refused vote registers no voter either
        assert conn.execute("SELECT COUNT(*) FROM voters").fetchone()[0] == stored
    assert cast(client_at(app, "198.51.100.2"))[0].status_code == 302  # another address has its own budget

    # Page loads store nothing: fresh sessions, reloads of a voter's page, a refused address.
    voter = client_at(app, "198.51.100.2")
    cast(voter)
    rows = count_rows(db)
    for _ in range(50):
        assert client_at(app, "192.0.2.9").get("/").status_code == 200
        assert voter.get("/").status_code == 200
        assert client_at(app, "203.0.113.7").get("/").status_code == 200
    assert count_rows(db) == rows

    # Addresses are kept only as keyed hashes.
    with sqlite3.connect(db) as conn:
        hashes = {row[0] for row in conn.execute("SELECT ip_hash FROM votes UNION SELECT ip_hash FROM voters")}
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert len(hashes) == 2 and all(re.fullmatch(r"[0-9a-f]{16}", h) for h in hashes)
    assert b"203.0.113.7" not in db.read_bytes() and b"198.51.100.2" not in db.read_bytes()


def test_votes_per_ip_count_across_the_voters_of_an_address(env, bundle_dir, tmp_path):
    db = tmp_path / "votes.db"
    app, _ = make_client(bundle_dir, db, votes_per_ip="5 per hour")
    one, two = client_at(app, "203.0.113.7"), client_at(app, "203.0.113.7")
    assert [cast(one)[0].status_code for _ in range(3)] == [302] * 3
    assert [cast(two)[0].status_code for _ in range(3)] == [302, 302, 429]
    assert count_votes(db) == 5
    # The refused pair stays on screen: the same matchup is offered again.
    page = two.get("/").get_data(as_text=True)
    with two.session_transaction() as session:
        assert form_values(page)["matchup"] == session["shown"]["matchup_id"]


def test_admin_can_always_log_in_after_many_wrong_passwords(env, bundle_dir, tmp_path):
    app, _ = make_client(bundle_dir, tmp_path / "votes.db")
    attacker = client_at(app, "203.0.113.7")
    statuses = Counter(admin_login(attacker, f"guess {n}").status_code for n in range(40))
    assert statuses == {403: 10, 429: 30}  # wrong passwords are limited per address...
    for client in (attacker, client_at(app, "203.0.113.7")):  # ...the right one is never refused
        response = admin_login(client)
        assert response.status_code == 302 and response.headers["Location"] == "/admin"
        assert client.get("/admin").status_code == 200


def vote_after(client, seconds: float, choice: str = "a"):
    """Vote as someone who looked at the pair for `seconds` (the page's time shifted back)."""
    page = client.get("/").get_data(as_text=True)
    with client.session_transaction() as session:
        session["shown"] = {**session["shown"], "shown_at": session["shown"]["shown_at"] - seconds}
    return client.post("/vote", data={**form_values(page), "choice": choice})


def test_anomalies_are_flagged_and_can_be_left_out_of_the_leaderboard(env, bundle_dir, tmp_path):
    db = tmp_path / "votes.db"
    app, admin = make_client(bundle_dir, db, flag_fast_seconds=3.0, flag_votes_per_ip=6)
    for ip in ("198.51.100.1", "198.51.100.2"):  # two people, 12 s per vote
        person = client_at(app, ip)
        for _ in range(3):
            assert vote_after(person, 12.0).status_code == 302
    bot = client_at(app, "203.0.113.7")  # votes the moment a page loads, 7 times
    for _ in range(7):
        assert vote_after(bot, 0.0).status_code == 302
    with bot.session_transaction() as session:
        bot_id = session["voter"]

    admin_login(admin)
    html = admin.get("/admin").get_data(as_text=True)
    assert "7 flagged votes" in html and "13 votes from 3 voters" in html
    voters = html.split('id="voters"', 1)[1].split("</table>", 1)[0]
    first = voters.split("<tbody>", 1)[1].split("</tr>", 1)[0]
    assert bot_id in first and "fast voter, busy network" in first
    networks = html.split('id="networks"', 1)[1].split("</table>", 1)[0]
    assert re.search(
        r'<td class="num">1</td><td class="num">7</td><td class="num">0\.0</td><td class="num">7</td>', networks
    )

    without = admin.get("/admin?exclude_flagged=1").get_data(as_text=True)
    assert "6 votes from 2 voters, flagged votes left out" in without
    exported = pd.read_csv(io.StringIO(admin.get("/admin/votes.csv").get_data(as_text=True)), keep_default_na=False)
    assert (exported["flag"] != "").sum() == 7 and set(exported[exported["flag"] != ""]["voter_id"]) == {bot_id}


def test_csv_export_never_changes_an_id(env, bundle_dir, tmp_path, monkeypatch):
    db = tmp_path / "votes.db"
    app, admin = make_client(bundle_dir, db)
    real = storage.secrets.token_urlsafe
    for prefix in ("-", "=", "+"):  # ids that look like formulas to a spreadsheet
        monkeypatch.setattr(storage.secrets, "token_urlsafe", lambda n, prefix=prefix: prefix + real(n))
        cast(app.test_client(), comment="-1, too long")
    admin_login(admin)
    exported = pd.read_csv(io.StringIO(admin.get("/admin/votes.csv").get_data(as_text=True)))
    with sqlite3.connect(db) as conn:
        stored = [row[0] for row in conn.execute("SELECT voter_id FROM votes ORDER BY vote_id")]
    assert [v[0] for v in stored] == ["-", "=", "+"] and exported["voter_id"].tolist() == stored
    assert (exported["comment"] == "'-1, too long").all()  # typed text still gets the formula guard


def element_ids(html: str) -> list[str]:
    from html.parser import HTMLParser

    ids: list[str] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            ids.extend(value for name, value in attrs if name == "id")

    Collect().feed(html)
    return ids


def test_secure_cookie_option_and_unique_element_ids(env, bundle_dir, tmp_path):
    app, client = make_client(bundle_dir, tmp_path / "votes.db", cookie_secure=True, invite_codes=["lab"])
    assert "Secure" in client.get("/join").headers["Set-Cookie"]
    page = client.get("/join").get_data(as_text=True)
    assert client.post("/join", data={"csrf_token": csrf_of(page), "code": "lab"}).status_code == 302
    assert cast(client)[0].status_code == 302
    admin_login(client)
    for path in ("/", "/join", "/admin/login", "/admin"):
        ids = element_ids(client.get(path, follow_redirects=True).get_data(as_text=True))
        assert ids and len(ids) == len(set(ids)), (path, ids)
    assert "Secure" not in make_client(bundle_dir, tmp_path / "plain.db")[1].get("/").headers["Set-Cookie"]


def test_a_database_from_before_ip_hashes_is_upgraded(env, bundle_dir, tmp_path):
    db = tmp_path / "votes.db"
    app, client = make_client(bundle_dir, db)
    cast(client)
    with sqlite3.connect(db) as conn:  # back to the schema without ip_hash columns
        conn.executescript(
            "DROP INDEX voters_by_ip; DROP INDEX votes_by_ip;"
            " ALTER TABLE voters DROP COLUMN ip_hash; ALTER TABLE votes DROP COLUMN ip_hash;"
        )
    app, client = make_client(bundle_dir, db)
    assert cast(client)[0].status_code == 302
    admin_login(client)
    assert "2 votes from 2 voters" in client.get("/admin").get_data(as_text=True)
    exported = pd.read_parquet(io.BytesIO(client.get("/admin/votes.parquet").get_data()))
    assert exported["ip_hash"].isna().tolist() == [True, False]


def test_behind_a_trusted_proxy_the_forwarded_address_counts(env, bundle_dir, tmp_path):
    app, _ = make_client(bundle_dir, tmp_path / "votes.db", new_voters_per_ip="1 per hour", trusted_proxies=1)
    statuses = []
    for client_ip in ("203.0.113.7", "203.0.113.8", "203.0.113.7"):  # all through the proxy at 127.0.0.1
        client = client_at(app, "127.0.0.1")
        client.environ_base["HTTP_X_FORWARDED_FOR"] = client_ip
        statuses.append(cast(client)[0].status_code)
    assert statuses == [302, 302, 429]
