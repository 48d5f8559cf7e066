"""Stage `judge_pairs`: judge every candidate pair of explanations, keep the preferred ones.

The judges (rubric, LLM, ensemble; `kind: discriminator` judges the pairs with its base judge)
and the verdicts are the library recxplain/judging.py; see its docstring.

Outputs in `out`: `preferences.jsonl` (the kept pairs in trl's conversational preference format
+ case_id and scores), `verdicts.parquet` (every pair) and `stats.json` (`judge_stats` counts).
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from recxplain.checks import Catalogue
from recxplain.config import JudgeConfig
from recxplain.judging import (
    PairJudgement,
    PairVerdict,
    base_judge,
    judge_explanation_pairs,
    judge_stats,
    load_judge_model,
)
from recxplain.prompts import judge_prompts, usage_counts
from recxplain.schemas import check_columns, read_cases
from recxplain.stage import reads


def _verdict_row(case_id: str, judgement: PairJudgement, kind: str) -> dict:
    def scores(verdict: PairVerdict | None, side: str) -> dict:
        s = getattr(verdict, side) if verdict else None
        return s.model_dump() if s else None

    return {
        "case_id": case_id,
        "judge": kind,
        "verdict": judgement.verdict,
        "kept": judgement.kept,
        "score_a": judgement.score_a,
        "score_b": judgement.score_b,
        "llm_choice": judgement.llm_choice,
        "llm_choice_ab": judgement.llm_ab.choice if judgement.llm_ab else None,
        "llm_choice_ba": judgement.llm_ba.choice if judgement.llm_ba else None,
        "order_consistent": judgement.order_consistent,
        "llm_scores_ab": json.dumps({"a": scores(judgement.llm_ab, "a"), "b": scores(judgement.llm_ab, "b")}),
        "llm_scores_ba": json.dumps({"a": scores(judgement.llm_ba, "a"), "b": scores(judgement.llm_ba, "b")}),
        "rubric_a": judgement.rubric_a.model_dump_json() if judgement.rubric_a else None,
        "rubric_b": judgement.rubric_b.model_dump_json() if judgement.rubric_b else None,
        "raw_ab": json.dumps(judgement.raw_ab),
        "raw_ba": json.dumps(judgement.raw_ba),
        "attempts": len(judgement.raw_ab) + len(judgement.raw_ba),
        "valid": judgement.verdict != "invalid",
    }



@reads(judge=("kind", "llm", "prompt", "llm_weight", "both_orders", "max_parse_retries", "min_words", "max_words",
              "tie_margin", "min_rubric_score", "sampling", "discriminator"),
       templates=lambda judge, **_: judge_prompts(judge))
def judge_pairs(
    out: Path,
    *,
    judge: JudgeConfig,
    cases: Path,
    pairs: Path,
    templates: dict[str, str],
    artifacts_dir: Path,
) -> None:
    """Judge every candidate pair; write preferences.jsonl (kept pairs, trl conversational
    preference format + case_id, scores), verdicts.parquet (every pair) and stats.json.

    `templates`: `read_templates(judge.prompt)` (unused by the rubric judge, but pass it: the
    key then follows the template). For `kind: discriminator` the pairs are judged by its base
    judge (`base_judge`)."""
    judge = base_judge(judge)
    by_id = {c.case_id: c for name in ("train.jsonl", "eval.jsonl") if (Path(cases) / name).exists()
             for c in read_cases(Path(cases) / name)}
    pairs_path = Path(pairs) / "pairs.parquet"
    if not pairs_path.exists():
        raise FileNotFoundError(f"{pairs_path}: missing (written by sample_pairs)")
    frame = pl.read_parquet(pairs_path)
    check_columns(frame, "pairs", pairs_path)
    rows = frame.to_dicts()
    unknown = sorted({r["case_id"] for r in rows} - by_id.keys())
    if unknown:
        raise ValueError(f"{pairs_path}: case_id(s) {unknown[:5]} are not in {cases}")

    judge_model = load_judge_model(judge, artifacts_dir, Path(out) / "cache" / "judge.sqlite")
    catalogue = Catalogue.read(cases)
    judgements = judge_explanation_pairs(
        [(by_id[r["case_id"]], r["text_a"], r["text_b"]) for r in rows],
        judge=judge, templates=templates, model=judge_model, catalogue=catalogue,
    )

    verdict_rows = []
    with open(Path(out) / "preferences.jsonl", "w") as fh:
        for row, judgement in zip(rows, judgements):
            verdict_rows.append(_verdict_row(row["case_id"], judgement, judge.kind) | {"source": row["source"]})
            if not judgement.kept:
                continue
            a_wins = judgement.verdict == "a"
            chosen, rejected = (row["text_a"], row["text_b"]) if a_wins else (row["text_b"], row["text_a"])
            score_chosen, score_rejected = (
                (judgement.score_a, judgement.score_b) if a_wins else (judgement.score_b, judgement.score_a)
            )
            fh.write(json.dumps({
                "prompt": json.loads(row["prompt"]),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "case_id": row["case_id"],
                "scores": {"chosen": score_chosen, "rejected": score_rejected},
            }) + "\n")
    frame = pl.DataFrame(verdict_rows, infer_schema_length=None) if verdict_rows else pl.DataFrame(
        schema=[*_verdict_row("", PairJudgement(verdict="invalid"), judge.kind), "source"]
    )
    frame.write_parquet(Path(out) / "verdicts.parquet")
    stats = judge_stats(judgements) | {
        "judge": judge.kind,
        "llm": judge.llm.model if judge_model is not None else None,
        "usage": usage_counts(judge_model),
    }
    (Path(out) / "stats.json").write_text(json.dumps(stats, indent=2))
    if not stats["kept"]:  # say it here, with the counts, not later as an empty training file
        sampled = Path(pairs) / "stats.json"
        identical = json.loads(sampled.read_text()).get("identical_dropped") if sampled.exists() else None
        raise ValueError(
            f"judge_pairs: no preference pair kept, nothing to train on: {stats['pairs_judged']} pairs judged "
            f"(ties {stats['ties']}, both bad {stats['both_bad']}, order-inconsistent {stats['order_inconsistent']}, "
            f"invalid {stats['invalid']}), {identical if identical is not None else 'unknown'} dropped as identical "
            f"twins by sample_pairs; see {Path(out) / 'verdicts.parquet'}")
