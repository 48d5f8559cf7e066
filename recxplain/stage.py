"""Turn a plain stage function into a cached, resumable Prefect task.

A stage function has the signature `fn(out: Path, **inputs) -> None` and writes its files into
`out`. Its keyword arguments are config sections (pydantic models, hashed by value), input
artifact folders (`Path`, or a dict of them, hashed by content) and `artifacts_dir` (not hashed).
`@reads` declares which fields of each config section it reads and which prompt templates it
renders: only those enter its key, and the stage gets sections that hold only those fields.

The key of a run is the hash of the stage name, the source of the stage's module (and of the
project modules it uses), the declared config fields, the declared templates' text and the
content of the input folders. Its output lives in `<artifacts>/<stage>/<key>/`:
- the function writes into `<key>.partial/`, which is renamed to `<key>/` only when it returns,
  so a killed run leaves no folder a later run would trust (and a partial folder keeps what a
  resumable stage, like training, needs to resume: its checkpoints);
- Prefect's cache record for the task is stored inside that folder (`_prefect_result`), so
  deleting an artifact also deletes its cache entry, and the stage runs again;
- downstream keys hash the content of the folder, so an overwritten artifact invalidates
  everything that depends on it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import shutil
import socket
import sys
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, task
from prefect.cache_policies import CachePolicy
from pydantic import BaseModel, ConfigDict, create_model

from recxplain.llm import release_models
from recxplain.prompts import read_templates, template_hash

# Bump to invalidate every stage at once (e.g. when the artifact layout changes).
LAYOUT_VERSION = "2"
MANIFEST = "_stage.json"
PREFECT_RECORD = "_prefect_result"
# Facts about one run of a stage (seconds, tokens per second, peak memory, API usage): a stage
# writes them here, beside its content, so that an identical rerun writes identical content.
RUN_FACTS = "run.json"
# Not part of an artifact's content: Prefect's record, training checkpoints kept for resume, the
# LLM response caches and the run facts.
NOT_CONTENT = {PREFECT_RECORD, "checkpoints", "cache", RUN_FACTS}


# (folder, every file's name, inode, size and mtime) -> content digest. A run computes each folder's
# digest several times (its own check, then once per downstream key); files are read once per
# process unless one is rewritten (new inode, size or mtime).
_DIGESTS: dict[tuple, str] = {}


def write_run_facts(out: Path, **facts: Any) -> None:
    """Add `facts` (seconds, throughput, peak memory, API usage) to `out/run.json`: what one run of
    a stage measured, kept beside its content and out of its digest."""
    path = Path(out) / RUN_FACTS
    known = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(known | facts, indent=2, default=str))


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


# ---------------------------------------------------------------------------------------------
# What a stage reads


@dataclass(frozen=True)
class Reads:
    """A stage's declaration (`@reads`): config argument -> the fields it reads; the templates it
    renders (dotted config paths naming a template, or a function of the stage's inputs that
    returns template names)."""

    fields: dict[str, tuple[str, ...]]
    templates: tuple[str, ...] | Callable[..., list[str]] = ()


def reads(templates: tuple[str, ...] | Callable[..., list[str]] = (), **fields: tuple[str, ...]) -> Callable:
    """Declare what a stage reads, e.g. `@reads(training=("base_model", "sft"), templates=("teacher.prompt",))`
    (`data=ALL`: every field of the section).

    Only the declared fields of each config section enter the stage's key, and the stage is
    called with sections holding only those fields (reading another one raises AttributeError),
    so that changing a field reruns exactly the stages that read it. The declared templates are
    read from `configs/prompts/` and passed as the stage's `templates` argument; their text is in
    the key. `templates` as a function gets the stage's (declared) config sections by name.
    """
    def declare(fn: Callable) -> Callable:
        fn.__reads__ = Reads({name: tuple(names) for name, names in fields.items()}, templates)
        return fn

    return declare


# `@reads(data=ALL)`: the stage reads every field of the section.
ALL = ("*",)


def declared(fn: Callable) -> Reads | None:
    return getattr(fn, "__reads__", None)


class _View(BaseModel):
    """A config section cut down to the fields a stage declares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            raise AttributeError(f"{type(self).__qualname__} has no field {name!r}: the stage reads only the fields "
                                 "its @reads declares") from None


@functools.cache
def _view_class(cls: type[BaseModel], fields: tuple[str, ...]) -> type[BaseModel]:
    unknown = [name for name in fields if name not in cls.model_fields]
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}: fix the stage's @reads")
    definitions = {name: (cls.model_fields[name].annotation, cls.model_fields[name]) for name in fields}
    view = create_model(cls.__name__, __base__=_View, __doc__=cls.__doc__, **definitions)
    view.__qualname__ = f"{cls.__qualname__}[{', '.join(fields)}]"
    return view


def project(section: BaseModel, fields: tuple[str, ...]) -> BaseModel:
    """`section` with only `fields` (a pydantic model of the same name, without the others)."""
    values = {name: getattr(section, name) for name in fields}
    return _view_class(type(section), tuple(fields)).model_construct(**values)


def _template_names(reads_: Reads, inputs: dict[str, Any]) -> list[str]:
    if callable(reads_.templates):
        return [name for name in reads_.templates(**inputs) if name]
    names = []
    for path in reads_.templates:
        section, *attrs = path.split(".")
        value = inputs.get(section)
        for attr in attrs:
            value = getattr(value, attr, None) if value is not None else None
        if value:
            names.append(value)
    return list(dict.fromkeys(names))


def stage_inputs(fn: Callable, inputs: dict[str, Any]) -> dict[str, Any]:
    """What `fn` gets of `inputs`: each declared section projected on its declared fields, and the
    declared templates' text as `templates` (see `reads`)."""
    reads_ = declared(fn)
    if reads_ is None:
        return dict(inputs)
    missing = sorted(set(reads_.fields) - set(inputs))
    if missing:
        raise TypeError(f"{fn.__name__} declares @reads of {missing}, which it was not given")
    undeclared = sorted(name for name, value in inputs.items()
                        if isinstance(value, BaseModel) and name not in reads_.fields)
    if undeclared:
        raise TypeError(f"{fn.__name__} was given config section(s) {undeclared} that its @reads does not declare")
    given = {name: project(value, reads_.fields[name])
             if name in reads_.fields and value is not None and reads_.fields[name] != ALL else value
             for name, value in inputs.items()}
    if reads_.templates:
        if "templates" in inputs:
            raise TypeError(f"{fn.__name__} reads its templates itself (@reads): do not pass templates=")
        given["templates"] = read_templates(*_template_names(reads_, given))
    return given


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
    so that a change in a helper the stage calls (a judge, a prompt renderer) reruns it.

    A package's submodules are not followed as its attributes: importing a submodule anywhere
    makes it one (`recxplain.llm.local` once a local model was loaded), and the key would depend
    on what the process imported before. A package's submodules count through the names it
    imports from them (`recxplain.llm.chat` through `ChatModel`)."""
    start = inspect.getmodule(fn)
    seen: dict[str, types.ModuleType] = {}
    todo = [start] if start else []
    while todo:
        module = todo.pop()
        if module.__name__ in seen:
            continue
        seen[module.__name__] = module
        for value in vars(module).values():
            if isinstance(value, types.ModuleType) and value.__name__.startswith(module.__name__ + "."):
                continue
            name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            if isinstance(name, str) and _project_module(name) and name not in seen and name in sys.modules:
                todo.append(sys.modules[name])
    return [seen[name] for name in sorted(seen)]


def code_version(fn: Callable) -> str:
    digest = hashlib.sha256()
    for module in code_modules(fn):
        digest.update(module.__name__.encode() + b"\0" + inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


def _key(name: str, code: str, given: dict[str, Any]) -> str:
    """The key of a stage called with `given` (`stage_inputs`' projection) under code version `code`."""
    described = {k: _describe(v) for k, v in sorted(given.items()) if k != "artifacts_dir"}
    text = json.dumps({"stage": name, "layout": LAYOUT_VERSION, "code": code, "inputs": described}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def stage_key(name: str, fn: Callable, inputs: dict[str, Any]) -> str:
    return _key(name, code_version(fn), stage_inputs(fn, inputs))


def run_stage(name: str, fn: Callable, artifacts_dir: Path, inputs: dict[str, Any]) -> Path:
    """Run `fn` into its content-addressed folder unless that folder is already complete."""
    # Projected, templates read and code hashed once: the key and the call see the same inputs.
    call, code = stage_inputs(fn, inputs), code_version(fn)
    key = _key(name, code, call)
    out = Path(artifacts_dir) / name / key
    if is_intact(out):
        return out
    if out.exists():  # altered after it was written, or left by a crash mid-rename: redo it
        shutil.rmtree(out)
    partial = out.with_name(f"{key}.partial")
    partial.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if "artifacts_dir" in inspect.signature(fn).parameters:
        call["artifacts_dir"] = Path(artifacts_dir)
    try:
        fn(partial, **call)
    finally:  # the models a stage loaded go with it: a long-lived worker does not keep every one
        release_models()
    manifest = {
        "stage": name,
        "key": key,
        "code": code,
        "seconds": round(time.perf_counter() - started, 3),
        "digest": _content_digest(partial),
        "inputs": {k: str(v) if isinstance(v, Path) else _describe(v) for k, v in call.items()
                   if k not in ("artifacts_dir", "templates")},
        # Which template text the stage rendered (its key holds it; its content need not).
        "templates": {name: template_hash(source) for name, source in (call.get("templates") or {}).items()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # Which process ran it: a Dask or Ray worker, or the flow's own (the thread runner).
        "host": socket.gethostname(),
        "pid": os.getpid(),
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


# Heavy stages (training, LLM generation) are tagged `heavy`; at most `heavy_tasks` of them run at
# once in one process: torch's thread pool is process-wide, so two would fight over the same cores.
# A lock in the process, not a Prefect tag limit: no wait for the server's polling between two
# stages, and workers of other processes (Dask) are not held back (docs/ARCHITECTURE.md).
HEAVY = "heavy"
_heavy_slots = threading.BoundedSemaphore(1)


def limit_heavy_stages(n: int) -> None:
    """Let at most `n` heavy stages run at once in this process (`runtime.heavy_tasks`)."""
    global _heavy_slots
    _heavy_slots = threading.BoundedSemaphore(n)


def heavy_slot() -> threading.BoundedSemaphore:
    # A function, so that a task shipped to a Dask worker refers to that process's lock.
    return _heavy_slots


def stage(fn: Callable, name: str | None = None, heavy: bool = False) -> Task:
    """Wrap a stage function into a Prefect task: `task(artifacts_dir, inputs) -> Path`.

    Submit it through `StageLog.submit` (flows/summary.py), which points Prefect's result storage
    at the artifacts root so cache records live inside the stage folders (`bind_task`). `heavy`:
    a stage that loads a torch model (see `limit_heavy_stages`).
    """
    name = name or fn.__name__

    def body(artifacts_dir: Path, inputs: dict[str, Any]) -> Path:
        with heavy_slot() if heavy else contextlib.nullcontext():
            return run_stage(name, fn, artifacts_dir, inputs)

    body.__name__ = name
    body.__doc__ = fn.__doc__
    return task(
        body,
        name=name,
        tags=[HEAVY] if heavy else None,
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
