"""The recxplain pipeline: one Prefect flow, each stage a cached task (see DESIGN.md).

    python -m flows.pipeline --config configs/default.yaml --set recommender.k=20

Each stage writes a content-addressed folder under `runtime.artifacts_dir/<stage>/<key>/`; a
second run with the same config loads every stage from cache, a changed config section reruns
that stage and what depends on it, and a killed run resumes at the stage that died. The run's
summary (what ran, what was cached, seconds per stage) and the report land in
`runtime.artifacts_dir/runs/<run_name>/`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import flows  # noqa: F401  (quiet offline Prefect settings, before prefect is imported)
from prefect import flow

from flows.summary import StageLog, publish_run_summary
from recxplain.config import Config, ConfigError, load_config
from recxplain.stage import stage
from tasks.data import prepare_data, source_digest
from tasks.recommend import train_recommender
from tasks.paths import mine_paths

PREPARE_DATA = stage(prepare_data)
TRAIN_RECOMMENDER = stage(train_recommender)
MINE_PATHS = stage(mine_paths)


def evidence_stages(cfg: Config, log: StageLog) -> dict[str, Path]:
    """Stage 1 of every seed: data, recommender, and the evidence behind each recommendation."""
    data = log.run(PREPARE_DATA, data=cfg.data, source_digest=source_digest(cfg.data))
    recommender = log.run(TRAIN_RECOMMENDER, recommender=cfg.recommender, data=data)
    paths = log.run(MINE_PATHS, paths=cfg.paths, data=data, recommender=recommender)
    return {"data": data, "recommender": recommender, "paths": paths}


@flow(name="recxplain-pipeline", log_prints=True)
def pipeline(config_path: str = "configs/default.yaml", overrides: list[str] | None = None) -> str:
    """Run every stage for one config; return the folder of the run's summary and report."""
    cfg = load_config(config_path, overrides or [])
    log = StageLog(cfg.runtime.artifacts_dir)
    artifacts = evidence_stages(cfg, log)
    run_dir = publish_run_summary(cfg, config_path, overrides or [], log, artifacts)
    return str(run_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml", help="YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set recommender.k=20 (repeatable)",
    )
    args = parser.parse_args(argv)
    overrides = [o for text in args.overrides for o in text.split()]
    try:  # validate before starting Prefect: a bad config fails in milliseconds
        load_config(args.config, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    run_dir = pipeline(args.config, overrides)
    print(f"run finished in {time.perf_counter() - started:.1f} s: {run_dir}")
    print((Path(run_dir) / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
