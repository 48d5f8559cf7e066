"""The task runner of a flow, chosen by `runtime.task_runner` in the config.

- `threads` (default): Prefect's thread pool, `runtime.max_workers` threads in the flow's own
  process. Enough on one machine: stages call numpy, polars, torch and HTTP clients, which
  release the GIL.
- `dask`: `prefect-dask`. With `runtime.dask_address` the flow connects to an existing
  scheduler (`dask scheduler` + `dask worker` on the cluster's machines); without it, a local
  cluster of `runtime.max_workers` single-threaded worker processes is started for the run,
  with its scratch space under `<artifacts_dir>/dask/` and no dashboard.
- `ray`: `prefect-ray` (the optional `ray` extra: `pip install -e '.[ray]'`). Ray starts a
  local instance of `runtime.max_workers` CPUs, or connects to the cluster named by
  `RAY_ADDRESS` in the environment (e.g. `ray://head:10001`), as any Ray program does.

A flow's task runner is fixed where the flow is defined, but the config is a parameter of each
run: the flows are defined with `ConfigTaskRunner()`, which reads the run's config and starts
the runner it names when the flow submits its first task. So a run from the command line, a
deployment or `flow.serve` all get the runner of their config.

The flows submit every stage (`StageLog.submit`, flows/summary.py), so every stage runs on the
runner; a task called directly would run in the flow's thread. Workers on other machines must see the same artifacts
folder (a shared filesystem) and, to report their task runs, the same Prefect server
(`PREFECT_API_URL`): without one, every worker process starts a temporary Prefect server of
its own, which costs seconds per worker (measured: a Dask run took 27.6 s instead of
4.7-7 s).
"""

from __future__ import annotations

import inspect
import os
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from recxplain.config import RuntimeConfig, load_config
from recxplain.stage import limit_heavy_stages


class TaskRunnerUnavailable(RuntimeError):
    """The configured task runner's package is not installed."""


def task_runner(runtime: RuntimeConfig) -> TaskRunner:
    """A fresh task runner for one flow run, as `runtime` asks (see the module docstring)."""
    if runtime.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=runtime.max_workers)
    if runtime.task_runner == "dask":
        return dask_task_runner(runtime)
    return ray_task_runner(runtime)


def dask_task_runner(runtime: RuntimeConfig) -> TaskRunner:
    from prefect_dask import DaskTaskRunner

    if runtime.dask_address:
        return DaskTaskRunner(address=runtime.dask_address)
    scratch = (Path(runtime.artifacts_dir) / "dask").resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    return DaskTaskRunner(
        cluster_class=local_dask_cluster,
        cluster_kwargs={
            "n_workers": runtime.max_workers,
            # One task at a time per worker process: a stage uses the cores itself (torch, polars).
            "threads_per_worker": 1,
            "processes": True,
            "local_directory": str(scratch),
            # No dashboard; the scheduler's HTTP endpoint (health, metrics) still starts, on
            # port 8787 unless told otherwise: a free loopback port instead.
            "dashboard_address": None,
            "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            # Loopback only: a local cluster is not reachable from other machines.
            "host": "127.0.0.1",
        },
    )


def local_dask_cluster(**cluster_kwargs: Any):
    """A `distributed.LocalCluster` whose worker processes report to this flow run's Prefect API.

    Called by prefect-dask when the flow run starts. Without a Prefect server
    (`PREFECT_API_URL` unset) the flow runs on a temporary server of its own; handing its
    address to the workers keeps each of them from starting one more.
    """
    import dask
    from distributed import LocalCluster

    api_url = flow_api_url()
    # torch and BLAS size their thread pools by these when they load, so they are set before the
    # worker processes start (Dask's default is 1): the workers share the machine's cores. An
    # OMP_NUM_THREADS in the environment wins. Both names get one value (torch counts
    # MKL_NUM_THREADS too), also in the workers' own environment; Dask's nanny copies its
    # pre-spawn values into this process's environment, which is restored after (else the
    # flow's later subprocesses, and a later cluster, would read them).
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // cluster_kwargs["n_workers"]))
    sizes = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    before = {name: os.environ.get(name) for name in sizes}
    try:
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in sizes.items()}):
            return LocalCluster(env=sizes | ({"PREFECT_API_URL": api_url} if api_url else {}), **cluster_kwargs)
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def flow_api_url() -> str | None:
    """The Prefect API this process reports to: PREFECT_API_URL, or inside a flow run without
    it, the temporary server the run started (None outside a flow run)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if FlowRunContext.get() is None:
        return None
    from prefect.client.orchestration import get_client

    return str(get_client(sync_client=True).api_url)


def ray_task_runner(runtime: RuntimeConfig) -> TaskRunner:
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise TaskRunnerUnavailable(
            "runtime.task_runner is 'ray' but prefect-ray is not installed: pip install -e '.[ray]'"
        ) from None
    address = os.environ.get("RAY_ADDRESS")
    init_kwargs: dict[str, Any] = {} if address else {"num_cpus": runtime.max_workers, "include_dashboard": False}
    api_url = flow_api_url()
    if api_url:  # as for Dask: Ray's workers report to this run's Prefect API
        init_kwargs["runtime_env"] = {"env_vars": {"PREFECT_API_URL": api_url}}
    return RayTaskRunner(address=address, init_kwargs=init_kwargs)


class ConfigTaskRunner(TaskRunner):
    """The task runner that the flow run's own config asks for (`runtime.task_runner`).

    The runner is chosen and started when the flow submits its first task: the flow run's
    `config_path` and `overrides` parameters (defaults included) are loaded then, and this
    process's heavy-stage slots set to `runtime.heavy_tasks`. Every stage is submitted, so a
    fully cached run on Dask still starts its local cluster (to look its stages up there).
    """

    def __init__(self) -> None:
        super().__init__()
        self._inner: TaskRunner | None = None
        self._stack = ExitStack()
        self._lock = threading.Lock()

    def duplicate(self) -> ConfigTaskRunner:
        return type(self)()

    def __reduce__(self):
        # Prefect ships the flow (and so its task runner) to Dask/Ray workers with each task:
        # they get a fresh, unstarted runner (a lock and a running cluster do not pickle).
        return (type(self), ())

    def inner(self) -> TaskRunner:
        """The configured runner, started on first use."""
        with self._lock:
            if self._inner is None:
                context = FlowRunContext.get()
                if context is None or context.flow is None:
                    raise RuntimeError("ConfigTaskRunner is used outside a flow run")
                bound = inspect.signature(context.flow.fn).bind_partial(**context.parameters)
                bound.apply_defaults()
                cfg = load_config(bound.arguments["config_path"], bound.arguments.get("overrides") or [])
                limit_heavy_stages(cfg.runtime.heavy_tasks)  # in this process (the threads runner's)
                self._inner = self._stack.enter_context(task_runner(cfg.runtime))
            return self._inner

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        return self.inner().submit(task, parameters, wait_for=wait_for, dependencies=dependencies)

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self._stack.__exit__(exc_type, exc_value, traceback)
        self._inner = None
        super().__exit__(exc_type, exc_value, traceback)
