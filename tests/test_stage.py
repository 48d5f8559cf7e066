"""The caching contract of recxplain.stage, through a real Prefect flow (temporary local API)."""

import json
import shutil
from pathlib import Path

import pytest
from prefect import flow

from flows.summary import StageLog
from recxplain.config import TeacherConfig, TrainingConfig
from recxplain.prompts import read_templates
from recxplain.stage import ALL, MANIFEST, folder_digest, reads, stage, stage_inputs, stage_key, write_run_facts
from tests import stage_toys
from tests.stage_toys import CALLS, FAIL_ONCE, Numbers

MAKE = stage(stage_toys.make_numbers)
SCALE = stage(stage_toys.scale_numbers)


@flow
def toy_flow(root: str, start: int = 1, factor: int = 2) -> tuple[list[dict], str]:
    log = StageLog(Path(root))
    made = log.run(MAKE, numbers=Numbers(start=start))
    scaled = log.run(SCALE, numbers=Numbers(factor=factor), source=made)
    return log.rows, str(scaled)


def states(rows):
    return {r["stage"]: r["state"] for r in rows}


def test_second_run_executes_no_stage_and_changes_rerun_only_downstream(tmp_path):
    CALLS.clear()
    rows, scaled = toy_flow(str(tmp_path))
    assert CALLS == ["make_numbers", "scale_numbers"]
    assert json.loads((Path(scaled) / "scaled.json").read_text()) == [2, 4, 6]

    CALLS.clear()
    rows, again = toy_flow(str(tmp_path))
    assert CALLS == []
    assert states(rows) == {"make_numbers": "Cached", "scale_numbers": "Cached"}
    assert again == scaled

    # Only the downstream section changed: upstream stays cached.
    CALLS.clear()
    rows, tripled = toy_flow(str(tmp_path), factor=3)
    assert CALLS == ["scale_numbers"]
    assert json.loads((Path(tripled) / "scaled.json").read_text()) == [3, 6, 9]


def test_deleted_or_altered_artifact_is_never_reported_cached(tmp_path):
    CALLS.clear()
    rows, scaled = toy_flow(str(tmp_path))
    made = Path(rows[0]["folder"])

    shutil.rmtree(scaled)
    CALLS.clear()
    rows, _ = toy_flow(str(tmp_path))
    assert CALLS == ["scale_numbers"]
    assert states(rows)["make_numbers"] == "Cached"

    # Overwrite the upstream artifact: it is redone, and so is everything that read it.
    (made / "numbers.json").write_text("[100, 200, 300]")
    CALLS.clear()
    rows, scaled = toy_flow(str(tmp_path))
    assert states(rows)["make_numbers"] != "Cached"
    assert json.loads((Path(scaled) / "scaled.json").read_text()) == [2, 4, 6]


def test_failed_stage_resumes_without_recomputing_upstream(tmp_path):
    CALLS.clear()
    FAIL_ONCE.add("scale_numbers")
    with pytest.raises(RuntimeError, match="on purpose"):
        toy_flow(str(tmp_path), start=5)
    assert not list((tmp_path / "scale_numbers").glob("*/" + MANIFEST))  # nothing half-trusted

    CALLS.clear()
    rows, scaled = toy_flow(str(tmp_path), start=5)
    assert CALLS == ["scale_numbers"]
    assert states(rows)["make_numbers"] == "Cached"
    assert json.loads((Path(scaled) / "scaled.json").read_text()) == [10, 12, 14]


def test_digest_ignores_prefect_record_and_checkpoints(tmp_path):
    folder = tmp_path / "stage" / "key"
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text("{}")
    (folder / "data.txt").write_text("x")
    before = folder_digest(folder)
    (folder / "_prefect_result").write_text("record")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "optimizer.pt").write_text("state")
    assert folder_digest(folder) == before
    (folder / "data.txt").write_text("y")
    assert folder_digest(folder) != before


def test_digest_ignores_run_facts_and_llm_caches(tmp_path):
    folder = tmp_path / "stage" / "key"
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_text("{}")
    (folder / "answers.json").write_text("[]")
    before = folder_digest(folder)
    write_run_facts(folder, seconds=1.5)
    write_run_facts(folder, peak_memory_mb=10)  # facts add up
    (folder / "cache").mkdir()
    (folder / "cache" / "teacher.sqlite").write_text("responses")
    assert folder_digest(folder) == before
    assert json.loads((folder / "run.json").read_text()) == {"seconds": 1.5, "peak_memory_mb": 10}


@reads(training=("base_model", "sft"), teacher=ALL, templates=("teacher.prompt",))
def toy_trainer(out: Path, *, training: TrainingConfig, teacher: TeacherConfig, templates: dict[str, str]) -> None:
    out.joinpath("seen.txt").write_text(f"{training.base_model} {training.sft.max_steps} {teacher.best_of}")
    training.dpo  # noqa: B018  (not declared: raises)


def test_reads_keys_only_the_declared_fields_and_templates(tmp_path, monkeypatch):
    inputs = {"training": TrainingConfig(), "teacher": TeacherConfig()}
    key = stage_key("toy", toy_trainer, inputs)
    # an undeclared field of a declared section: same key
    assert stage_key("toy", toy_trainer, inputs | {"training": TrainingConfig(dpo={"max_steps": 3})}) == key
    # a declared field, a field of a section declared whole: new keys
    assert stage_key("toy", toy_trainer, inputs | {"training": TrainingConfig(sft={"max_steps": 3})}) != key
    assert stage_key("toy", toy_trainer, inputs | {"teacher": TeacherConfig(best_of=2)}) != key
    # the stage gets the declared template's text, and that text is in the key
    given = stage_inputs(toy_trainer, inputs)
    assert given["templates"] == read_templates("explain_seed.j2")
    import recxplain.stage

    monkeypatch.setattr(recxplain.stage, "read_templates", lambda *names: {n: "edited" for n in names})
    assert stage_key("toy", toy_trainer, inputs) != key
    # the stage sees only what it declared
    (tmp_path / "out").mkdir()
    with pytest.raises(AttributeError, match=r"TrainingConfig\[base_model, sft\] has no field 'dpo'"):
        toy_trainer(tmp_path / "out", **given)
    assert (tmp_path / "out" / "seen.txt").read_text() == "smollm2 12 4"
    with pytest.raises(TypeError, match="does not declare"):
        stage_inputs(toy_trainer, inputs | {"pairs": TeacherConfig()})
    with pytest.raises(TypeError, match="do not pass templates="):
        stage_inputs(toy_trainer, inputs | {"templates": {}})


def test_code_version_covers_the_project_helpers_a_stage_uses():
    from recxplain.stage import code_modules
    from tasks.pairs import sample_pairs
    from tasks.teacher import teacher_generate

    names = [m.__name__ for m in code_modules(teacher_generate)]
    # the checks that pick its best-of-n answers, the prompt renderer, the loader it shares with sample_pairs
    assert {"tasks.teacher", "recxplain.checks", "recxplain.prompts", "recxplain.teaching"} <= set(names)
    assert "recxplain.config" not in names  # configs are in the key by value
    # sample_pairs: the same shared loader, and the student model mapping
    assert {"tasks.pairs", "recxplain.teaching", "recxplain.models"} <= {m.__name__ for m in code_modules(sample_pairs)}


def test_code_version_does_not_depend_on_the_providers_imported_before():
    """Importing a submodule makes it an attribute of its package: a stage that uses `recxplain.llm`
    must get the same key whichever LLM provider this process happened to import first."""
    import importlib

    from recxplain.stage import code_modules, code_version
    from tasks.teacher import teacher_generate

    before = code_version(teacher_generate)
    importlib.import_module("recxplain.llm.openai_api")
    names = [m.__name__ for m in code_modules(teacher_generate)]
    assert {"recxplain.llm", "recxplain.llm.chat"} <= set(names)  # the loader and the chat wrapper count
    assert "recxplain.llm.openai_api" not in names
    assert code_version(teacher_generate) == before


@pytest.mark.slow
def test_kill_9_mid_stage_resumes_at_that_stage(tmp_path):
    """A run killed with SIGKILL inside a stage leaves only a .partial folder; the next run
    loads the finished upstream stage from cache and redoes the killed one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parent.parent
    script = f"from tests.test_stage import toy_flow; print(toy_flow({str(tmp_path)!r}, start=7))"
    env = dict(os.environ, TOY_SLEEP="600")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=root, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob("scale_numbers/*.partial/started")):
            assert time.monotonic() < deadline and process.poll() is None, "the stage never started"
            time.sleep(0.5)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    assert not list(tmp_path.glob("scale_numbers/*/" + MANIFEST))

    CALLS.clear()
    rows, scaled = toy_flow(str(tmp_path), start=7)
    assert states(rows) == {"make_numbers": "Cached", "scale_numbers": "Completed"}
    assert CALLS == ["scale_numbers"]
    assert json.loads((Path(scaled) / "scaled.json").read_text()) == [14, 16, 18]
