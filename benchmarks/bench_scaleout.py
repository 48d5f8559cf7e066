"""Scale-out: explanation generation of 16 held-out cases with the embedded model (SmolLM2-135M,
greedy, 48 new tokens), as the pipeline runs it (`flows.pipeline.explanation_stages`: one
generate_explanations task per shard of `runtime.shard_cases` cases, then the merge), on a local
Dask cluster, side by side in one run.

Three runs: 1 worker of 1 torch thread, 2 workers of 1 torch thread each (the ratio of process
fan-out alone: the issue's target), and 1 worker with every core's torch threads (what the
pipeline's local cluster gives a single worker, flows/runners.py: cores // workers), so that the
fan-out is also compared with one process using the whole machine.
Timed: from the first shard submitted to the merge done, with the workers already started and
the model loaded in each (their start-up, paid once per worker process in a pipeline run, is
printed apart); every run in a fresh artifacts
folder (nothing cached but the embedded model's conversion, done before), so each shard loads
the model as it would in the pipeline. The three
merges must be byte-identical.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_scaleout.py [--cases 16] [--shard-cases 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flows  # noqa: E402,F401  (quiet offline Prefect settings)

# isort: split
from prefect import flow  # noqa: E402
from prefect.context import FlowRunContext  # noqa: E402

from flows.pipeline import explanation_stages  # noqa: E402
from flows.runners import ConfigTaskRunner  # noqa: E402
from flows.summary import StageLog  # noqa: E402
from recxplain.config import load_config  # noqa: E402
from recxplain.llm.local import load_local_model  # noqa: E402
from recxplain.models import resolve_model  # noqa: E402
from recxplain.schemas import write_cases  # noqa: E402
from recxplain.stage import run_stage  # noqa: E402
from tests.test_explain import make_case  # noqa: E402

OCCUPATIONS = ["student", "engineer", "writer", "educator", "programmer", "librarian", "artist", "doctor"]


@flow(name="bench-scaleout", task_runner=ConfigTaskRunner())
def explain(config_path: str, overrides: list[str], cases: str) -> tuple[float, float, Path]:
    """(seconds to start the workers and load the model in each, seconds of generation and merge, the merged folder)."""
    cfg = load_config(config_path, overrides)
    started = time.perf_counter()
    runner = FlowRunContext.get().task_runner.inner()  # starts the local cluster
    runner.client.wait_for_workers(cfg.runtime.max_workers, timeout=300)
    # Each worker process loads the model once and keeps it for every later shard (as in a
    # pipeline run, where a worker generates for many stages): loaded here, before the clock.
    runner.client.run(load_local_model, resolve_model("smollm2", cfg.runtime.artifacts_dir), None, "float32", "cpu")
    ready = time.perf_counter()
    log = StageLog(cfg.runtime.artifacts_dir)
    merged = log.folders({"explanations": explanation_stages(cfg, log, Path(cases), {})})["explanations"]
    return ready - started, time.perf_counter() - ready, merged


def main() -> None:
    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)  # the cluster's start and stop lines
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--shard-cases", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))

    def build_cases(out: Path) -> None:  # a stage folder, as build_cases writes it
        write_cases([make_case(f"{u}-3", "FM"[u % 2], 18 + 3 * u, OCCUPATIONS[u % len(OCCUPATIONS)])
                     for u in range(1, args.cases + 1)], out / "eval.jsonl")

    cases = run_stage("bench_cases", build_cases, work, {})
    config = work / "scaleout.yaml"
    config.write_text(
        "evaluation: {explainers: [base], attribute_prediction: false, "
        f"sampling: {{max_new_tokens: {args.max_new_tokens}, temperature: 0.0}}}}\n"
        f"runtime: {{task_runner: dask, shard_cases: {args.shard_cases}}}\n"
    )
    print(f"{args.cases} cases, shards of {args.shard_cases}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    seconds, merged = {}, {}
    cores = os.cpu_count() or 1
    for workers, threads in ((1, 1), (2, 1), (1, cores)):
        folder = work / f"artifacts-{workers}x{threads}"
        resolve_model("smollm2", folder)  # the embedded model's conversion, once per artifacts folder, not timed
        overrides = [f"runtime.artifacts_dir={folder}", f"runtime.max_workers={workers}"]
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the local cluster passes it on instead of cores // workers
        run = (workers, threads)
        start, seconds[run], merged[run] = explain(str(config), overrides, str(cases))
        print(f"{workers} worker(s) x {threads} torch thread(s): {seconds[run]:.1f} s "
              f"(workers started, model loaded in {start:.1f} s)", flush=True)
    same = len({(folder / "explanations.parquet").read_bytes() for folder in merged.values()}) == 1
    print(f"ratio 2 workers / 1 worker, 1 thread each: {seconds[2, 1] / seconds[1, 1]:.2f} (target <= 0.65); "
          f"2 workers x 1 thread / 1 worker x {cores} threads: {seconds[2, 1] / seconds[1, cores]:.2f}; "
          f"merged explanations identical: {same}; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
