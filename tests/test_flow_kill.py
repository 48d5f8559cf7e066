"""kill -9 inside a training stage of the real smoke flow, then the same command again: the rerun
loads every stage before it from cache and resumes training from its last checkpoint. Slow (one
smoke flow's worth of work): `make test-slow`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recxplain.stage import MANIFEST

ROOT = Path(__file__).resolve().parent.parent
# What SFT waits for. judge_pairs is ORPO's branch: it runs before or after SFT, whichever takes
# the heavy-stage slot first, so the kill may come before it ran.
UPSTREAM = ["prepare_data", "train_recommender", "mine_paths", "build_cases", "teacher_generate", "sample_pairs"]


def smoke_command(artifacts: Path) -> list[str]:
    # A checkpoint after every step: SFT's 2 steps leave one to resume from.
    return [sys.executable, "-m", "flows.pipeline", "--config", "configs/smoke.yaml",
            "--set", f"runtime.artifacts_dir={artifacts}", "--set", "training.save_steps=1"]


def first_checkpoint(artifacts: Path) -> Path | None:
    """SFT's first complete checkpoint (the trainer writes trainer_state.json last)."""
    found = list(artifacts.glob("train_sft/*.partial/checkpoints/checkpoint-1/trainer_state.json"))
    return found[0].parent if found else None


@pytest.mark.slow
def test_smoke_flow_killed_in_training_resumes_from_its_checkpoint(tmp_path):
    artifacts = tmp_path / "artifacts"
    with open(tmp_path / "killed.log", "w") as log:
        # Its own session: SIGKILL reaches the flow and the temporary Prefect server it started.
        process = subprocess.Popen(smoke_command(artifacts), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 2400
        while first_checkpoint(artifacts) is None:
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "SFT wrote no checkpoint"
            time.sleep(0.5)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert not list(artifacts.glob(f"train_sft/*/{MANIFEST}")), "SFT finished before the kill"

    again = subprocess.run(smoke_command(artifacts), cwd=ROOT, capture_output=True, text=True, timeout=2400)
    (tmp_path / "rerun.log").write_text(again.stdout + again.stderr)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    summary = json.loads((artifacts / "runs" / "smoke" / "summary.json").read_text())
    states = {row["stage"]: row["state"] for row in summary["stages"]}
    assert [states[name] for name in UPSTREAM] == ["Cached"] * len(UPSTREAM), states
    assert states["train_sft"] == "Completed"
    training = json.loads((Path(summary["artifacts"]["sft"]) / "training.json").read_text())
    assert training["resumed_from_step"] == 1 and training["steps"] == 2

    # The console: a line per stage as it starts and ends, the report's path, no library noise.
    lines = again.stdout.splitlines()
    assert "[1/26] prepare_data ... cached" in lines and "[8/26] train_sft ..." in lines
    assert any(line.startswith("[26/26] export_arena ... ") for line in lines)
    assert lines[-1] == f"report: {artifacts / 'runs' / 'smoke' / 'report.html'}"
    for noise in ("Map:", "Tokenizing", "FutureWarning", "| INFO", "Traceback"):
        assert noise not in again.stdout + again.stderr, noise
