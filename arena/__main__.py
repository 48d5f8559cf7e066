"""Serve the arena: `python -m arena --bundle FOLDER [--db FILE] [--config YAML] [--set KEY=VALUE]`.

Settings come from the `arena` section of the config (configs/default.yaml unless --config);
--set overrides it (`--set arena.port=9000`), --db/--host/--port override those three fields.
Environment: ARENA_SECRET_KEY signs the voters' cookies, ARENA_ADMIN_PASSWORD opens /admin
(names configurable in arena.secret_key_env / arena.admin_password_env).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import waitress

from arena.app import create_app
from recxplain.config import ArenaConfig, ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m arena", description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="folder written by the export_arena stage")
    parser.add_argument("--db", type=Path, help="SQLite votes file (default: arena.db_path)")
    parser.add_argument("--config", type=Path, help="YAML config whose arena section is used")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--host", help="listen address (default: arena.host)")
    parser.add_argument("--port", type=int, help="listen port (default: arena.port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    try:
        if args.config is not None or args.set:
            config = load_config(args.config or Path("configs/default.yaml"), args.set).arena
        else:
            config = ArenaConfig()
        app = create_app(args.bundle, args.db or config.db_path, config)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"arena: {err}", file=sys.stderr)
        return 2
    host, port = args.host or config.host, args.port or config.port
    print(f"arena: serving {args.bundle} on http://{host}:{port}/ (admin: /admin)", flush=True)
    waitress.serve(app, host=host, port=port, threads=config.threads, ident="recxplain-arena")
    return 0


if __name__ == "__main__":
    sys.exit(main())
