"""The command line every flow shares: `--config FILE --set KEY=VALUE ...`.

    python -m flows.pipeline --config configs/default.yaml --set recommender.k=20
    python -m flows.retrain --set "retrain.cron=15 4 * * *"

Each `--set` is one override, spaces included. `--overrides TEXT` takes several, split as a
shell would split them (what `make flow OVERRIDES=...` passes). The config is validated before
Prefect starts: a bad file fails in milliseconds, exit code 2. The run prints one line per stage
as it starts and ends, the report's path at the end, and a failed stage as one line with its
name (exit code 1); `--set runtime.verbose=true` prints the libraries' output and tracebacks too.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import traceback
from pathlib import Path

import flows.console
from flows.console import StageConsole, planned_stages, set_library_output
from recxplain.config import ConfigError, load_config
from recxplain.llm.chat import LLMError

# Failures caused by what the run was given (data, config, a model folder, an API key): their
# message says what to fix, so it is printed alone. Anything else also names its type.
INPUT_ERRORS = (ValueError, OSError, LLMError)


def parse_arguments(argv: list[str] | None, prog: str, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=description.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml", help="YAML config file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help='override a config field, e.g. --set recommender.k=20 or --set "retrain.cron=15 4 * * *" (repeatable)',
    )
    parser.add_argument(
        "--overrides", dest="override_text", default="", metavar="TEXT",
        help="several overrides in one shell-quoted string, e.g. 'recommender.k=20 \"retrain.cron=15 4 * * *\"'",
    )
    args = parser.parse_args(argv)
    try:
        args.overrides += shlex.split(args.override_text)
    except ValueError as err:  # an unclosed quote
        parser.error(f"--overrides {args.override_text!r}: {err}")
    return args


def error_line(err: BaseException) -> str:
    """The one line a failed run ends with: the stage that failed (when one did) and why."""
    message = str(err) if isinstance(err, INPUT_ERRORS) else f"{type(err).__name__}: {err}"
    stage = getattr(err, "stage", None)
    return f"error: stage {stage} failed: {message}" if stage else f"error: {message}"


def run_flow(flow_fn, argv: list[str] | None, prog: str, description: str) -> int:
    """Parse the command line, validate the config, run `flow_fn(config_path, overrides)` and
    print where its report is; the process exit code."""
    args = parse_arguments(argv, prog, description)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    verbose = cfg.runtime.verbose
    set_library_output(verbose)
    flows.console.CONSOLE = StageConsole(total=planned_stages(cfg, flow_fn.name))
    started = time.perf_counter()
    try:
        run_dir = Path(flow_fn(args.config, args.overrides))
    except Exception as err:  # Prefect has recorded the failure with its traceback already
        if verbose:
            traceback.print_exception(err)
        print(error_line(err), file=sys.stderr)
        if not isinstance(err, INPUT_ERRORS) and not verbose:
            print("(--set runtime.verbose=true prints the traceback)", file=sys.stderr)
        return 1
    finally:
        flows.console.CONSOLE = None
    print(f"run finished in {time.perf_counter() - started:.1f} s; summary: {run_dir / 'summary.md'}")
    if (run_dir / "report.html").exists():
        print(f"report: {run_dir / 'report.html'}")
    return 0
