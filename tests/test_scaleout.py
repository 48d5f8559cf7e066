"""Scale-out for real: the smoke pipeline on a local Dask cluster of two worker processes, its LLM
stages in shards of 2 cases (`runtime.shard_cases`: the teacher, the DPO rounds' pair sampling,
every explainer's generation), in the artifacts folder of the session's unsharded threads run
(`smoke_run`). The shards run in both workers; each merge writes the bytes of the unsharded
stage, so every other stage (the trainers, the judges, the evaluation) loads from that run's
cache; the Prefect API names every task run by its stage label. Slow: `make test-slow`."""

import json
import os
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter

from flows.console import planned_stages
from flows.pipeline import pipeline
from recxplain.config import load_config
from recxplain.stage import MANIFEST
from tests.smoke import LIGHTER, SMOKE, stage_digests
from tests.test_console import wait_for

MERGED = ["teacher_generate", "sample_pairs_r1", "sample_pairs_r2", "generate_explanations"]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_smoke_pipeline_in_shards_on_two_dask_workers_writes_the_content_of_the_threads_run(smoke_run):
    overrides = [f"runtime.artifacts_dir={smoke_run.artifacts}", *LIGHTER, "runtime.task_runner=dask",
                 "runtime.max_workers=2", "runtime.shard_cases=2"]
    state = pipeline(config_path=SMOKE, overrides=overrides, return_state=True)
    # Not state.result(): on a busy machine the client may time out setting the final state and
    # retry, and the API then answers with its own copy of the Completed state, which has no data.
    assert state.is_completed(), state
    run_dir = smoke_run.artifacts / "runs" / load_config(SMOKE, overrides).runtime.run_name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["flow_run_id"] == str(state.state_details.flow_run_id)  # this run's summary
    rows = summary["stages"]
    labels = [row["stage"] for row in rows]
    assert len(rows) == planned_stages(load_config(SMOKE, overrides), "recxplain-pipeline")
    shards = [label for label in labels if " shard " in label]
    # 6 training cases: the teacher and both rounds' sampling in 3 shards; 3 held-out cases: 2 per explainer
    assert len([label for label in shards if label.startswith(("teacher_generate", "sample_pairs_r"))]) == 9
    assert len([label for label in shards if label.startswith("generate_explanations[")]) == 14
    assert (smoke_run.artifacts / "dask").is_dir()  # the local cluster's scratch space

    # The shards and their merges ran; each merge wrote the bytes of the threads run's unsharded
    # stage, so every stage after it found its inputs unchanged and loaded from cache.
    states = {row["stage"]: row["state"] for row in rows}
    assert {label: states[label] for label in shards + MERGED} == {label: "Completed" for label in shards + MERGED}
    assert {s for label, s in states.items() if label not in shards + MERGED} == {"Cached"}, states
    digests = stage_digests(summary)
    assert {label: digests[label] for label in MERGED} == {label: smoke_run.digests[label] for label in MERGED}

    # The shards ran in the two worker processes, not in this one: their manifests say which.
    folders = {row["stage"]: Path(row["folder"]) for row in rows}
    pids = {json.loads((folders[label] / MANIFEST).read_text())["pid"] for label in shards + MERGED}
    assert len(pids) >= 2 and os.getpid() not in pids, pids

    # The workers reported to this run's Prefect API: a task run per stage, named by its label.
    with get_client(sync_client=True) as client:
        runs = FlowRunFilter(id={"any_": [state.state_details.flow_run_id]})
        names = wait_for(lambda: sorted(t.name for t in client.read_task_runs(flow_run_filter=runs)),
                         lambda found: len(found) >= len(rows))
    assert names == sorted(labels)
    assert "generate_explanations[sft] shard 2/2" in names and "sample_pairs_r1 shard 3/3" in names
