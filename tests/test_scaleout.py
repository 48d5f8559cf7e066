"""Scale-out for real: the smoke pipeline on a local Dask cluster of two single-threaded worker
processes runs its stages (generate_explanations: one task per explainer) in both workers, names
every task run by its stage label in the Prefect API, and writes exactly the content of the
threads run (the session's cold `smoke_run`). Slow: `make test-slow`."""

import json
import os
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter

from flows.pipeline import pipeline
from recxplain.stage import MANIFEST
from tests.smoke import LIGHTER, SMOKE, stage_digests
from tests.test_console import wait_for


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_smoke_pipeline_on_two_dask_workers_writes_the_content_of_the_threads_run(smoke_run, tmp_path):
    artifacts = tmp_path / "artifacts"
    overrides = [f"runtime.artifacts_dir={artifacts}", *LIGHTER, "runtime.task_runner=dask", "runtime.max_workers=2"]
    state = pipeline(config_path=SMOKE, overrides=overrides, return_state=True)
    summary = json.loads((Path(state.result()) / "summary.json").read_text())
    rows = summary["stages"]
    assert [row["stage"] for row in rows] == [row["stage"] for row in smoke_run.summary["stages"]]
    assert {row["state"] for row in rows} == {"Completed"}, rows
    assert (artifacts / "dask").is_dir()  # the local cluster's scratch space

    # Every stage wrote the bytes the threads run wrote (run facts, caches and manifests aside),
    # but the trainers: their adapter_config.json, adapter/README.md and training.json name the
    # base model by its path under the artifacts folder, and peft writes target_modules in the
    # order of a Python set (PYTHONHASHSEED: Dask's workers fix it, a command line does not).
    # Their weights are the same bytes; and so is everything the students then wrote.
    digests = stage_digests(summary)
    trained = [label for label in digests if label.startswith("train_") and label != "train_recommender"]
    assert {k: v for k, v in digests.items() if k not in trained} == \
        {k: v for k, v in smoke_run.digests.items() if k not in trained}
    folders = {row["stage"]: Path(row["folder"]) for row in rows}
    threads_folders = {row["stage"]: Path(row["folder"]) for row in smoke_run.summary["stages"]}
    for label in trained:
        weights = "adapter/adapter_model.safetensors"
        assert (folders[label] / weights).read_bytes() == (threads_folders[label] / weights).read_bytes(), label

    # Stages ran in the two worker processes, not in this one: the shards' manifests say which.
    shards = [row for row in rows if row["stage"].startswith("generate_explanations[")]
    assert len(shards) == 7
    pids = {json.loads((Path(row["folder"]) / MANIFEST).read_text())["pid"] for row in shards}
    everywhere = {json.loads((Path(row["folder"]) / MANIFEST).read_text())["pid"] for row in rows}
    assert len(pids) >= 2 and os.getpid() not in everywhere, (pids, everywhere)

    # The workers reported to this run's Prefect API: a task run per stage, named by its label.
    with get_client(sync_client=True) as client:
        runs = FlowRunFilter(id={"any_": [state.state_details.flow_run_id]})
        names = wait_for(lambda: sorted(t.name for t in client.read_task_runs(flow_run_filter=runs)),
                         lambda found: len(found) >= len(rows))
    assert names == sorted(row["stage"] for row in rows)
    assert "generate_explanations[sft]" in names and "sample_pairs_r1" in names
