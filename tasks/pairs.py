"""sample_pairs: the candidate pairs for preference learning.

`pairs.candidates` answers per training case, sampled at the pairs' (high) temperature, from the
teacher (first seed) or from the current student (RecLAIF Algorithm 1, round r: the base model
plus the adapter the previous round trained). With more than two candidates, the pair is the one
the checks rate best and the one they rate worst, so that chosen and rejected differ where it
matters. Candidates are not re-asked: a bad sample is exactly what the judge should learn to
reject. Identical twins carry no preference and are dropped. With `pairs.source:
teacher_samples` nothing is sampled: each case's pair is the teacher's kept best-of-n answer and
the worst of its other samples (teacher_generate's, tasks/teacher.py), so the ORPO student's
chosen answers are the SFT student's targets.

Like teacher_generate it uses `recxplain.prompts.explain_messages` with `teacher.prompt`, the
prompt the students and the evaluation see too. LLM responses are cached under `out/cache/`, so
a run killed mid-stage resumes without repeating calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from recxplain.checks import Catalogue, check_explanations, clean_explanation, parse_explanation
from recxplain.config import PairsConfig, TeacherConfig, TrainingConfig
from recxplain.models import pair_sampler_llm
from recxplain.prompts import explain_messages, merge_stats, usage_counts
from recxplain.schemas import Case
from recxplain.stage import ALL, reads
from recxplain.teaching import load_sampler, train_cases


@reads(pairs=ALL, teacher=("llm", "prompt", "students_see_example", "min_words", "max_words"),
       training=("base_model", "thinking"), templates=("teacher.prompt",))
def sample_pairs(
    out: Path,
    *,
    pairs: PairsConfig,
    teacher: TeacherConfig,
    training: TrainingConfig,
    cases: Path,
    student: Path | None,
    templates: dict[str, str],
    artifacts_dir: Path,
    teacher_samples: Path | None = None,
    shard: int = 0,
    shard_cases: int = 0,
) -> None:
    """Write pairs.parquet (case_id, text_a, text_b, source, prompt as JSON messages, model,
    valid_a, valid_b) and stats.json; `pairs.candidates` samples per training case at
    `pairs.sampling` (the first the greedy answer, at `pairs.greedy_sampling`, with
    `pairs.greedy_candidate`), of which the
    best and the worst by the checks form the pair.

    `student`: the folder of the current student (train_sft or the previous DPO round) when
    `pairs.source` is `student`. `teacher_samples`: the teacher_generate folder when it is
    `teacher_samples`. `templates`: `read_templates(teacher.prompt)`. `shard`, `shard_cases`: only
    the training cases `shard * shard_cases` up to the next `shard_cases` (0: every case);
    `merge_pairs` joins the shards into what one call for every case writes.
    """
    out = Path(out)
    train = train_cases(cases)
    if shard_cases:
        train = train[shard * shard_cases:(shard + 1) * shard_cases]
    # The teacher samples with its own prompt; every row carries the prompt the students get.
    prompts = [explain_messages(case, teacher.prompt, templates, example=teacher.students_see_example)
               for case in train]
    if pairs.source == "teacher_samples":
        if teacher_samples is None:
            raise ValueError("pairs.source is 'teacher_samples' but no teacher_generate folder was given")
        _pairs_from_teacher_samples(out, train, prompts, Path(teacher_samples), teacher, templates)
        return
    cfg = pair_sampler_llm(pairs, teacher, training, student)
    asked = prompts if pairs.source == "student" else [explain_messages(c, teacher.prompt, templates) for c in train]
    model = load_sampler(cfg, artifacts_dir, out / "cache" / "pairs.sqlite")
    sampled = pairs.candidates - pairs.greedy_candidate
    outputs = model.generate(asked, pairs.sampling, n=sampled)
    if pairs.greedy_candidate:
        greedy = model.generate(asked, pairs.greedy_sampling or pairs.sampling.model_copy(update={"temperature": 0.0}))
        outputs = [first + rest for first, rest in zip(greedy, outputs, strict=True)]

    def usable(text: str, case: Case) -> bool:
        try:
            parse_explanation(text, min_words=teacher.min_words, max_words=teacher.max_words, case=case)
        except ValueError:
            return False
        return True

    catalogue = Catalogue.read(cases) if pairs.candidates > 2 else None
    rows, identical, tokens = [], 0, 0
    for case, messages, samples in zip(train, prompts, outputs, strict=True):
        if len(samples) != pairs.candidates:
            raise RuntimeError(f"model returned {len(samples)} samples for case {case.case_id}, "
                               f"asked for {pairs.candidates}")
        # An answer still going at max_new_tokens keeps its cut-off end, so that the checks see
        # an answer that did not stop (the evaluation counts it invalid), not a tidied one.
        stopped = [g.finish_reason != "length" for g in samples]
        texts = [clean_explanation(g.text) if ok else " ".join(g.text.split()) for g, ok in zip(samples, stopped)]
        tokens += sum(g.completion_tokens for g in samples)
        order = [0, 1]
        if len(texts) > 2:  # the best and the worst by the checks (first on ties: stable)
            scores = [c.score for c in check_explanations([(case, t) for t in texts], catalogue=catalogue,
                                                           min_words=teacher.min_words, max_words=teacher.max_words)]
            ranked = sorted(range(len(texts)), key=lambda j: (-scores[j], j))
            order = [ranked[0], ranked[-1]]
        (text_a, text_b), (stopped_a, stopped_b) = [texts[j] for j in order], [stopped[j] for j in order]
        if " ".join(text_a.lower().split()) == " ".join(text_b.lower().split()):
            identical += 1
            continue
        rows.append({
            "case_id": case.case_id, "text_a": text_a, "text_b": text_b, "source": pairs.source,
            "prompt": json.dumps(messages), "model": cfg.model if cfg.adapter is None else f"{cfg.model}+adapter",
            "valid_a": stopped_a and usable(text_a, case), "valid_b": stopped_b and usable(text_b, case),
        })
    pl.DataFrame(rows, schema=PAIR_SCHEMA).write_parquet(out / "pairs.parquet")
    candidates = 2 * len(rows)
    stats = {
        "cases": len(train),
        "pairs": len(rows),
        "identical_dropped": identical,
        "source": pairs.source,
        "model": rows[0]["model"] if rows else cfg.model,
        "validity_ratio": round(sum(r["valid_a"] + r["valid_b"] for r in rows) / candidates, 4) if candidates else None,
        "completion_tokens": tokens,
        "usage": usage_counts(model),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))


@reads()
def merge_pairs(out: Path, *, shards: list[Path]) -> None:
    """Join sample_pairs' shards (in order) into the files one call for every case writes:
    pairs.parquet row for row, stats.json with the shards' counts summed."""
    shards = [Path(folder) for folder in shards]
    frame = pl.concat([pl.read_parquet(folder / "pairs.parquet") for folder in shards])
    frame.write_parquet(Path(out) / "pairs.parquet")
    parts = [json.loads((folder / "stats.json").read_text()) for folder in shards]
    stats = merge_stats(parts)
    stats["model"] = next((part["model"] for part in parts if part["pairs"]), parts[0]["model"])
    candidates = 2 * frame.height
    stats["validity_ratio"] = (round((frame["valid_a"].sum() + frame["valid_b"].sum()) / candidates, 4)
                               if candidates else None)
    (Path(out) / "stats.json").write_text(json.dumps(stats, indent=2))


PAIR_SCHEMA = {"case_id": pl.String, "text_a": pl.String, "text_b": pl.String, "source": pl.String,
               "prompt": pl.String, "model": pl.String, "valid_a": pl.Boolean, "valid_b": pl.Boolean}


def _pairs_from_teacher_samples(out: Path, train: list[Case], prompts: list[list[dict]], teacher_dir: Path,
                                teacher: TeacherConfig, templates: dict[str, str]) -> None:
    """pairs.parquet from teacher_generate's generations.parquet: each SFT answer of a case (text_a:
    the kept one, then any other in sft.jsonl) against the sample the checks rate worst among the
    case's others (text_b, unparsable ones first); an extra SFT answer whose worst other is itself
    an SFT answer makes no pair."""
    path = teacher_dir / "generations.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (written by teacher_generate)")
    samples = pl.read_parquet(path)
    by_case = {key[0]: frame for key, frame in samples.group_by("case_id")}
    rows, identical, without_kept = [], 0, 0
    for case, messages in zip(train, prompts):
        frame = by_case.get(case.case_id)
        kept = frame.filter(pl.col("kept")) if frame is not None else None
        if kept is None or kept.is_empty():
            without_kept += 1
            continue
        if frame.height < 2:
            raise ValueError(f"{path}: case {case.case_id} has one sample; pairs.source 'teacher_samples' needs "
                             "teacher.best_of >= 2")
        # Files written before the `sft` column hold the kept answer only.
        answers = frame.filter(pl.col("sft") if "sft" in frame.columns else pl.col("kept"))
        for best in answers.sort(["kept", "sample"], descending=[True, False]).iter_rows(named=True):
            others = frame.filter(pl.col("sample") != best["sample"]).with_columns(pl.col("score").fill_null(-1.0))
            worst = others.sort(["score", "sample"]).row(0, named=True)
            if not best["kept"] and worst.get("sft", worst["kept"]):
                continue
            if " ".join(best["text"].lower().split()) == " ".join(worst["text"].lower().split()):
                identical += 1
                continue
            rows.append({"case_id": case.case_id, "text_a": best["text"], "text_b": worst["text"],
                         "source": "teacher_samples", "prompt": json.dumps(messages), "model": teacher.llm.model,
                         "valid_a": bool(best["valid"]), "valid_b": bool(worst["valid"])})
    pl.DataFrame(rows, schema=PAIR_SCHEMA).write_parquet(out / "pairs.parquet")
    stats = {
        "cases": len(train),
        "pairs": len(rows),
        "identical_dropped": identical,
        "cases_without_kept_answer": without_kept,
        "source": "teacher_samples",
        "model": teacher.llm.model,
        "validity_ratio": round(sum(r["valid_a"] + r["valid_b"] for r in rows) / (2 * len(rows)), 4) if rows else None,
        "completion_tokens": 0,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
