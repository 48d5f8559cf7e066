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
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)
