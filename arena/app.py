"""The arena web app: blind pairwise votes on explanations, and an admin leaderboard.

`create_app(bundle_dir, db_path, config)` builds the Flask app; `python -m arena` serves it with
waitress. Pages:

- `/`: a case (the user's recent ratings, the recommended movie) and two explanations by two
  different explainers, sides in random order, names hidden; vote A / B / tie / both bad with an
  optional comment, or skip. A reload shows the same pair again until it is voted or skipped (the
  pair on screen is kept in the signed session cookie: viewing a page stores nothing).
- `/join`: asks for an invite code when `arena.invite_codes` is set.
- `/admin`: leaderboard, anomaly tables and vote export, behind the password in
  `arena.admin_password_env`.

Security: explanations are untrusted model output and are only ever rendered through Jinja's
autoescaping (never `|safe`); every form carries a CSRF token (flask-wtf); every SQL statement
is parameterised (arena.storage); votes are rate limited per voter session (flask-limiter), and
new voters and votes per IP address (counted in the database under a keyed hash of the address);
wrong admin passwords are limited per address, while the right one is always accepted;
responses carry a strict Content-Security-Policy, and the app serves only its own pages and
stylesheet.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import logging
import os
import random
import secrets
import threading
from datetime import timedelta
from pathlib import Path

import limits
from flask import Flask, abort, flash, redirect, render_template, request, send_file, session, url_for
from flask_limiter import Limiter
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix
from wtforms import HiddenField, PasswordField, RadioField, StringField, TextAreaField
from wtforms.validators import InputRequired, Length

from arena import anomalies, storage
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


# Wrong admin passwords one IP address may send; only failures count (see admin_login).
ADMIN_FAILURES = limits.parse("10 per minute")
# Columns of typed free text in the CSV export. Only these get the formula guard: ids (a voter id
# may start with "-") and numbers stay exactly as in the database.
CSV_TEXT_COLUMNS = ("comment", "invite_code")


def _csv_safe(value: object) -> object:
    """Keep spreadsheet programs from running a comment as a formula (CSV injection)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _quotas(config: ArenaConfig, field: str) -> tuple[storage.Quota, ...]:
    try:
        return storage.parse_quotas(getattr(config, field))
    except ValueError as err:
        raise ValueError(f"arena.{field}: {err}") from None


def create_app(
    bundle_dir: Path, db_path: Path, config: ArenaConfig = ArenaConfig()  # noqa: B008 (frozen, only read)
) -> Flask:
    """The arena app for an exported bundle, storing votes in `db_path` (created when missing).

    Reads the session-signing key from the environment variable `config.secret_key_env` (a random
    one when unset: sessions then end with the process) and the admin password from
    `config.admin_password_env` (admin pages disabled when unset).
    """
    new_voter_quotas, vote_quotas = _quotas(config, "new_voters_per_ip"), _quotas(config, "votes_per_ip")
    bundle = load_bundle(Path(bundle_dir))
    db_path = Path(db_path)
    storage.init_db(db_path, bundle)

    app = Flask(__name__)
    secret = os.environ.get(config.secret_key_env)
    if not secret:
        log.warning(
            "%s is not set: using a random session key; voters get new ids after a restart", config.secret_key_env
        )
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
    if config.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.trusted_proxies, x_proto=config.trusted_proxies)

    # Addresses are kept only as keyed hashes. The key comes from the session secret, not the
    # database: with a salt stored beside them, the 2^32 IPv4 addresses could all be tried.
    ip_key = hashlib.sha256(b"recxplain-arena-ip:" + secret.encode()).digest()

    def ip_hash() -> str:
        return hmac.new(ip_key, (request.remote_addr or "").encode(), "sha256").hexdigest()[:16]

    def rate_key() -> str:
        # One budget per browser session from its first page on: a voter id only exists after the
        # first vote. Fresh sessions get fresh budgets; the per-IP limits are what bounds them.
        return session.setdefault("rate_key", secrets.token_urlsafe(12))

    limiter = Limiter(rate_key, app=app, storage_uri="memory://", headers_enabled=True)
    admin_failures = limits.strategies.MovingWindowRateLimiter(limits.storage.MemoryStorage())
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
                abort(
                    403, "The admin pages are disabled: set the environment variable " + config.admin_password_env + "."
                )
            if not session.get("admin"):
                return redirect(url_for("admin_login"))
            return view(*args, **kwargs)

        return wrapped

    @app.get("/")
    def index():
        voter = current_voter()
        if voter is None and config.invite_codes:
            return redirect(url_for("join"))
        conn = db()
        matchup = session.get("shown")
        if (
            matchup is None
            or matchup["case_id"] not in bundle.cases
            or (voter and storage.get_matchup(conn, matchup["matchup_id"], voter))
        ):
            matchup = storage.new_matchup(conn, voter, bundle, rng)  # stored only when voted on or skipped
            session.permanent = True
            session["shown"] = matchup
        votes = storage.vote_count(conn, voter) if voter else 0
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

    def start_voter(invite_code: str | None = None) -> str:
        """Register this session's voter: on its first vote, skip or invite code, never on a page view."""
        voter = storage.add_voter(db(), ip_hash(), new_voter_quotas, invite_code=invite_code)
        if voter is None:
            log.warning(
                "refused a new voter: IP hash %s is at arena.new_voters_per_ip (%s)",
                ip_hash(),
                config.new_voters_per_ip,
            )
            abort(429, "Too many new voters from your network; please try again later.")
        session.permanent = True
        session["voter"] = voter
        return voter

    @app.route("/join", methods=["GET", "POST"])
    @limiter.limit("20 per minute", key_func=ip_hash, methods=["POST"])
    def join():
        if not config.invite_codes:
            return redirect(url_for("index"))
        form = JoinForm()
        if form.validate_on_submit():
            given = form.code.data.strip().encode()
            code = next((c for c in config.invite_codes if hmac.compare_digest(c.encode(), given)), None)
            if code is not None:
                if current_voter() is None:
                    start_voter(invite_code=code)
                return redirect(url_for("index"))
            flash("That invite code is not valid.")
            return render_template("join.html", form=form), 403
        return render_template("join.html", form=form)

    def shown_matchup(form: FlaskForm) -> dict | None:
        """The pair on this session's screen that the form votes on; None, with a message, when
        it was voted on or skipped already or the session has ended."""
        if not form.validate_on_submit():
            abort(400, "The vote form was incomplete.")
        shown, voter = session.get("shown"), current_voter()
        if shown and hmac.compare_digest(shown["matchup_id"].encode(), form.matchup.data.encode()):
            return shown
        if voter and storage.get_matchup(db(), form.matchup.data, voter):
            flash("You already voted on (or skipped) that comparison; it was not counted twice.")
            return None
        if shown is None:
            flash("Your session has ended; here is a new case.")
            return None
        abort(404, "No such comparison was shown to you.")

    def acting_voter() -> str:
        voter = current_voter()
        if voter is None and config.invite_codes:
            abort(403, "This arena needs an invite code: open the arena page to enter it.")
        return voter or start_voter()

    @app.post("/vote")
    @limiter.limit(lambda: config.rate_limit)
    def vote():
        form = VoteForm()
        shown = shown_matchup(form)
        if shown is None:
            return redirect(url_for("index"))
        comment = (form.comment.data or "").strip()
        if len(comment) > config.max_comment_chars:
            abort(400, f"Comments are limited to {config.max_comment_chars} characters.")
        # Checked before a first vote registers its voter (no voter rows for refused votes), and
        # again inside the vote's transaction, where concurrent votes cannot overshoot it.
        result = "limited"
        if not storage.over_quota(db(), "votes", ip_hash(), vote_quotas):
            result = storage.record_vote(db(), acting_voter(), shown, form.choice.data, comment, ip_hash(), vote_quotas)
        if result == "limited":
            log.warning("refused a vote: IP hash %s is at arena.votes_per_ip (%s)", ip_hash(), config.votes_per_ip)
            abort(429, "Too many votes from your network; please try again later.")
        session.pop("shown", None)
        if result == "saved":
            flash("Thanks, your vote is saved.")
        else:
            flash("You already voted on (or skipped) that comparison; it was not counted twice.")
        return redirect(url_for("index"))

    @app.post("/skip")
    @limiter.limit(lambda: config.rate_limit)
    def skip():
        form = SkipForm()
        shown = shown_matchup(form)
        if shown is not None:
            storage.skip_matchup(db(), acting_voter(), shown)
            session.pop("shown", None)
        return redirect(url_for("index"))

    @app.route("/admin/login", methods=["GET", "POST"])
    def admin_login():
        if admin_password is None:
            abort(403, "The admin pages are disabled: set the environment variable " + config.admin_password_env + ".")
        form = LoginForm()
        if form.validate_on_submit():
            # The right password is checked first and always accepted: a flood of wrong ones
            # (possibly from a proxy's address that the admin shares) must not lock the admin out.
            if hmac.compare_digest(form.password.data.encode(), admin_password.encode()):
                session["admin"] = True
                return redirect(url_for("admin"))
            if not admin_failures.hit(ADMIN_FAILURES, ip_hash()):
                log.warning("more than %s wrong admin passwords from IP hash %s", ADMIN_FAILURES, ip_hash())
                abort(429, "Too many wrong passwords; please wait a minute.")
            flash("Wrong password.")
            return render_template("login.html", form=form), 403
        return render_template("login.html", form=form)

    @app.post("/admin/logout")
    def admin_logout():
        if LogoutForm().validate_on_submit():
            session.pop("admin", None)
        return redirect(url_for("index"))

    leaderboard_cache: dict = {}

    def flagged_votes():
        """Every vote with its anomaly flag ('' when none)."""
        votes = storage.votes_frame(db(), bundle)
        return votes.assign(flag=anomalies.flag_votes(votes, config.flag_fast_seconds, config.flag_votes_per_ip))

    @app.get("/admin")
    @admin_only
    def admin():
        votes = flagged_votes()
        exclude = request.args.get("exclude_flagged") == "1"
        counted = votes[votes["flag"] == ""] if exclude else votes
        board = None
        if len(counted):
            # The bootstrap takes a second or two: recompute only when the counted votes changed.
            key = (exclude, tuple(counted["vote_id"]))
            if leaderboard_cache.get("key") != key:
                leaderboard_cache.update(
                    key=key, board=build_leaderboard(counted, bundle.judge, config.bootstrap, config.seed)
                )
            board = leaderboard_cache["board"]
        return render_template(
            "admin.html",
            board=board,
            exclude=exclude,
            flagged=int((votes["flag"] != "").sum()),
            networks=anomalies.by_network(votes, votes["flag"]),
            voters=anomalies.by_voter(votes, votes["flag"]),
            config=config,
            cases=len(bundle.cases),
            explainers=sorted(bundle.mapping.values()),
            judged=bundle.judge is not None,
            logout_form=LogoutForm(),
        )

    @app.get("/admin/votes.csv")
    @admin_only
    def export_csv():
        votes = flagged_votes()
        text = votes.assign(**{c: votes[c].map(_csv_safe) for c in CSV_TEXT_COLUMNS}).to_csv(index=False)
        return send_file(io.BytesIO(text.encode()), mimetype="text/csv", as_attachment=True, download_name="votes.csv")

    @app.get("/admin/votes.parquet")
    @admin_only
    def export_parquet():
        buffer = io.BytesIO()
        flagged_votes().to_parquet(buffer, index=False)
        buffer.seek(0)
        return send_file(
            buffer, mimetype="application/vnd.apache.parquet", as_attachment=True, download_name="votes.parquet"
        )

    @app.errorhandler(CSRFError)
    def csrf_error(error):
        return render_template(
            "error.html",
            code=400,
            message="This form has expired or was not sent by the arena page. Reload and try again.",
        ), 400

    for code in (400, 403, 404, 405, 413, 429, 500):

        @app.errorhandler(code)
        def http_error(error, code=code):
            message = getattr(error, "description", None) or "Something went wrong."
            return render_template("error.html", code=code, message=message), code

    app.extensions["arena_bundle"] = bundle
    return app

