"""Scale-out for real: the smoke pipeline on a local Dask cluster of two worker processes, its LLM
stages in shards of 2 cases (`runtime.shard_cases`: the teacher, the DPO rounds' pair sampling,
every explainer's generation), runs the shards in both workers, names every task run by its
stage label in the Prefect API, and writes exactly the content of the unsharded threads run
(the session's cold `smoke_run`). Slow: `make test-slow`."""

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
    overrides = [f"runtime.artifacts_dir={artifacts}", *LIGHTER, "runtime.task_runner=dask", "runtime.max_workers=2",
                 "runtime.shard_cases=2"]
    state = pipeline(config_path=SMOKE, overrides=overrides, return_state=True)
    summary = json.loads((Path(state.result()) / "summary.json").read_text())
    rows = summary["stages"]
    assert {row["state"] for row in rows} == {"Completed"}, rows
    assert (artifacts / "dask").is_dir()  # the local cluster's scratch space
    labels = [row["stage"] for row in rows]
    shards = [label for label in labels if " shard " in label]
    # 6 training cases: the teacher and both rounds' sampling in 3 shards; 3 held-out cases: 2 per explainer
    assert len([label for label in shards if label.startswith(("teacher_generate", "sample_pairs_r"))]) == 9
    assert len([label for label in shards if label.startswith("generate_explanations[")]) == 14
    # The threads run ran one task per explainer where this one ran shards; every other stage is
    # in both runs under the same label, the merges included.
    threads = [row["stage"] for row in smoke_run.summary["stages"]]
    per_explainer = [label for label in threads if label.startswith("generate_explanations[")]
    assert [label for label in labels if label not in shards] == [label for label in threads
                                                                    if label not in per_explainer]

    # Every stage wrote the bytes the threads run wrote (run facts, caches and manifests aside),
    # but the trainers: their adapter_config.json, adapter/README.md and training.json name the
    # base model by its path under the artifacts folder. Their weights are the same bytes; and
    # so is everything the students then wrote.
    digests = stage_digests(summary)
    common = [label for label in threads if label in digests]
    trained = [label for label in common if label.startswith("train_") and label != "train_recommender"]
    assert {k: digests[k] for k in common if k not in trained} == \
        {k: smoke_run.digests[k] for k in common if k not in trained}
    folders = {row["stage"]: Path(row["folder"]) for row in rows}
    threads_folders = {row["stage"]: Path(row["folder"]) for row in smoke_run.summary["stages"]}
    for label in trained:
        weights = "adapter/adapter_model.safetensors"
        assert (folders[label] / weights).read_bytes() == (threads_folders[label] / weights).read_bytes(), label

    # Stages ran in the two worker processes, not in this one: the shards' manifests say which.
    pids = {json.loads((folders[label] / MANIFEST).read_text())["pid"] for label in shards}
    everywhere = {json.loads((Path(row["folder"]) / MANIFEST).read_text())["pid"] for row in rows}
    assert len(pids) >= 2 and os.getpid() not in everywhere, (pids, everywhere)

    # The workers reported to this run's Prefect API: a task run per stage, named by its label.
    with get_client(sync_client=True) as client:
        runs = FlowRunFilter(id={"any_": [state.state_details.flow_run_id]})
        names = wait_for(lambda: sorted(t.name for t in client.read_task_runs(flow_run_filter=runs)),
                         lambda found: len(found) >= len(rows))
    assert names == sorted(labels)
    assert "generate_explanations[sft] shard 2/2" in names and "sample_pairs_r1 shard 3/3" in names
