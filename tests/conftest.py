"""Test-wide settings: offline, quiet, and Prefect state in a temporary folder."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
# torch threads sleep instead of spinning while waiting: on a busy 2-core machine spinning
# OpenMP threads made generation 5-10x slower (measured in benchmarks/bench_generate.py runs).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="recxplain-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# The temporary Prefect API can take longer than the default 20 s to start on a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
