"""Serve the arena: `python -m arena [--config YAML] [--set KEY=VALUE] [--bundle FOLDER] [--db FILE]`.

Settings come from the config (configs/default.yaml unless --config; --set overrides fields,
e.g. `--set arena.port=9000`). Without --bundle it serves the bundle of the config's last
pipeline run (`runtime.artifacts_dir/runs/<run_name>/summary.json`). Without --db (and with
`arena.db_path` unset) votes go to `runtime.artifacts_dir/arena/votes-<bundle hash>.sqlite3`.

Environment: ARENA_SECRET_KEY signs the voters' cookies, ARENA_ADMIN_PASSWORD opens /admin
(the names are configurable: arena.secret_key_env, arena.admin_password_env).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import waitress

from arena.app import create_app
from arena.bundle import load_bundle
from recxplain.config import Config, ConfigError, load_config

DEFAULT_CONFIG = Path("configs/default.yaml")


def bundle_of_last_run(cfg: Config) -> Path:
    """The arena bundle folder recorded in the run summary of `cfg`'s run."""
    summary = Path(cfg.runtime.artifacts_dir) / "runs" / cfg.runtime.run_name / "summary.json"
    if not summary.is_file():
        raise FileNotFoundError(f"{summary}: no pipeline run to take the bundle from; run `make flow` or pass --bundle")
    artifacts = json.loads(summary.read_text()).get("artifacts", {})
    if "arena" not in artifacts:
        raise ValueError(f"{summary}: the run exported no arena bundle; pass --bundle")
    return Path(artifacts["arena"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arena", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help=f"YAML config (default: {DEFAULT_CONFIG} when it exists)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument(
        "--bundle", type=Path, help="folder written by the export_arena stage (default: the last run's)"
    )
    parser.add_argument("--db", type=Path, help="SQLite votes file (default: arena.db_path, else one per bundle)")
    parser.add_argument("--host", help="listen address (default: arena.host)")
    parser.add_argument("--port", type=int, help="listen port (default: arena.port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    try:
        config_path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
        cfg = load_config(config_path, args.set) if config_path else Config()
        bundle_dir = args.bundle or bundle_of_last_run(cfg)
        db = args.db or cfg.arena.db_path
        if db is None:
            db = Path(cfg.runtime.artifacts_dir) / "arena" / f"votes-{load_bundle(bundle_dir).digest[:12]}.sqlite3"
        app = create_app(bundle_dir, db, cfg.arena)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"arena: {err}", file=sys.stderr)
        return 2
    host, port = args.host or cfg.arena.host, args.port or cfg.arena.port
    print(f"arena: serving {bundle_dir} on http://{host}:{port}/ (admin: /admin), votes in {db}", flush=True)
    waitress.serve(app, host=host, port=port, threads=cfg.arena.threads, ident="recxplain-arena")
    return 0


if __name__ == "__main__":
    sys.exit(main())
