"""Register recxplain's deployments (deployments/prefect.yaml) with a running Prefect server.

    make ui         # in one terminal: the server, http://127.0.0.1:4200
    make deploy     # this module: the process work pool and the three deployments
    make worker     # runs what the server schedules or the UI triggers

It creates the process work pool `recxplain` (or updates it) and runs `prefect deploy` on
deployments/prefect.yaml with the values that file reads from the environment: this checkout,
the default config, and the retraining schedule of the config's `retrain` section.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from recxplain.config import ConfigError, load_config

PROJECT = Path(__file__).resolve().parent.parent
PREFECT_FILE = PROJECT / "deployments" / "prefect.yaml"
WORK_POOL = "recxplain"


def deploy_environment(config_path: str, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The `{{ $RECXPLAIN_* }}` values of deployments/prefect.yaml for one config."""
    cfg = load_config(config_path, overrides)
    return {
        "RECXPLAIN_ROOT": str(PROJECT),
        "RECXPLAIN_CONFIG": str(config_path),
        "RECXPLAIN_RETRAIN_CRON": cfg.retrain.cron,
        "RECXPLAIN_RETRAIN_TIMEZONE": cfg.retrain.timezone,
        "RECXPLAIN_RETRAIN_ACTIVE": "true" if cfg.retrain.scheduled else "false",
    }


def deploy(config_path: str, api_url: str, names: list[str] | None = None, overrides: list[str] | None = None,
           work_pool: str = WORK_POOL, environment: dict[str, str] | None = None) -> None:
    """Create the work pool and register the deployments `names` (None: all) at `api_url`;
    the Prefect CLI runs in `environment` (default: this process's)."""
    prefect = str(Path(sys.executable).parent / "prefect")
    env = dict(os.environ if environment is None else environment)
    env |= deploy_environment(config_path, overrides or []) | {"PREFECT_API_URL": api_url}
    subprocess.run(
        [prefect, "work-pool", "create", work_pool, "--type", "process", "--overwrite"],
        env=env, cwd=PROJECT, check=True, stdout=subprocess.DEVNULL,
    )
    selection = ["--all"] if names is None else [arg for name in names for arg in ("--name", name)]
    subprocess.run(
        [prefect, "--no-prompt", "deploy", "--prefect-file", str(PREFECT_FILE), *selection],
        env=env, cwd=PROJECT, check=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml", help="default config of the deployments")
    parser.add_argument("--name", action="append", help="deploy only this deployment (repeatable)")
    args = parser.parse_args(argv)
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        print("error: PREFECT_API_URL is not set: start a server (make ui) and point to it, e.g.\n"
              "  PREFECT_API_URL=http://127.0.0.1:4200/api make deploy", file=sys.stderr)
        return 2
    try:
        deploy(args.config, api_url, names=args.name)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as err:
        print(f"error: {' '.join(err.cmd[:3])} failed (exit {err.returncode}); is the server at {api_url} up?",
              file=sys.stderr)
        return 1
    print(f"deployments registered at {api_url}; start a worker with: make worker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
