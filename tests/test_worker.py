"""`make worker` (flows/worker.py) stops on the first SIGINT, even when it was started with
SIGINT ignored (from a script, `nohup` or a supervisor), where `prefect worker start` alone
ignored the first Ctrl-C and died by SIGKILL on the second. Slow: it starts a Prefect server."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_deployments import prefect_server  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parent.parent


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_worker_stops_on_the_first_ctrl_c(tmp_path, prefect_server):  # noqa: F811
    env = prefect_server | {"PREFECT_LOGGING_LEVEL": "INFO"}
    prefect = str(Path(sys.executable).parent / "prefect")
    subprocess.run([prefect, "work-pool", "create", "recxplain", "--type", "process", "--overwrite"],
                   env=env, cwd=ROOT, check=True, capture_output=True, timeout=180)
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen([sys.executable, "-m", "flows.worker"], env=env, cwd=ROOT, stdout=out,
                                  stderr=subprocess.STDOUT, preexec_fn=ignore_sigint)
    try:
        deadline = time.monotonic() + 180
        while "started" not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        worker.send_signal(signal.SIGINT)
        code = worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert code == 0, log.read_text()[-2000:]
    assert "SIGKILL" not in log.read_text()
