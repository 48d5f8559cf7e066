"""Serve recxplain's deployments from this process: no work pool, no worker (`make serve`).

    make ui                                               # the server, in another terminal
    PREFECT_API_URL=http://127.0.0.1:4200/api make serve  # CONFIG=... picks the default config

The same three deployments as deployments/prefect.yaml (`pipeline`, `evaluate`, `retrain` on
the config's `retrain.cron`), registered with the server and run by this process, in
subprocesses, for as long as it lives (Ctrl-C stops it). Schedules need a real server: the
temporary one a flow starts on its own cannot schedule runs (Prefect: "Cannot schedule flows on an ephemeral server").
"""

from __future__ import annotations

import argparse
import os
import sys

import flows  # noqa: F401  (quiet offline Prefect settings, before prefect is imported)

# isort: split
from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron

from flows.evaluate_only import evaluate_only
from flows.pipeline import pipeline
from flows.retrain import retrain
from recxplain.config import ConfigError, load_config


def served_deployments(config_path: str, overrides: list[str] | None = None) -> list[RunnerDeployment]:
    """The deployments of deployments/prefect.yaml, for `prefect.serve`."""
    cfg = load_config(config_path, overrides or [])
    parameters = {"config_path": config_path, "overrides": overrides or []}
    schedule = Cron(cfg.retrain.cron, timezone=cfg.retrain.timezone, active=cfg.retrain.scheduled)
    return [
        pipeline.to_deployment(name="pipeline", parameters=parameters, tags=["recxplain"]),
        evaluate_only.to_deployment(
            name="evaluate", parameters=parameters | {"students_from": None}, tags=["recxplain"]
        ),
        retrain.to_deployment(
            name="retrain", parameters=parameters, schedules=[schedule], tags=["recxplain", "scheduled"]
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml", help="default config of the deployments")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at the same time (default 1)")
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print("error: PREFECT_API_URL is not set: start a server (make ui) and point to it, e.g.\n"
              "  PREFECT_API_URL=http://127.0.0.1:4200/api make serve", file=sys.stderr)
        return 2
    try:
        deployments = served_deployments(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
