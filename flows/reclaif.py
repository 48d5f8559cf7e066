"""`task: recommend`: the RecLAIF stages (tasks/reclaif/) after the evidence stages.

flows/pipeline.py calls `reclaif_stages(cfg, log, evidence)` when `cfg.task == "recommend"`:

    candidate sets -> teacher answers (reclaif.teacher: an LLM, or the classic recommender written
    in RecLAIF's format) -> SFT -> per DPO round r (RecLAIF Algorithm 1): two
    answers per train set from the round r-1 student -> judge -> DPO -> the round r student
    -> every LLM recommender answers the eval sets -> comparison table (classic baselines vs
    base LLM vs SFT vs DPO rounds), written as markdown + parquet and published as a Prefect
    table artifact (`reclaif-comparison`) -> the run's report (`report`: report.html / .md,
    copied to runs/<run_name>/ by the run summary).

A round whose judge keeps no pair trains nothing: its student is the previous one (logged).
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.summary import StageLog
from recxplain.config import Config
from recxplain.reclaif.evaluation import student_recommenders
from recxplain.reclaif.judge import kept_preferences
from recxplain.stage import stage
from tasks.reclaif.candidates import build_candidate_sets
from tasks.reclaif.evaluate import reclaif_evaluate
from tasks.reclaif.judge import reclaif_judge_pairs
from tasks.reclaif.pairs import reclaif_sample_pairs
from tasks.reclaif.recommend import reclaif_recommend
from tasks.reclaif.teacher import reclaif_teacher, reclaif_template_teacher
from tasks.report import write_reclaif_report
from tasks.train import train_dpo, train_sft

logger = logging.getLogger(__name__)

BUILD_CANDIDATE_SETS = stage(build_candidate_sets)
RECLAIF_TEACHER = stage(reclaif_teacher)
RECLAIF_TEMPLATE_TEACHER = stage(reclaif_template_teacher)
RECLAIF_SAMPLE_PAIRS = stage(reclaif_sample_pairs)
RECLAIF_JUDGE_PAIRS = stage(reclaif_judge_pairs)
RECLAIF_RECOMMEND = stage(reclaif_recommend)
RECLAIF_EVALUATE = stage(reclaif_evaluate)
TRAIN_SFT = stage(train_sft)
TRAIN_DPO = stage(train_dpo)
WRITE_RECLAIF_REPORT = stage(write_reclaif_report)


def reclaif_stages(cfg: Config, log: StageLog, evidence: dict[str, Path]) -> dict[str, Path]:
    """Run the RecLAIF stages on the evidence folders (`data`, `recommender`); return every
    artifact folder by name (`reclaif_evaluate` holds comparison.md / comparison.parquet, `report`
    the report)."""
    r = cfg.reclaif
    out: dict[str, Path] = {}
    out["reclaif_candidates"] = candidates = log.run(
        BUILD_CANDIDATE_SETS, candidates=r.candidates, data=evidence["data"], recommender=evidence["recommender"]
    )
    if r.teacher == "template":  # the classic recommender's ranking, written in RecLAIF's format
        out["reclaif_teacher"] = log.run(
            RECLAIF_TEMPLATE_TEACHER, answer=r.answer, recommender=cfg.recommender, candidates=candidates,
            data=evidence["data"],
        )
    else:
        out["reclaif_teacher"] = log.run(
            RECLAIF_TEACHER, answer=r.answer, teacher=cfg.teacher, candidates=candidates
        )
    students = {"sft": log.run(TRAIN_SFT, label="reclaif_train_sft", training=cfg.training, sft=out["reclaif_teacher"])}
    pairs_cfg = cfg.pairs.model_copy(update={"source": "student"})  # RecLAIF samples the current student
    current = students["sft"]
    feedback = {"teacher": out["reclaif_teacher"]}
    for round_ in range(1, cfg.training.rounds + 1):
        pairs = log.run(
            RECLAIF_SAMPLE_PAIRS, label=f"reclaif_sample_pairs_r{round_}", answer=r.answer, pairs=pairs_cfg,
            teacher=cfg.teacher, training=cfg.training, candidates=candidates, student=current,
        )
        preferences = log.run(
            RECLAIF_JUDGE_PAIRS, label=f"reclaif_judge_pairs_r{round_}", judge=r.judge, answer=r.answer,
            candidates=candidates, pairs=pairs,
        )
        out[f"reclaif_pairs_r{round_}"], out[f"reclaif_preferences_r{round_}"] = pairs, preferences
        feedback |= {f"pairs_r{round_}": pairs, f"judge_r{round_}": preferences}
        if kept_preferences(preferences) == 0:
            logger.warning("reclaif round %d: the judge kept no pair; the round-%d student is the previous one",
                        round_, round_)
        else:
            current = log.run(TRAIN_DPO, label=f"reclaif_train_dpo_r{round_}", training=cfg.training,
                               preferences=preferences, init=current)
        students[f"dpo_r{round_}"] = current
    out |= {f"reclaif_{name}": folder for name, folder in students.items()}

    wanted = {name: students[name] for name in student_recommenders(r.evaluation, cfg.training)}
    out["reclaif_answers"] = answers = log.run(
        RECLAIF_RECOMMEND, evaluation=r.evaluation, answer=r.answer, teacher=cfg.teacher, training=cfg.training,
        candidates=candidates, students=wanted,
    )
    out["reclaif_evaluate"] = evaluation = log.run(
        RECLAIF_EVALUATE, evaluation=r.evaluation, answer=r.answer, judge=r.judge, recommender=cfg.recommender,
        data=evidence["data"], candidates=candidates, answers=answers, training=cfg.training,
    )
    publish_comparison(evaluation)
    out["report"] = log.run(WRITE_RECLAIF_REPORT, label="write_report", evaluation=evaluation, candidates=candidates,
                            feedback=feedback, students=wanted)
    return out


def publish_comparison(evaluation: Path) -> None:
    """The comparison table as Prefect artifacts: a table (one row per recommender and metric)
    and the markdown table."""
    table = pl.read_parquet(Path(evaluation) / "comparison.parquet")
    rows = [{k: (None if v != v else round(v, 4)) if isinstance(v, float) else v  # NaN: no value
             for k, v in row.items()}
            for row in table.iter_rows(named=True)]
    create_table_artifact(key="reclaif-comparison", table=rows,
                          description="RecLAIF: classic baselines vs LLM recommenders on the same candidate sets")
    create_markdown_artifact(key="reclaif-comparison-md", markdown=(Path(evaluation) / "comparison.md").read_text(),
                             description="RecLAIF comparison table")
