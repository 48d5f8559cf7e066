"""teacher_generate (SFT data) and sample_pairs (candidate pairs for preference learning).

teacher_generate: the teacher explains every training case once (or `best_of` times, keeping the
answer the judge scores best). An answer must be a usable explanation (`parse_explanation`:
non-empty, within the word bounds, not looping); an unusable one is re-asked with the reason fed
back up to `teacher.max_parse_retries` times, then counted invalid and left out of the SFT data.

sample_pairs: two candidates per training case, sampled at the pairs' (high) temperature and
nucleus mass, from the teacher (first seed) or from the current student (RecLAIF Algorithm 1,
round r: the base model plus the adapter the previous round trained). Candidates are not re-asked:
a bad sample is exactly what the judge should learn to reject. Identical twins carry no
preference and are dropped.

Both use `recxplain.prompts.explain_messages` with `teacher.prompt`, the prompt the students and
the evaluation see too. LLM responses are cached under `out/cache/`, so a run killed mid-stage
resumes without repeating calls.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import polars as pl

from recxplain.config import JudgeConfig, LLMConfig, PairsConfig, TeacherConfig, TrainingConfig
from recxplain.prompts import (
    ChatModel,
    Parsed,
    Templates,
    explain_messages,
    generate_parsed,
    template_hash,
    template_source,
    validity_stats,
)
from recxplain.schemas import Case, read_cases
from tasks.judge import Catalogue, repetition, score_explanations, words


def clean_explanation(text: str) -> str:
    """The explanation inside a model's answer: code fences, an "Explanation:" label and
    surrounding quotes removed, whitespace collapsed, an unfinished last sentence cut (when at
    least one sentence is complete)."""
    text = re.sub(r"```[a-z]*", "", text).strip()
    text = re.sub(r"^\s*\**(?:explanation|answer)\**\s*:\s*", "", text, flags=re.IGNORECASE)
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] in "\"\u201c" and text[-1] in "\"\u201d":
        text = text[1:-1].strip()
    if text and text[-1] not in ".!?\"')\u201d":
        ends = [m.end() for m in re.finditer(r"[.!?][\"')\u201d]?(?=\s)", text)]
        if ends:
            text = text[: ends[-1]]
    return text


def parse_explanation(text: str, *, min_words: int, max_words: int) -> str:
    """`clean_explanation(text)` when it is a usable explanation; ValueError saying why not."""
    cleaned = clean_explanation(text)
    count = len(words(cleaned))
    if count == 0:
        raise ValueError("the answer is empty; write the explanation")
    if count < min_words:
        raise ValueError(f"the explanation has {count} words; write at least {min_words}")
    if count > max_words:
        raise ValueError(f"the explanation has {count} words; write at most {max_words}")
    looped = repetition(cleaned)
    if looped:
        raise ValueError(f'the explanation repeats itself ("{looped}"); give each reason once')
    return cleaned


def _load(cfg: LLMConfig, artifacts_dir: Path, cache_path: Path) -> ChatModel:
    from recxplain.llm import load_chat_model

    cache_path.parent.mkdir(parents=True, exist_ok=True)
    return load_chat_model(cfg, Path(artifacts_dir), cache_path)


def _train_cases(cases: Path) -> list[Case]:
    path = Path(cases) / "train.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (written by build_cases)")
    found = read_cases(path)
    if not found:
        raise ValueError(f"{path}: no training cases")
    return found


def _pick_best(
    train: list[Case], results: list[list[Parsed]], teacher: TeacherConfig, judge: JudgeConfig | None,
    templates: Templates, cases: Path, artifacts_dir: Path, out: Path,
) -> tuple[list[int | None], list[list[float | None]]]:
    """Index of the kept sample per case (None: no valid sample) and every sample's judge score."""
    scores: list[list[float | None]] = [[None] * len(samples) for samples in results]
    if teacher.best_of > 1:
        if judge is None:
            raise ValueError("teacher.best_of > 1 needs the judge: pass judge=<JudgeConfig> to teacher_generate")
        items = [(train[i], p.value) for i, samples in enumerate(results) for p in samples if p.valid]
        slots = [(i, j) for i, samples in enumerate(results) for j, p in enumerate(samples) if p.valid]
        model = None
        if judge.kind != "rubric":
            model = _load(judge.llm, artifacts_dir, Path(out) / "cache" / "best_of_judge.sqlite")
        for (i, j), score in zip(slots, score_explanations(
            items, judge=judge, templates=templates, model=model, catalogue=Catalogue.read(cases)
        )):
            scores[i][j] = score
    best = []
    for samples, sample_scores in zip(results, scores):
        valid = [j for j, p in enumerate(samples) if p.valid]
        if not valid:
            best.append(None)
            continue
        # Highest score first; an unscored (invalid-judge) sample ranks last; ties: lowest index.
        best.append(max(valid, key=lambda j: (sample_scores[j] is not None, sample_scores[j] or 0.0, -j)))
    return best, scores


def teacher_generate(
    out: Path,
    *,
    teacher: TeacherConfig,
    cases: Path,
    templates: dict[str, str],
    artifacts_dir: Path,
    judge: JudgeConfig | None = None,
) -> None:
    """Write sft.jsonl (trl conversational rows: messages + case_id, valid answers only),
    generations.parquet (every sample and attempt) and stats.json (calls, tokens, cost, validity).

    `templates`: `read_templates(teacher.prompt)`, plus `judge.explainability_prompt` when
    `teacher.best_of > 1` with an llm or ensemble judge. `judge`: needed only when best_of > 1.
    """
    out = Path(out)
    train = _train_cases(cases)
    prompts = [explain_messages(case, teacher.prompt, templates) for case in train]
    model = _load(teacher.llm, artifacts_dir, out / "cache" / "teacher.sqlite")
    parse = partial(parse_explanation, min_words=teacher.min_words, max_words=teacher.max_words)
    results = generate_parsed(
        model, prompts, parse, teacher.sampling, n=teacher.best_of, max_retries=teacher.max_parse_retries
    )
    best, scores = _pick_best(train, results, teacher, judge, templates, cases, artifacts_dir, out)

    rows = []
    with open(out / "sft.jsonl", "w") as fh:
        for case, messages, samples, kept, sample_scores in zip(train, prompts, results, best, scores):
            for j, parsed in enumerate(samples):
                rows.append({
                    "case_id": case.case_id, "sample": j, "text": parsed.value if parsed.valid else parsed.text,
                    "valid": parsed.valid, "attempts": parsed.attempts,
                    "error": parsed.errors[-1] if parsed.errors and not parsed.valid else None,
                    "raw": json.dumps(parsed.raw), "prompt_tokens": parsed.prompt_tokens,
                    "completion_tokens": parsed.completion_tokens, "latency_s": parsed.latency_s,
                    "cached": parsed.cached, "score": sample_scores[j], "kept": j == kept,
                })
            if kept is not None:
                answer = {"role": "assistant", "content": samples[kept].value}
                fh.write(json.dumps({"messages": [*messages, answer], "case_id": case.case_id}) + "\n")
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(out / "generations.parquet")

    samples = [p for s in results for p in s]
    stats = {
        "cases": len(train),
        **validity_stats(samples),
        "sft_rows": sum(b is not None for b in best),
        "best_of": teacher.best_of,
        "model": teacher.llm.model,
        "provider": teacher.llm.provider,
        "template": teacher.prompt,
        "template_hash": template_hash(template_source(teacher.prompt, templates)),
        "usage": dict(getattr(model, "usage", {}) or {}),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))


def student_llm(training: TrainingConfig, student: Path) -> LLMConfig:
    """The current student as a local model: base model + its adapter (or its merged model)."""
    adapter, merged = Path(student) / "adapter", Path(student) / "merged"
    if adapter.exists():
        return LLMConfig(provider="local", model=training.base_model, adapter=adapter)
    if merged.exists():
        return LLMConfig(provider="local", model=str(merged))
    raise FileNotFoundError(f"{student}: no adapter/ or merged/ folder (written by the training stages)")


def pair_sampler_llm(pairs: PairsConfig, teacher: TeacherConfig, training: TrainingConfig,
                     student: Path | None) -> LLMConfig:
    """The model that samples candidate pairs: the current student (RecLAIF Algorithm 1) or the
    teacher (first seed), as `pairs.source` says."""
    if pairs.source == "teacher":
        return teacher.llm
    if student is None:
        raise ValueError("pairs.source is 'student' but no student folder was given")
    return student_llm(training, student)


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
) -> None:
    """Write pairs.parquet (case_id, text_a, text_b, source, prompt as JSON messages, model,
    valid_a, valid_b) and stats.json; two samples per training case at `pairs.sampling`.

    `student`: the folder of the current student (train_sft or the previous DPO round) when
    `pairs.source` is `student`. `templates`: `read_templates(teacher.prompt)`.
    """
    out = Path(out)
    cfg = pair_sampler_llm(pairs, teacher, training, student)
    train = _train_cases(cases)
    prompts = [explain_messages(case, teacher.prompt, templates) for case in train]
    model = _load(cfg, artifacts_dir, out / "cache" / "pairs.sqlite")
    outputs = model.generate(prompts, pairs.sampling, n=2)

    def usable(text: str) -> bool:
        try:
            parse_explanation(text, min_words=teacher.min_words, max_words=teacher.max_words)
        except ValueError:
            return False
        return True

    rows, identical, tokens = [], 0, 0
    for case, messages, samples in zip(train, prompts, outputs, strict=True):
        if len(samples) != 2:
            raise RuntimeError(f"model returned {len(samples)} samples for case {case.case_id}, asked for 2")
        text_a, text_b = (clean_explanation(g.text) for g in samples)
        tokens += sum(g.completion_tokens for g in samples)
        if " ".join(text_a.lower().split()) == " ".join(text_b.lower().split()):
            identical += 1
            continue
        rows.append({
            "case_id": case.case_id, "text_a": text_a, "text_b": text_b, "source": pairs.source,
            "prompt": json.dumps(messages), "model": cfg.model if cfg.adapter is None else f"{cfg.model}+{cfg.adapter}",
            "valid_a": usable(text_a), "valid_b": usable(text_b),
        })
    schema = {"case_id": pl.String, "text_a": pl.String, "text_b": pl.String, "source": pl.String,
              "prompt": pl.String, "model": pl.String, "valid_a": pl.Boolean, "valid_b": pl.Boolean}
    pl.DataFrame(rows, schema=schema).write_parquet(out / "pairs.parquet")
    candidates = 2 * len(rows)
    stats = {
        "cases": len(train),
        "pairs": len(rows),
        "identical_dropped": identical,
        "source": pairs.source,
        "model": rows[0]["model"] if rows else cfg.model,
        "validity_ratio": round(sum(r["valid_a"] + r["valid_b"] for r in rows) / candidates, 4) if candidates else None,
        "completion_tokens": tokens,
        "template_hash": template_hash(template_source(teacher.prompt, templates)),
        "usage": dict(getattr(model, "usage", {}) or {}),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
