"""The arena web app: blind pairwise votes on explanations, and an admin leaderboard.

`create_app(bundle_dir, db_path, config)` builds the Flask app; `python -m arena` serves it with
waitress. Pages:

- `/`: a case (the user's recent ratings, the recommended movie) and two explanations by two
  different explainers, sides in random order, names hidden; vote A / B / tie / both bad with an
  optional comment, or skip. A reload shows the same pair again until it is voted or skipped.
- `/join`: asks for an invite code when `arena.invite_codes` is set.
- `/admin`: leaderboard and vote export, behind the password in `arena.admin_password_env`.

Security: explanations are untrusted model output and are only ever rendered through Jinja's
autoescaping (never `|safe`); every form carries a CSRF token (flask-wtf); every SQL statement
is parameterised (arena.storage); votes are rate limited per voter session (flask-limiter);
responses carry a strict Content-Security-Policy, and the app serves only its own pages and
stylesheet.
"""

from __future__ import annotations

import functools
import hmac
import io
import logging
import os
import random
import secrets
import threading
from datetime import timedelta
from pathlib import Path

from flask import Flask, abort, flash, redirect, render_template, send_file, session, url_for
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, CSRFProtect
from wtforms import HiddenField, PasswordField, RadioField, StringField, TextAreaField
from wtforms.validators import InputRequired, Length

from arena import storage
from arena.bundle import load_bundle
from arena.leaderboard import build_leaderboard
from recxplain.config import ArenaConfig

log = logging.getLogger(__name__)

CHOICES = [("a", "A is better"), ("b", "B is better"), ("tie", "Tie"), ("both_bad", "Both are bad")]

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class VoteForm(FlaskForm):
    matchup = HiddenField(validators=[InputRequired(), Length(max=64)])
    choice = RadioField(choices=CHOICES, validators=[InputRequired()])  # rendered as four buttons
    comment = TextAreaField()  # length checked against arena.max_comment_chars in the view


class SkipForm(FlaskForm):
    matchup = HiddenField(validators=[InputRequired(), Length(max=64)])


class JoinForm(FlaskForm):
    code = StringField("Invite code", validators=[InputRequired(), Length(max=200)])


class LoginForm(FlaskForm):
    password = PasswordField("Admin password", validators=[InputRequired(), Length(max=1000)])


class LogoutForm(FlaskForm):
    pass


def _csv_safe(value: object) -> object:
    """Keep spreadsheet programs from running a comment as a formula (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def create_app(bundle_dir: Path, db_path: Path, config: ArenaConfig = ArenaConfig()) -> Flask:
    """The arena app for an exported bundle, storing votes in `db_path` (created when missing).

    Reads the session-signing key from the environment variable `config.secret_key_env` (a random
    one when unset: sessions then end with the process) and the admin password from
    `config.admin_password_env` (admin pages disabled when unset).
    """
    bundle = load_bundle(Path(bundle_dir))
    db_path = Path(db_path)
    storage.init_db(db_path, bundle)

    app = Flask(__name__)
    secret = os.environ.get(config.secret_key_env)
    if not secret:
        log.warning("%s is not set: using a random session key; voters get new ids after a restart", config.secret_key_env)
        secret = secrets.token_hex(32)
    app.config.update(
        SECRET_KEY=secret,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.cookie_secure,
        PERMANENT_SESSION_LIFETIME=timedelta(days=365),
        MAX_CONTENT_LENGTH=64 * 1024,
        WTF_CSRF_TIME_LIMIT=None,  # the token is bound to the signed session; pages may stay open
    )
    admin_password = os.environ.get(config.admin_password_env) or None
    CSRFProtect(app)

    def rate_key() -> str:
        return session.get("voter") or get_remote_address()

    limiter = Limiter(rate_key, app=app, storage_uri="memory://", headers_enabled=True)
    # Sides and tie-breaks drawn from the OS: a voter cannot predict which side a model gets.
    rng = random.SystemRandom()

    # One connection per server thread, kept open (see storage.connect).
    connections = threading.local()

    def db():
        if getattr(connections, "conn", None) is None:
            connections.conn = storage.connect(db_path)
        return connections.conn

    @app.after_request
    def security_headers(response):
        response.headers.update(SECURITY_HEADERS)
        return response

    def current_voter() -> str | None:
        voter = session.get("voter")
        return voter if voter and storage.voter_exists(db(), voter) else None

    def admin_only(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            if admin_password is None:
                abort(403, "The admin pages are disabled: set the environment variable " + config.admin_password_env + ".")
            if not session.get("admin"):
                return redirect(url_for("admin_login"))
            return view(*args, **kwargs)

        return wrapped

    @app.get("/")
    def index():
        voter = current_voter()
        if voter is None:
            if config.invite_codes:
                return redirect(url_for("join"))
            voter = storage.add_voter(db())
            session.permanent = True
            session["voter"] = voter
        conn = db()
        matchup = storage.pending_matchup(conn, voter) or storage.new_matchup(conn, voter, bundle, rng)
        votes = storage.vote_count(conn, voter)
        if matchup is None:
            return render_template("done.html", votes=votes)
        case = bundle.cases[matchup["case_id"]]
        return render_template(
            "vote.html",
            case=case,
            text_a=case["explanations"][matchup["left_code"]],
            text_b=case["explanations"][matchup["right_code"]],
            form=VoteForm(matchup=matchup["matchup_id"]),
            skip_form=SkipForm(matchup=matchup["matchup_id"]),
            choices=CHOICES,
            max_comment=config.max_comment_chars,
            votes=votes,
        )

    @app.route("/join", methods=["GET", "POST"])
    @limiter.limit("20 per minute", key_func=get_remote_address, methods=["POST"])
    def join():
        if not config.invite_codes:
            return redirect(url_for("index"))
        form = JoinForm()
        if form.validate_on_submit():
            given = form.code.data.strip().encode()
            code = next((c for c in config.invite_codes if hmac.compare_digest(c.encode(), given)), None)
            if code is not None:
                voter = current_voter() or storage.add_voter(db(), invite_code=code)
                session.permanent = True
                session["voter"] = voter
                return redirect(url_for("index"))
            flash("That invite code is not valid.")
            return render_template("join.html", form=form), 403
        return render_template("join.html", form=form)

    def own_matchup(form: FlaskForm):
        voter = current_voter()
        if voter is None:
            flash("Your session has ended; here is a new case.")
            return None
        if not form.validate_on_submit():
            abort(400, "The vote form was incomplete.")
        matchup = storage.get_matchup(db(), form.matchup.data, voter)
        if matchup is None:
            abort(404, "No such comparison was shown to you.")
        return matchup

    @app.post("/vote")
    @limiter.limit(lambda: config.rate_limit)
    def vote():
        form = VoteForm()
        matchup = own_matchup(form)
        if matchup is None:
            return redirect(url_for("index"))
        comment = (form.comment.data or "").strip()
        if len(comment) > config.max_comment_chars:
            abort(400, f"Comments are limited to {config.max_comment_chars} characters.")
        if matchup["status"] == "shown" and storage.record_vote(db(), matchup, form.choice.data, comment):
            flash("Thanks, your vote is saved.")
        else:
            flash("You already voted on (or skipped) that comparison; it was not counted twice.")
        return redirect(url_for("index"))

    @app.post("/skip")
    @limiter.limit(lambda: config.rate_limit)
    def skip():
        form = SkipForm()
        matchup = own_matchup(form)
        if matchup is not None:
            storage.skip_matchup(db(), matchup)
        return redirect(url_for("index"))

    @app.route("/admin/login", methods=["GET", "POST"])
    @limiter.limit("10 per minute", key_func=get_remote_address, methods=["POST"])
    def admin_login():
        if admin_password is None:
            abort(403, "The admin pages are disabled: set the environment variable " + config.admin_password_env + ".")
        form = LoginForm()
        if form.validate_on_submit():
            if hmac.compare_digest(form.password.data.encode(), admin_password.encode()):
                session["admin"] = True
                return redirect(url_for("admin"))
            flash("Wrong password.")
            return render_template("login.html", form=form), 403
        return render_template("login.html", form=form)

    @app.post("/admin/logout")
    def admin_logout():
        if LogoutForm().validate_on_submit():
            session.pop("admin", None)
        return redirect(url_for("index"))

    leaderboard_cache: dict = {}

    @app.get("/admin")
    @admin_only
    def admin():
        votes = storage.votes_frame(db(), bundle)
        board = None
        if len(votes):
            # The bootstrap takes a second or two: recompute only when votes came in.
            key = (len(votes), int(votes["vote_id"].max()))
            if leaderboard_cache.get("key") != key:
                leaderboard_cache.update(key=key, board=build_leaderboard(votes, bundle.judge, config.bootstrap, config.seed))
            board = leaderboard_cache["board"]
        return render_template(
            "admin.html",
            board=board,
            cases=len(bundle.cases),
            explainers=sorted(bundle.mapping.values()),
            judged=bundle.judge is not None,
            logout_form=LogoutForm(),
        )

    @app.get("/admin/votes.csv")
    @admin_only
    def export_csv():
        votes = storage.votes_frame(db(), bundle)
        text = votes.map(_csv_safe).to_csv(index=False)
        return send_file(io.BytesIO(text.encode()), mimetype="text/csv", as_attachment=True, download_name="votes.csv")

    @app.get("/admin/votes.parquet")
    @admin_only
    def export_parquet():
        buffer = io.BytesIO()
        storage.votes_frame(db(), bundle).to_parquet(buffer, index=False)
        buffer.seek(0)
        return send_file(buffer, mimetype="application/vnd.apache.parquet", as_attachment=True, download_name="votes.parquet")

    @app.errorhandler(CSRFError)
    def csrf_error(error):
        return render_template("error.html", code=400, message="This form has expired or was not sent by the arena page. Reload and try again."), 400

    for code in (400, 403, 404, 405, 413, 429, 500):

        @app.errorhandler(code)
        def http_error(error, code=code):
            message = getattr(error, "description", None) or "Something went wrong."
            return render_template("error.html", code=code, message=message), code

    app.extensions["arena_bundle"] = bundle
    return app

