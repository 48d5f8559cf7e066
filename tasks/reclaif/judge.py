"""RecLAIF stage 3, per round r (Algorithm 1, step 2), `reclaif_judge_pairs`: RecLAIF's judge
(0-5 relevance, diversity, explainability, then A or B; the next movie is shown to it) picks one
answer of each sampled pair; the kept pairs are what `train_dpo` (tasks/train.py) trains the
round-r student on. The judge is recxplain/reclaif/judge.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from recxplain.config import JudgeConfig, ReclaifAnswerConfig
from recxplain.judging import judge_stats
from recxplain.llm import release_models
from recxplain.prompts import judge_prompts, usage_counts
from recxplain.reclaif import read_candidate_sets
from recxplain.reclaif.answers import load_model
from recxplain.reclaif.judge import judge_recommendation_pairs, ranking_signal
from recxplain.schemas import check_columns
from recxplain.stage import ALL, reads


@reads(judge=ALL, answer=ALL, templates=lambda judge, **_: judge_prompts(judge))
def reclaif_judge_pairs(
    out: Path,
    *,
    judge: JudgeConfig,
    answer: ReclaifAnswerConfig,
    candidates: Path,
    pairs: Path,
    templates: dict[str, str],
    artifacts_dir: Path,
) -> None:
    """Judge every sampled pair; write preferences.jsonl (kept pairs in trl's conversational
    preference format + case_id and scores: what train_dpo reads), verdicts.parquet (every pair)
    and stats.json (recxplain.judging.judge_stats counts: kept, ties, both-bad, order-inconsistent,
    invalid, position-bias rate, LLM validity ratio). `templates`: `read_templates(judge.prompt)`.
    """
    out = Path(out)
    sets = {cs.set_id: cs for cs in read_candidate_sets(candidates, "train")}
    pairs_path = Path(pairs) / "pairs.parquet"
    if not pairs_path.exists():
        raise FileNotFoundError(f"{pairs_path}: missing (written by reclaif_sample_pairs)")
    frame = pl.read_parquet(pairs_path)
    check_columns(frame, "pairs", pairs_path)
    rows = frame.to_dicts()
    unknown = sorted({r["case_id"] for r in rows} - sets.keys())
    if unknown:
        raise ValueError(f"{pairs_path}: case_id(s) {unknown[:5]} are not train sets of {candidates}")
    model = None
    if judge.kind != "rubric":
        model = load_model(judge.llm, artifacts_dir, out / "cache" / "judge.sqlite")
    judged = judge_recommendation_pairs([(sets[r["case_id"]], r["text_a"], r["text_b"]) for r in rows],
                                        judge=judge, answer=answer, templates=templates, model=model)
    usage = usage_counts(model)
    model = None  # one model in memory at a time: the next stage loads its own
    release_models()
    verdict_rows = []
    with open(out / "preferences.jsonl", "w") as fh:
        for row, result in zip(rows, judged, strict=True):
            j = result.judgement
            verdict_rows.append({
                "case_id": row["case_id"], "judge": judge.kind, "verdict": j.verdict, "kept": j.kept,
                "score_a": j.score_a, "score_b": j.score_b, "llm_choice": j.llm_choice,
                "llm_choice_ab": j.llm_ab.choice if j.llm_ab else None,
                "llm_choice_ba": j.llm_ba.choice if j.llm_ba else None, "order_consistent": j.order_consistent,
                "rubric_a": result.rubric_a.model_dump_json(), "rubric_b": result.rubric_b.model_dump_json(),
                "valid_a": result.answer_a.valid, "valid_b": result.answer_b.valid,
                "raw_ab": json.dumps(j.raw_ab), "raw_ba": json.dumps(j.raw_ba),
            })
            if not j.kept:
                continue
            a_wins = j.verdict == "a"
            chosen, rejected = (row["text_a"], row["text_b"]) if a_wins else (row["text_b"], row["text_a"])
            scores = (j.score_a, j.score_b) if a_wins else (j.score_b, j.score_a)
            fh.write(json.dumps({
                "prompt": json.loads(row["prompt"]),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "case_id": row["case_id"], "scores": {"chosen": scores[0], "rejected": scores[1]},
            }) + "\n")
    pl.DataFrame(verdict_rows, infer_schema_length=None).write_parquet(out / "verdicts.parquet")
    stats = judge_stats([r.judgement for r in judged]) | ranking_signal(judged) | {
        "judge": judge.kind,
        "llm": judge.llm.model if judge.kind != "rubric" else None,
        "usage": usage,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
