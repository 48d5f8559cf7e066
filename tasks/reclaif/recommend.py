"""RecLAIF stage 4, `reclaif_recommend`: every LLM recommender (base, SFT, DPO rounds) answers
the eval sets.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import polars as pl

from recxplain.config import ReclaifAnswerConfig, ReclaifEvaluationConfig, TeacherConfig, TrainingConfig
from recxplain.explainers import explainer_llm
from recxplain.llm import release_models
from recxplain.reclaif import read_candidate_sets
from recxplain.reclaif.answers import load_model, recommend_messages
from recxplain.reclaif.evaluation import recommender_names
from recxplain.stage import ALL, reads

log = logging.getLogger(__name__)


@reads(evaluation=ALL, answer=ALL, teacher=ALL, training=("base_model", "thinking", "rounds"),
       templates=("answer.prompt",))
def reclaif_recommend(
    out: Path,
    *,
    evaluation: ReclaifEvaluationConfig,
    answer: ReclaifAnswerConfig,
    teacher: TeacherConfig,
    training: TrainingConfig,
    candidates: Path,
    templates: dict[str, str],
    artifacts_dir: Path,
    students: dict[str, Path] | None = None,
) -> None:
    """Every LLM recommender answers every eval set once at `evaluation.sampling` (no re-asks);
    write answers.parquet (case_id = set_id, model, text, prompt_tokens, completion_tokens,
    latency_s, cached, finish_reason). `students`: name -> student folder for every name
    `student_recommenders` lists. `templates`: `read_templates(answer.prompt)`."""
    out, students = Path(out), dict(students or {})
    sets = read_candidate_sets(candidates, "eval")
    prompts = [recommend_messages(cs, answer, templates) for cs in sets]
    rows: list[dict] = []
    answered: dict[str, list[dict]] = {}  # model config -> its rows
    for name in recommender_names(evaluation, training):
        started = time.perf_counter()
        llm = explainer_llm(name, teacher=teacher, training=training, students=students)
        same = answered.get(llm.model_dump_json())
        if same is not None:  # a DPO round that kept no pair is the previous student: same answers
            rows += [row | {"model": name} for row in same]
            continue
        model = load_model(llm, artifacts_dir, out / "cache" / f"{name}.sqlite")
        mine = []
        for cs, (generation, *_) in zip(sets, model.generate(prompts, evaluation.sampling, n=1), strict=True):
            mine.append({"case_id": cs.set_id, "model": name, "text": generation.text.strip(),
                         "prompt_tokens": int(generation.prompt_tokens),
                         "completion_tokens": int(generation.completion_tokens),
                         "latency_s": float(generation.latency_s), "cached": bool(generation.cached),
                         "finish_reason": getattr(generation, "finish_reason", None)})
        rows += mine
        answered[llm.model_dump_json()] = mine
        log.info("recommender %s: %d sets in %.1f s", name, len(sets), time.perf_counter() - started)
        model = None  # one model in memory at a time
        release_models()
        del model  # before the next recommender loads: one model in memory at a time
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(out / "answers.parquet")
