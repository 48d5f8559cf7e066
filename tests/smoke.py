"""The real smoke pipeline (configs/smoke.yaml, the embedded model) through the command line, shared
by the slow tests: the rerun matrix (tests/test_rerun_matrix.py) and the Dask run
(tests/test_scaleout.py) start from one cold run per session (the `smoke_run` fixture in
tests/conftest.py)."""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from recxplain.stage import folder_digest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")
# Every run of the slow tests: the smoke config without the LLM's attribute guesses and 1-100
# scores, which every evaluation rerun would repeat (the judge still votes in the pairs and the tournament).
LIGHTER = ["evaluation.attribute_prediction=false", "evaluation.explainability=false"]


@dataclass
class SmokeRun:
    artifacts: Path
    summary: dict  # runs/smoke/summary.json
    digests: dict[str, str]  # stage label -> content digest of its folder, right after the run


def run_command(artifacts: Path) -> dict:
    """`python -m flows.pipeline` on the smoke config; its run summary."""
    done = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--config", SMOKE, "--set", f"runtime.artifacts_dir={artifacts}",
         *[arg for setting in LIGHTER for arg in ("--set", setting)]],
        cwd=ROOT, capture_output=True, text=True, timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads((artifacts / "runs" / "smoke" / "summary.json").read_text())


def stage_digests(summary: dict) -> dict[str, str]:
    """Stage label -> content digest of the folder it wrote or loaded."""
    return {row["stage"]: folder_digest(Path(row["folder"])) for row in summary["stages"]}
