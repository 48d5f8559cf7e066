"""The command line every flow shares: `--config FILE --set KEY=VALUE ...`.

    python -m flows.pipeline --config configs/default.yaml --set recommender.k=20

The config is validated before Prefect starts: a bad file fails in milliseconds, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from recxplain.config import ConfigError, load_config


def parse_arguments(argv: list[str] | None, prog: str, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=description.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml", help="YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set recommender.k=20 (repeatable)",
    )
    args = parser.parse_args(argv)
    args.overrides = [o for text in args.overrides for o in text.split()]
    return args


def run_flow(flow_fn, argv: list[str] | None, prog: str, description: str) -> int:
    """Parse the command line, validate the config, run `flow_fn(config_path, overrides)` and
    print the run's summary; the process exit code."""
    args = parse_arguments(argv, prog, description)
    try:
        load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    run_dir = flow_fn(args.config, args.overrides)
    print(f"run finished in {time.perf_counter() - started:.1f} s: {run_dir}")
    print((Path(run_dir) / "summary.md").read_text())
    return 0
