"""Prefect flows. Importing this package sets quiet, offline Prefect defaults (before prefect is
imported): state under `<project>/.prefect`, no telemetry, warnings only. Each can be
overridden from the environment (e.g. PREFECT_API_URL to use a running Prefect server)."""

import os
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent

for _name, _value in {
    "PREFECT_HOME": str(PROJECT / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # busy machines start it slowly
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_OFFLINE": "1",
    "OMP_WAIT_POLICY": "PASSIVE",  # spinning torch threads are 5-10x slower on a busy machine
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)
