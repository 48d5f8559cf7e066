"""The recxplain pipeline: one Prefect flow, each stage a cached task (README, "What `make flow` does").

    python -m flows.pipeline --config configs/default.yaml --set recommender.k=20

Each stage writes a content-addressed folder under `runtime.artifacts_dir/<stage>/<key>/`; a
second run with the same config loads every stage from cache, a changed config section reruns
that stage and what depends on it, and a killed run resumes at the stage that died. The run's
summary (what ran, what was cached, seconds per stage) and the report land in
`runtime.artifacts_dir/runs/<run_name>/`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import flows  # noqa: F401  (quiet offline Prefect settings, before prefect is imported)

# isort: split
from prefect import Task, flow
from prefect.futures import PrefectFuture

from arena.bundle import export_arena
from flows.reclaif import reclaif_stages
from flows.runners import ConfigTaskRunner
from flows.summary import StageLog, publish_run_summary
from recxplain.config import Config, load_config
from recxplain.discriminator import file_digest
from recxplain.explainers import explainer_names, student_explainers
from recxplain.judging import base_judge
from recxplain.schemas import read_cases
from recxplain.stage import stage
from tasks.cases import build_cases
from tasks.data import prepare_data, source_digest
from tasks.discriminator import train_discriminator
from tasks.evaluate import evaluate
from tasks.explain import generate_explanations, merge_explanations
from tasks.judge import judge_pairs
from tasks.pairs import merge_pairs, sample_pairs
from tasks.paths import mine_paths
from tasks.recommend import train_recommender
from tasks.report import write_report
from tasks.teacher import merge_teacher, teacher_generate
from tasks.train import train_dpo, train_orpo, train_sft

PREPARE_DATA = stage(prepare_data)
TRAIN_RECOMMENDER = stage(train_recommender)
MINE_PATHS = stage(mine_paths)
BUILD_CASES = stage(build_cases)
# heavy: loads a torch model (at most runtime.heavy_tasks of them at once in one process)
TEACHER_GENERATE = stage(teacher_generate, heavy=True)
TEACHER_SHARD = stage(teacher_generate, name="teacher_generate_shard", heavy=True)
MERGE_TEACHER = stage(merge_teacher, name="teacher_generate")
SAMPLE_PAIRS = stage(sample_pairs, heavy=True)
PAIRS_SHARD = stage(sample_pairs, name="sample_pairs_shard", heavy=True)
MERGE_PAIRS = stage(merge_pairs, name="sample_pairs")
JUDGE_PAIRS = stage(judge_pairs, heavy=True)
TRAIN_DISCRIMINATOR = stage(train_discriminator, heavy=True)
TRAIN_SFT = stage(train_sft, heavy=True)
TRAIN_ORPO = stage(train_orpo, heavy=True)
TRAIN_DPO = stage(train_dpo, heavy=True)
GENERATE_EXPLANATIONS = stage(generate_explanations, name="generate_explanations_shard", heavy=True)
MERGE_EXPLANATIONS = stage(merge_explanations, name="generate_explanations")
EVALUATE = stage(evaluate, heavy=True)
WRITE_REPORT = stage(write_report)
EXPORT_ARENA = stage(export_arena)


def evidence_stages(cfg: Config, log: StageLog) -> dict[str, Path]:
    """Stage 1 of every seed: data, recommender, and the evidence behind each recommendation."""
    data = log.run(PREPARE_DATA, data=cfg.data, source_digest=source_digest(cfg.data))
    recommender = log.run(TRAIN_RECOMMENDER, recommender=cfg.recommender, data=data)
    paths = log.run(MINE_PATHS, paths=cfg.paths, data=data, recommender=recommender)
    return {"data": data, "recommender": recommender, "paths": paths}


def shard_count(cases: Path, split: str, size: int) -> int:
    """How many shards of `size` cases (`runtime.shard_cases`; 0: one) the `split` cases make."""
    count = len(read_cases(Path(cases) / f"{split}.jsonl"))
    return -(-count // size) if size and count else 1


def sharded(log: StageLog, whole_task: Task, shard_task: Task, merge_task: Task, label: str, shards: int, size: int,
            **inputs) -> PrefectFuture:
    """One `shard_task` per shard of `size` cases (`label shard k/n`), each its own cached folder,
    joined in order by `merge_task` into the folder `whole_task` writes; `whole_task` alone when
    `shards` is 1."""
    if shards == 1:
        return log.submit(whole_task, label=label, **inputs)
    folders = [log.submit(shard_task, label=f"{label} shard {k + 1}/{shards}", shard=k, shard_cases=size, **inputs)
               for k in range(shards)]
    return log.submit(merge_task, label=label, shards=folders)


def feedback_stages(cfg: Config, log: StageLog, cases: Path) -> dict[str, PrefectFuture]:
    """AI feedback on the train cases: teacher explanations (SFT data) and judged teacher pairs.
    The LLM stages run per shard of `runtime.shard_cases` training cases when it is set."""
    size = cfg.runtime.shard_cases
    shards = shard_count(cases, "train", size)
    teacher = sharded(log, TEACHER_GENERATE, TEACHER_SHARD, MERGE_TEACHER, "teacher_generate", shards, size,
                      teacher=cfg.teacher, cases=cases)
    pairs_inputs = dict(pairs=cfg.pairs, teacher=cfg.teacher, training=cfg.training, cases=cases, student=None)
    if cfg.pairs.source == "teacher_samples":  # nothing sampled: one task reads the teacher's samples
        pairs = log.submit(SAMPLE_PAIRS, **pairs_inputs, teacher_samples=teacher)
    else:
        pairs = sharded(log, SAMPLE_PAIRS, PAIRS_SHARD, MERGE_PAIRS, "sample_pairs", shards, size,
                        **pairs_inputs, teacher_samples=None)
    preferences = log.submit(JUDGE_PAIRS, judge=base_judge(cfg.judge), cases=cases, pairs=pairs)
    return {"teacher": teacher, "pairs": pairs, "preferences": preferences}


def student_stages(cfg: Config, log: StageLog, cases: Path, feedback: dict) -> dict[str, PrefectFuture]:
    """SFT on the teacher, ORPO on the judged pairs (beside SFT and the rounds), then RecLAIF's
    rounds: round r samples two answers per case from the round r-1 student, the judge picks,
    DPO trains round r (validated on its own held-out pairs, or with `training.dpo.validate_on:
    teacher_pairs` on the judged teacher pairs ORPO holds out). Each round's judge_pairs is
    added to `feedback` as `preferences_rN` (the discriminator learns from every judged pair)."""
    students = {"sft": log.submit(TRAIN_SFT, training=cfg.training, sft=feedback["teacher"])}
    students["orpo"] = log.submit(TRAIN_ORPO, training=cfg.training, preferences=feedback["preferences"])
    current = students["sft"]
    student_pairs = cfg.pairs.model_copy(update={"source": "student"})
    size = cfg.runtime.shard_cases
    shards = shard_count(cases, "train", size)
    for r in range(1, cfg.training.rounds + 1):
        pairs = sharded(
            log, SAMPLE_PAIRS, PAIRS_SHARD, MERGE_PAIRS, f"sample_pairs_r{r}", shards, size,
            pairs=student_pairs, teacher=cfg.teacher, training=cfg.training, cases=cases, student=current,
        )
        preferences = log.submit(
            JUDGE_PAIRS, label=f"judge_pairs_r{r}", judge=base_judge(cfg.judge), cases=cases, pairs=pairs
        )
        feedback[f"preferences_r{r}"] = preferences
        teacher_pairs = feedback["preferences"] if cfg.training.dpo.validate_on == "teacher_pairs" else None
        current = log.submit(TRAIN_DPO, label=f"train_dpo_r{r}", training=cfg.training, preferences=preferences,
                             init=current, validation=teacher_pairs)
        students[f"dpo_r{r}"] = current
    return students


def explanation_stages(cfg: Config, log: StageLog, cases: Path, students: dict) -> PrefectFuture:
    """One generate_explanations task per explainer and shard of `runtime.shard_cases` held-out
    cases (each its own cached folder: a failed shard reruns alone), merged in order."""
    shards = shard_count(cases, "eval", cfg.runtime.shard_cases)
    folders = []
    for name in explainer_names(cfg.evaluation, cfg.training):
        for k in range(shards):
            label = f"generate_explanations[{name}]" + (f" shard {k + 1}/{shards}" if shards > 1 else "")
            folders.append(log.submit(
                GENERATE_EXPLANATIONS, label=label,
                evaluation=cfg.evaluation, teacher=cfg.teacher, training=cfg.training, cases=cases,
                students={name: students[name]} if name in students else {}, explainer=name, shard=k,
                shard_cases=cfg.runtime.shard_cases,
            ))
    return log.submit(MERGE_EXPLANATIONS, evaluation=cfg.evaluation, shards=folders)


def evaluation_stages(cfg: Config, log: StageLog, cases: Path, students: dict,
                      judged: dict | None = None, paths: Path | None = None) -> dict[str, PrefectFuture]:
    """Every explainer on the held-out cases, every metric, the report and the arena bundle.
    `judged`: folders of judged pairs (`preferences`, `preferences_rN`), which the discriminator
    learns from (`judge.kind: discriminator`); `paths`: the mine_paths folder, whose path quality
    the report shows. Folders may be futures of stages submitted before."""
    wanted = {name: students[name] for name in student_explainers(cfg.evaluation, cfg.training)}
    explanations = explanation_stages(cfg, log, cases, wanted)
    out: dict[str, PrefectFuture] = {}
    if cfg.judge.kind == "discriminator":
        d = cfg.judge.discriminator
        folders = {name: folder for name, folder in (judged or {}).items() if name.startswith("preferences")}
        if not folders:
            raise ValueError("judge.kind 'discriminator' needs judged pairs (judge_pairs folders) to learn from")
        # The explanations and the votes file enter the key only when there are votes to read.
        voting = {"explanations": explanations, "votes_digest": file_digest(d.arena_votes)} if d.arena_votes else {}
        out["discriminator"] = log.submit(
            TRAIN_DISCRIMINATOR, judge=cfg.judge, cases=cases, judged=folders, **voting
        )
    metrics = log.submit(
        EVALUATE, evaluation=cfg.evaluation, judge=cfg.judge, cases=cases, explanations=explanations,
        **({"discriminator": out["discriminator"]} if "discriminator" in out else {}),
    )
    report = log.submit(
        WRITE_REPORT, evaluation=cfg.evaluation, metrics=metrics, explanations=explanations, cases=cases,
        students=wanted, paths=paths,
    )
    arena = log.submit(EXPORT_ARENA, arena=cfg.arena, cases=cases, explanations=explanations, evaluation=metrics)
    return out | {"explanations": explanations, "evaluate": metrics, "report": report, "arena": arena}


@flow(name="recxplain-pipeline", log_prints=True, task_runner=ConfigTaskRunner())
def pipeline(config_path: str = "configs/default.yaml", overrides: list[str] | None = None) -> str:
    """Run every stage for one config; return the folder of the run's summary and report."""
    cfg = load_config(config_path, overrides or [])
    log = StageLog(cfg.runtime.artifacts_dir)
    artifacts = evidence_stages(cfg, log)
    if cfg.task == "recommend":  # RecLAIF: the LLM itself recommends (flows/reclaif.py)
        artifacts |= reclaif_stages(cfg, log, artifacts)
        return str(publish_run_summary(cfg, config_path, overrides or [], log, artifacts))
    artifacts["cases"] = log.run(
        BUILD_CASES, cases=cfg.cases, data=artifacts["data"], recommender=artifacts["recommender"],
        paths=artifacts["paths"],
    )
    feedback = feedback_stages(cfg, log, artifacts["cases"])
    students = student_stages(cfg, log, artifacts["cases"], feedback)
    artifacts |= feedback | students | evaluation_stages(cfg, log, artifacts["cases"], students, judged=feedback,
                                                                 paths=artifacts["paths"])
    artifacts = log.folders(artifacts)  # every stage submitted: wait for them all
    run_dir = publish_run_summary(cfg, config_path, overrides or [], log, artifacts)
    return str(run_dir)


def main(argv: list[str] | None = None) -> int:
    from flows.cli import run_flow  # the shared command line of every flow (--config, --set)

    return run_flow(pipeline, argv, prog="python -m flows.pipeline", description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
