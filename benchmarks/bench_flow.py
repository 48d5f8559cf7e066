"""Per-stage wall times of the whole pipeline, cold and then cached (issue 5's budget:
<= 15 minutes cold on 2 cores, <= 20 s for the same command again, with zero LLM calls and zero
training steps).

    .venv/bin/python benchmarks/bench_flow.py [--config configs/default.yaml] [--artifacts DIR]

Uses a fresh artifacts folder (default: a temporary one) so the first run is really cold; the
embedded model conversion to safetensors is included in the first run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(config: str, artifacts: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--config", config, "--set", f"runtime.artifacts_dir={artifacts}"],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - started
    run_name = json.loads(subprocess.run(
        [sys.executable, "-c",
         f"from recxplain.config import load_config; print(load_config({config!r}).runtime.model_dump_json())"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout)["run_name"]
    return seconds, json.loads((artifacts / "runs" / run_name / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--artifacts", type=Path, default=None)
    args = parser.parse_args()
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="bench-flow-"))
    cold, first = run(args.config, artifacts)
    warm, second = run(args.config, artifacts)
    print(f"{'stage':28} {'cold s':>9} {'state':>10} {'again s':>9} {'state':>8}")
    for a, b in zip(first["stages"], second["stages"]):
        print(f"{a['stage']:28} {a['seconds']:9.1f} {a['state']:>10} {b['seconds']:9.2f} {b['state']:>8}")
    recomputed = [b["stage"] for b in second["stages"] if b["state"] != "Cached"]
    print(f"whole command: cold {cold:.0f} s (goal <= 900), again {warm:.1f} s (goal <= 20); "
          f"stages recomputed on the second run: {recomputed or 'none'}")


if __name__ == "__main__":
    main()
