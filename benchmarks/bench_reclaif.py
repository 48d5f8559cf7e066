"""The cold RecLAIF run's budget (issue 17): at most 20 minutes on 2 cores and a peak resident
memory under 8 GB (one model in memory at a time).

    nice -n 19 .venv/bin/python benchmarks/bench_reclaif.py [--config configs/reclaif.yaml] [--artifacts DIR]

Runs `python -m flows.pipeline` once on a fresh artifacts folder (default: a temporary one), so
every stage runs, the embedded model's conversion included, and prints each stage's seconds, the
whole command's wall time, its CPU time (user + system: what a busy machine cannot inflate) and
the child process's peak RSS (getrusage's ru_maxrss of the waited-for child).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_SECONDS, GOAL_GB = 1200, 8.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/reclaif.yaml")
    parser.add_argument("--artifacts", type=Path, default=None)
    args = parser.parse_args()
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="bench-reclaif-"))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.pipeline", "--config", args.config,
                    "--set", f"runtime.artifacts_dir={artifacts}"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_gb = usage.ru_maxrss * 1024 / 1e9  # Linux reports kilobytes
    from recxplain.config import load_config

    run_name = load_config(args.config).runtime.run_name
    summary = json.loads((artifacts / "runs" / run_name / "summary.json").read_text())
    for stage in summary["stages"]:
        print(f"{stage['stage']:32} {stage['seconds']:8.1f} s  {stage['state']}")
    print(f"cold run: {seconds:.0f} s wall (goal <= {GOAL_SECONDS}), {usage.ru_utime + usage.ru_stime:.0f} s CPU, "
          f"peak RSS {peak_gb:.2f} GB (goal < {GOAL_GB:g}); artifacts in {artifacts}")


if __name__ == "__main__":
    main()
