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
    merge_stats,
    usage_counts,
    validity_stats,
)
from recxplain.stage import ALL, reads
from recxplain.teaching import load_sampler, train_cases


@reads(teacher=ALL, templates=("teacher.prompt",))
def teacher_generate(
    out: Path,
    *,
    teacher: TeacherConfig,
    cases: Path,
    templates: dict[str, str],
    artifacts_dir: Path,
    shard: int = 0,
    shard_cases: int = 0,
) -> None:
    """Write sft.jsonl (trl conversational rows: the students' prompt, an answer, case_id; the
    kept answer of each case, and with `teacher.sft_answers: passing` every other sample that
    passes every check), generations.parquet (every sample and attempt, with its checks; `kept`
    marks the best sample, `sft` every sample in sft.jsonl) and stats.json (calls, tokens, cost,
    validity, kept cases and how many of them pass every check).

    `templates`: `read_templates(teacher.prompt)`. `shard`, `shard_cases`: only the training cases
    `shard * shard_cases` up to the next `shard_cases` (0: every case); `merge_teacher` joins the
    shards into what one call for every case writes.
    """
    out = Path(out)
    train = train_cases(cases)
    if shard_cases:
        train = train[shard * shard_cases:(shard + 1) * shard_cases]
    prompts = [explain_messages(case, teacher.prompt, templates) for case in train]
    student_prompts = [explain_messages(case, teacher.prompt, templates, example=teacher.students_see_example)
                       for case in train]
    model = load_sampler(teacher.llm, artifacts_dir, out / "cache" / "teacher.sqlite")
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
    if not shard_cases:  # a shard may keep nothing; the merge checks every case
        _check_kept(stats, out)


@reads()
def merge_teacher(out: Path, *, shards: list[Path]) -> None:
    """Join teacher_generate's shards (in order) into the files one call for every case writes:
    sft.jsonl and generations.parquet row for row, stats.json with the shards' counts summed."""
    out, shards = Path(out), [Path(folder) for folder in shards]
    with open(out / "sft.jsonl", "w") as fh:
        for folder in shards:
            fh.write((folder / "sft.jsonl").read_text())
    pl.concat([pl.read_parquet(folder / "generations.parquet") for folder in shards],
              how="vertical_relaxed").write_parquet(out / "generations.parquet")
    stats = merge_stats([json.loads((folder / "stats.json").read_text()) for folder in shards], same=("best_of",))
    n = max(stats["samples"], 1)
    stats["validity_ratio"] = round(stats["valid_samples"] / n, 4)
    stats["first_try_validity_ratio"] = round(stats["valid_first_try"] / n, 4)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    _check_kept(stats, out)


def _check_kept(stats: dict, out: Path) -> None:
    if not stats["sft_cases"]:
        raise ValueError(f"teacher_generate: none of {stats['cases']} cases has an answer that passes the checks "
                         f"(see {out / 'generations.parquet'}); raise teacher.best_of or set teacher.require_checks "
                         "to false")
