"""Deployments, schedules and task runners: a real Prefect server on a loopback port, the process
work pool and worker of deployments/prefect.yaml, and a local Dask cluster."""

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.deploy import PREFECT_FILE, PROJECT, deploy, deploy_environment
from flows.runners import ConfigTaskRunner, TaskRunnerUnavailable, task_runner
from flows.summary import StageLog
from recxplain.config import RuntimeConfig, load_config
from recxplain.stage import stage
from tasks.recommend import train_recommender
from tests.fanout_toys import Job, timed_double
from tests.test_data import write_ml_latest
from tests.test_retrain import MOVIES, ratings_csv

DOUBLE = stage(timed_double)
TRAIN_RECOMMENDER = stage(train_recommender)


def write_config(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------ task runners


def test_task_runner_follows_the_runtime_section(tmp_path):
    threads = task_runner(RuntimeConfig(max_workers=3))
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3

    local = task_runner(RuntimeConfig(task_runner="dask", max_workers=2, artifacts_dir=tmp_path))
    assert local.cluster_kwargs["n_workers"] == 2 and local.cluster_kwargs["threads_per_worker"] == 1
    assert local.cluster_kwargs["local_directory"] == str((tmp_path / "dask").resolve())
    assert local.cluster_kwargs["scheduler_kwargs"] == {"dashboard": False, "dashboard_address": "127.0.0.1:0"}

    remote = task_runner(RuntimeConfig(task_runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert remote.address == "tcp://10.0.0.5:8786" and remote.cluster_kwargs == {}

    try:
        import prefect_ray  # noqa: F401
    except ImportError:
        with pytest.raises(TaskRunnerUnavailable, match=r"pip install -e '\.\[ray\]'"):
            task_runner(RuntimeConfig(task_runner="ray"))
    else:
        assert type(task_runner(RuntimeConfig(task_runner="ray"))).__name__ == "RayTaskRunner"


@flow(task_runner=ConfigTaskRunner())
def fan_out(config_path: str, overrides: list[str] | None = None, sleep_s: float = 2.0) -> tuple[list[dict], dict, str]:
    """Two toy stages at once on the run's configured runner; also the runner that was used."""
    from prefect.context import FlowRunContext

    cfg = load_config(config_path, overrides or [])
    runner = FlowRunContext.get().task_runner.inner()
    log = StageLog(cfg.runtime.artifacts_dir)
    done = {f"double-{v}": log.submit(DOUBLE, f"double-{v}", job=Job(value=v, sleep_s=sleep_s)) for v in (1, 2)}
    results = {label: json.loads((folder / "result.json").read_text()) for label, folder in log.folders(done).items()}
    return log.rows, results, type(runner).__name__


def overlap(results: dict) -> bool:
    a, b = results.values()
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_parallel_stages_run_at_once_on_the_configured_threads_and_cache(tmp_path):
    config = write_config(
        tmp_path / "threads.yaml", f"runtime: {{artifacts_dir: {tmp_path / 'artifacts'}, max_workers: 2}}\n"
    )
    rows, results, runner = fan_out(config, sleep_s=1.5)
    assert runner == "ThreadPoolTaskRunner"
    assert [r["state"] for r in rows] == ["Completed", "Completed"]
    assert [r["value"] for r in results.values()] == [2, 4]
    assert overlap(results) and {r["pid"] for r in results.values()} == {os.getpid()}

    rows, again, _ = fan_out(config, sleep_s=1.5)
    assert [r["state"] for r in rows] == ["Cached", "Cached"] and again == results

    # One worker thread: the same two stages (new keys: other sleep) run one after the other.
    rows, serial, _ = fan_out(config, ["runtime.max_workers=1"], sleep_s=0.5)
    assert not overlap(serial)


# The smoke pipeline on a local Dask cluster of two worker processes: tests/test_scaleout.py.


# ------------------------------------------------------------------ deployments


def test_prefect_yaml_declares_the_three_deployments_on_flows_that_exist():
    spec = yaml.safe_load(PREFECT_FILE.read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert sorted(deployments) == ["evaluate", "pipeline", "retrain"]
    for d in deployments.values():
        path, name = d["entrypoint"].split(":")
        tree = ast.parse((PROJECT / path).read_text())
        function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
        assert any("flow" in ast.unparse(dec) for dec in function.decorator_list), d["entrypoint"]
        params = [a.arg for a in function.args.args]
        assert set(d["parameters"]) <= set(params) and params[:2] == ["config_path", "overrides"]
        assert d["work_pool"]["name"] == "recxplain"
    assert deployments["retrain"]["schedules"][0]["cron"] == "{{ $RECXPLAIN_RETRAIN_CRON }}"

    env = deploy_environment("configs/smoke.yaml", ["retrain.cron=15 4 * * *", "retrain.scheduled=false"])
    assert env["RECXPLAIN_RETRAIN_CRON"] == "15 4 * * *" and env["RECXPLAIN_RETRAIN_ACTIVE"] == "false"
    assert env["RECXPLAIN_ROOT"] == str(PROJECT) and env["RECXPLAIN_CONFIG"] == "configs/smoke.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prefect_server(tmp_path):
    """A real `prefect server start` on a free loopback port, with its own PREFECT_HOME; yields
    the environment that points to it. Bounded start, always torn down."""
    port = free_port()
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError as err:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"prefect server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}"
                    ) from err
                time.sleep(0.5)
        yield env
    finally:  # the server's whole process group (the CLI and the uvicorn it runs)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def api(env: dict, code: str) -> object:
    """Run `code` (which sets `result`) against the server in a fresh interpreter (this test
    process already has its own temporary Prefect API configured); return `result`."""
    script = (
        "import json\nfrom prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter\n"
        "client = get_client(sync_client=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script + code + "\nprint(json.dumps(result, default=str))"],
        env=env, cwd=PROJECT, capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_scheduled_deployment_runs_through_a_worker(tmp_path, prefect_server):
    env = prefect_server
    ratings, _ = ratings_csv()
    source = write_ml_latest(tmp_path / "ml", ratings=ratings, movies=MOVIES)
    config = write_config(
        tmp_path / "retrain.yaml",
        f"data: {{source: ml-latest, path: {source}}}\n"
        "recommender: {model: itemknn, k: 5, top_n: 3, sampled_negatives: 5}\n"
        "paths: {similar_k: 5}\n"
        f"runtime: {{artifacts_dir: {tmp_path / 'artifacts'}, run_name: nightly}}\n"
        "retrain: {cron: '30 4 * * *', timezone: Europe/Berlin, evidence_only: true}\n",
    )
    # Registered as `make deploy` does it: the process work pool, then `prefect deploy`.
    deploy(config, env["PREFECT_API_URL"], names=["retrain"], environment=env)

    # The schedule is the config's, and the server's scheduler plans runs from it.
    schedule = api(env, """
import time
d = client.read_deployment_by_name("recxplain-retrain/retrain")
deadline = time.monotonic() + 60
while True:
    runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [d.id]}))
    if runs or time.monotonic() > deadline:
        break
    time.sleep(1)
result = {"schedules": [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules],
          "parameters": d.parameters, "pool": d.work_pool_name,
          "planned": [r.expected_start_time.in_timezone("Europe/Berlin").strftime("%H:%M") for r in runs]}
""")
    assert schedule["schedules"] == [["30 4 * * *", "Europe/Berlin", True]]
    assert schedule["pool"] == "recxplain" and schedule["parameters"]["config_path"] == config
    assert schedule["planned"] and set(schedule["planned"]) == {"04:30"}

    # Triggered through the API (as the UI's "Run" button does), run by a process worker.
    run_id = api(env, f"""
from prefect.deployments import run_deployment
result = str(run_deployment("recxplain-retrain/retrain", parameters={{"config_path": {config!r}}}, timeout=0).id)
""")
    worker = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", "recxplain", "--run-once"],
        env=env, cwd=PROJECT, capture_output=True, text=True, timeout=600,
    )
    assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
    finished = api(env, f"""
run = client.read_flow_run({run_id!r})
artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id={{"any_": [run.id]}}))
result = {{"state": run.state_name, "artifacts": sorted(a.key for a in artifacts if a.key)}}
""")
    assert finished["state"] == "Completed"
    assert {"retrain-decision", "run-summary"} <= set(finished["artifacts"])
    record = json.loads((tmp_path / "artifacts" / "runs" / "nightly" / "retrain.json").read_text())
    assert record["executed"] == ["prepare_data", "train_recommender", "mine_paths"]


def test_served_variant_has_the_same_deployments_and_the_config_schedule():
    from flows.serve import served_deployments

    served = {d.name: d for d in served_deployments("configs/smoke.yaml", ["retrain.cron=15 4 * * *"])}
    declared = {d["name"]: d for d in yaml.safe_load(PREFECT_FILE.read_text())["deployments"]}
    assert sorted(served) == sorted(declared)
    for name, d in served.items():
        assert d.entrypoint == declared[name]["entrypoint"]
        assert d.parameters["config_path"] == "configs/smoke.yaml"
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in served["retrain"].schedules] == [
        ("15 4 * * *", "UTC", True)
    ]
    assert served["pipeline"].schedules == [] and served["evaluate"].parameters["students_from"] is None
