"""teacher_generate: the SFT data (sample_pairs, in tasks/pairs.py, samples the preference pairs).

The teacher explains every training case `best_of` times and keeps the answer
the checks of `recxplain.checks` rate best (best-of-n); with `teacher.require_checks` a case
none of whose answers passes every check is left out of the SFT data. An answer must first be a
usable explanation (`parse_explanation`: complete, within the word bounds, not looping); an
unusable one is re-asked with the reason fed back up to `teacher.max_parse_retries` times.

It uses `recxplain.prompts.explain_messages` with `teacher.prompt`, the prompt the students and
the evaluation see too. LLM responses are cached under `out/cache/`, so a run killed mid-stage
resumes without repeating calls.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import polars as pl

from recxplain.checks import Catalogue, parse_explanation, pick_best
from recxplain.config import TeacherConfig
from recxplain.prompts import (
    explain_messages,
    generate_parsed,
    usage_counts,
    validity_stats,
)
from recxplain.stage import ALL, reads
from recxplain.teaching import _load, _train_cases


@reads(teacher=ALL, templates=("teacher.prompt",))
def teacher_generate(
    out: Path,
    *,
    teacher: TeacherConfig,
    cases: Path,
    templates: dict[str, str],
    artifacts_dir: Path,
) -> None:
    """Write sft.jsonl (trl conversational rows: the students' prompt, an answer, case_id; the
    kept answer of each case, and with `teacher.sft_answers: passing` every other sample that
    passes every check), generations.parquet (every sample and attempt, with its checks; `kept`
    marks the best sample, `sft` every sample in sft.jsonl) and stats.json (calls, tokens, cost,
    validity, kept cases and how many of them pass every check).

    `templates`: `read_templates(teacher.prompt)`.
    """
    out = Path(out)
    train = _train_cases(cases)
    prompts = [explain_messages(case, teacher.prompt, templates) for case in train]
    student_prompts = [explain_messages(case, teacher.prompt, templates, example=teacher.students_see_example)
                       for case in train]
    model = _load(teacher.llm, artifacts_dir, out / "cache" / "teacher.sqlite")
    parse = [partial(parse_explanation, min_words=teacher.min_words, max_words=teacher.max_words, case=case)
             for case in train]
    results = generate_parsed(
        model, prompts, parse, teacher.sampling, n=teacher.best_of, max_retries=teacher.max_parse_retries
    )
    best, checks = pick_best(
        train, [[p.value for p in samples] for samples in results], catalogue=Catalogue.read(cases),
        min_words=teacher.min_words, max_words=teacher.max_words, require_passed=teacher.require_checks,
    )

    rows = []
    with open(out / "sft.jsonl", "w") as fh:
        for case, messages, samples, kept, sample_checks in zip(train, student_prompts, results, best, checks):
            answers = [] if kept is None else [kept] + [
                j for j, check in enumerate(sample_checks)
                if teacher.sft_answers == "passing" and j != kept and check is not None and check.passed
            ]
            for j, parsed in enumerate(samples):
                check = sample_checks[j]
                rows.append({
                    "case_id": case.case_id, "sample": j, "text": parsed.value if parsed.valid else parsed.text,
                    "valid": parsed.valid, "attempts": parsed.attempts,
                    "error": parsed.errors[-1] if parsed.errors and not parsed.valid else None,
                    "raw": json.dumps(parsed.raw), "prompt_tokens": parsed.prompt_tokens,
                    "completion_tokens": parsed.completion_tokens,
                    "score": check.score if check else None, "passed": check.passed if check else False,
                    "failed": check.failed if check else [], "kept": j == kept, "sft": j in answers,
                })
            for j in answers:
                answer = {"role": "assistant", "content": samples[j].value}
                fh.write(json.dumps({"messages": [*messages, answer], "case_id": case.case_id}) + "\n")
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(out / "generations.parquet")

    samples = [p for s in results for p in s]
    kept_checks = [c[k] for c, k in zip(checks, best) if k is not None]
    stats = {
        "cases": len(train),
        **validity_stats(samples),
        "samples_passing_checks": sum(bool(c and c.passed) for s in checks for c in s),
        "sft_cases": len(kept_checks),
        "sft_rows": sum(bool(r["sft"]) for r in rows),
        "kept_passing_checks": sum(c.passed for c in kept_checks),
        "best_of": teacher.best_of,
        "model": teacher.llm.model,
        "provider": teacher.llm.provider,
        "template": teacher.prompt,
        "usage": usage_counts(model),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    if not kept_checks:
        raise ValueError(f"teacher_generate: none of {len(train)} cases has an answer that passes the checks "
                         f"(see {out / 'generations.parquet'}); raise teacher.best_of or set teacher.require_checks "
                         "to false")
