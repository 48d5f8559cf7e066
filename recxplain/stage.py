"""Turn a plain stage function into a cached, resumable Prefect task.

A stage function has the signature `fn(out: Path, **inputs) -> None` and writes its files into
`out`. Its keyword arguments are config sections (pydantic models, hashed by value), input
artifact folders (`Path`, or a dict of them, hashed by content) and `artifacts_dir` (not hashed).

The key of a run is the hash of the stage name, the source of the stage's module, the config
sections and the content of the input folders. Its output lives in `<artifacts>/<stage>/<key>/`:
- the function writes into `<key>.partial/`, which is renamed to `<key>/` only when it returns,
  so a killed run leaves no folder a later run would trust (and a partial folder keeps what a
  resumable stage, like training, needs to resume: its checkpoints);
- Prefect's cache record for the task is stored inside that folder (`_prefect_result`), so
  deleting an artifact also deletes its cache entry, and the stage runs again;
- downstream keys hash the content of the folder, so an overwritten artifact invalidates
  everything that depends on it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import CachePolicy
from pydantic import BaseModel

# Bump to invalidate every stage at once (e.g. when the artifact layout changes).
LAYOUT_VERSION = "1"
MANIFEST = "_stage.json"
PREFECT_RECORD = "_prefect_result"
# Not part of an artifact's content: Prefect's record and training checkpoints kept for resume.
NOT_CONTENT = {PREFECT_RECORD, "checkpoints"}


# (folder, every file's name, inode, size and mtime) -> content digest. A run computes each folder's
# digest several times (its own check, then once per downstream key); files are read once per
# process unless one is rewritten (new inode, size or mtime).
_DIGESTS: dict[tuple, str] = {}


def _stat(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_size, info.st_mtime_ns


def _content_digest(folder: Path) -> str:
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if relative.parts[0] not in NOT_CONTENT and relative.name != MANIFEST:
            files.append((path, relative))
    stats = (str(folder.resolve()),) + tuple((str(r), *_stat(p)) for p, r in files)
    if stats not in _DIGESTS:
        digest = hashlib.sha256()
        for path, relative in files:
            digest.update(str(relative).encode() + b"\0")
            with open(path, "rb") as fh:
                digest.update(hashlib.file_digest(fh, "sha256").digest())
        _DIGESTS[stats] = digest.hexdigest()
    return _DIGESTS[stats]


def is_intact(folder: Path) -> bool:
    """True when `folder` is a completed stage artifact whose files are as the stage wrote them."""
    manifest = Path(folder) / MANIFEST
    if not manifest.exists():
        return False
    return json.loads(manifest.read_text()).get("digest") == _content_digest(Path(folder))


def folder_digest(folder: Path) -> str:
    """Content hash of a completed stage artifact (what downstream cache keys see)."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        raise FileNotFoundError(f"{folder}: not a completed stage artifact (no {MANIFEST})")
    return _content_digest(folder)


def _describe(value: Any) -> Any:
    """What of an argument goes into the key: configs by value, folders by content."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return {"folder_digest": folder_digest(value)}
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_describe(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"stage argument of type {type(value).__name__} cannot be part of a cache key")


# Packages whose source counts as a stage's code. recxplain.config is left out: a stage's key
# already holds its config values, and a docstring edit there should not rerun every stage.
PROJECT_PACKAGES = ("recxplain", "tasks", "arena", "flows")
NOT_CODE = {"recxplain.config", "recxplain.stage"}


def _project_module(name: str | None) -> bool:
    return bool(name) and name.split(".")[0] in PROJECT_PACKAGES and name not in NOT_CODE


def code_modules(fn: Callable) -> list[types.ModuleType]:
    """The stage's module and every project module it uses, transitively (through its globals),
    so that a change in a helper the stage calls (a judge, a prompt renderer) reruns it."""
    start = inspect.getmodule(fn)
    seen: dict[str, types.ModuleType] = {}
    todo = [start] if start else []
    while todo:
        module = todo.pop()
        if module.__name__ in seen:
            continue
        seen[module.__name__] = module
        for value in vars(module).values():
            name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            if isinstance(name, str) and _project_module(name) and name not in seen and name in sys.modules:
                todo.append(sys.modules[name])
    return [seen[name] for name in sorted(seen)]


def code_version(fn: Callable) -> str:
    digest = hashlib.sha256()
    for module in code_modules(fn):
        digest.update(module.__name__.encode() + b"\0" + inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


def stage_key(name: str, fn: Callable, inputs: dict[str, Any]) -> str:
    described = {k: _describe(v) for k, v in sorted(inputs.items()) if k != "artifacts_dir"}
    text = json.dumps(
        {"stage": name, "layout": LAYOUT_VERSION, "code": code_version(fn), "inputs": described},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def run_stage(name: str, fn: Callable, artifacts_dir: Path, inputs: dict[str, Any]) -> Path:
    """Run `fn` into its content-addressed folder unless that folder is already complete."""
    key = stage_key(name, fn, inputs)
    out = Path(artifacts_dir) / name / key
    if is_intact(out):
        return out
    if out.exists():  # altered after it was written, or left by a crash mid-rename: redo it
        shutil.rmtree(out)
    partial = out.with_name(f"{key}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    call = dict(inputs)
    if "artifacts_dir" in inspect.signature(fn).parameters:
        call["artifacts_dir"] = Path(artifacts_dir)
    fn(partial, **call)
    manifest = {
        "stage": name,
        "key": key,
        "code": code_version(fn),
        "seconds": round(time.perf_counter() - started, 3),
        "digest": _content_digest(partial),
        "inputs": {k: str(v) if isinstance(v, Path) else _describe(v) for k, v in inputs.items()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    partial.rename(out)
    return out


@dataclass
class StageCachePolicy(CachePolicy):
    """Prefect cache key = stage key; the record is stored inside the stage's own folder."""

    stage: str = ""
    fn: Callable | None = None

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        try:
            key = stage_key(self.stage, self.fn, inputs["inputs"])
        except FileNotFoundError:  # an input folder vanished: run (and fail clearly) uncached
            return None
        out = Path(inputs["artifacts_dir"]) / self.stage / key
        if out.exists() and not is_intact(out):
            return None  # altered artifact: never reported as cached; run_stage redoes it
        return f"{self.stage}/{key}/{PREFECT_RECORD}"


def stage(fn: Callable, name: str | None = None) -> Task:
    """Wrap a stage function into a Prefect task: `task(artifacts_dir, inputs) -> Path`.

    Call it through `run_task(task, artifacts_dir, label, **inputs)`, which points Prefect's
    result storage at the artifacts root so cache records live inside the stage folders.
    """
    name = name or fn.__name__

    def body(artifacts_dir: Path, inputs: dict[str, Any]) -> Path:
        return run_stage(name, fn, artifacts_dir, inputs)

    body.__name__ = name
    body.__doc__ = fn.__doc__
    return task(
        body,
        name=name,
        cache_policy=StageCachePolicy(stage=name, fn=fn),
        persist_result=True,
        # Results are the artifact paths; a pickle of a Path is tiny and stable.
        result_serializer="pickle",
    )


def bind_task(stage_task: Task, artifacts_dir: Path, label: str | None = None) -> Task:
    """The task with Prefect's result storage at the artifacts root (cache records live inside
    the stage folders) and its task runs named by `label` (default: the stage name), e.g.
    `sample_pairs_r1` instead of Prefect's `sample_pairs-63f`."""
    run_name = (label or stage_task.name).replace("{", "{{").replace("}", "}}")  # a format string
    return stage_task.with_options(result_storage=Path(artifacts_dir).resolve(), task_run_name=run_name)


def run_task(stage_task: Task, artifacts_dir: Path, label: str | None = None, **inputs: Any):
    """Run a stage task in the current flow; returns its final Prefect state."""
    return bind_task(stage_task, artifacts_dir, label)(Path(artifacts_dir), inputs, return_state=True)
