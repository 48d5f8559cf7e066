"""`make worker`: a Prefect process worker for the `recxplain` pool that stops on the first Ctrl-C.

    python -m flows.worker [--pool recxplain] [other `prefect worker start` options]

Prefect's worker answers its first SIGINT by sending SIGINT to itself through the handler it
found at start. A worker started from a script, `nohup` or a supervisor inherits SIGINT as
ignored, so that first signal did nothing and the second one was SIGKILL (exit 137). This
restores the default handling, then becomes `prefect worker start` (exec: same process id, so
signals reach the worker itself).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from flows.deploy import WORK_POOL


def worker_command(argv: list[str]) -> list[str]:
    prefect = str(Path(sys.executable).parent / "prefect")
    pool = [] if "--pool" in argv or "-p" in argv else ["--pool", WORK_POOL]
    return [prefect, "worker", "start", *pool, *argv]


def main(argv: list[str] | None = None) -> None:
    command = worker_command(sys.argv[1:] if argv is None else argv)
    # A handler, not SIG_DFL: exec resets handlers to the default but keeps an ignored signal
    # ignored, and Python then installs its KeyboardInterrupt handler, which Prefect expects.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
