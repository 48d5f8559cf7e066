"""Test-wide settings: offline, quiet, and Prefect state in a temporary folder."""

import os
import tempfile

import pytest

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

# Slow end-to-end tests (the smoke flow takes minutes on 2 cores) get this pytest-timeout limit
# unless they set their own with @pytest.mark.timeout; every other test has pyproject's default.
SLOW_TEST_TIMEOUT = 3600


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT))


BROWSER_SKIPS: list[str] = []  # node ids of browser tests that skipped in this session


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_runtest_logreport(report):
    if report.skipped and "browser" in report.keywords:
        BROWSER_SKIPS.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true a skipped browser test fails the run: CI installs chromium, so a skip there
    means the arena was never tested in a browser."""
    if on_ci() and BROWSER_SKIPS and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if on_ci() and BROWSER_SKIPS:
        terminalreporter.write_line(
            f"CI=true: browser test(s) skipped, which fails the run: {', '.join(BROWSER_SKIPS)} "
            "(install Debian's chromium: apt-get install chromium)", red=True,
        )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One cold smoke run (threads, the command line) per session, for every slow test that
    starts from it: its artifacts folder, run summary and the content digests of its stages."""
    from tests.smoke import SmokeRun, run_command, stage_digests

    artifacts = tmp_path_factory.mktemp("smoke") / "artifacts"
    summary = run_command(artifacts)
    return SmokeRun(artifacts, summary, stage_digests(summary))
