"""RecLAIF stage 2, the SFT data, made one of two ways (`reclaif.teacher`):

`reclaif_teacher`: the teacher LLM answers every train set in RecLAIF's format (key
preferences, then the top k candidates with a reason each); an answer that breaks the format
is re-asked with the reason fed back; valid answers are the SFT data (`sft.jsonl`, trl
conversational). Or `reclaif_template_teacher` (`reclaif.teacher: template`, the embedded
default): the classic recommender ranks the set and `template_answer`
(recxplain/reclaif/answers.py) writes its top k in the same format, with preferences and
reasons taken from the history's genres and years. `train_sft` (tasks/train.py) trains on it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from recxplain.config import ReclaifAnswerConfig, RecommenderConfig, TeacherConfig
from recxplain.prompts import generate_parsed, usage_counts, validity_stats
from recxplain.reclaif import read_candidate_sets
from recxplain.reclaif.answers import (
    answer_parsers,
    answer_scores,
    load_model,
    parse_recommendation,
    recommend_messages,
    shown_position,
    template_answer,
    wanted_picks,
)
from recxplain.recommenders import fit_recommender, read_interactions, score_candidates
from recxplain.stage import ALL, reads


@reads(answer=ALL, teacher=ALL, templates=("answer.prompt",))
def reclaif_teacher(
    out: Path,
    *,
    answer: ReclaifAnswerConfig,
    teacher: TeacherConfig,
    candidates: Path,
    templates: dict[str, str],
    artifacts_dir: Path,
) -> None:
    """The teacher answers every train set; write sft.jsonl (valid answers only, trl
    conversational rows with case_id = set_id), generations.parquet (every sample) and stats.json.

    Uses teacher.llm, teacher.sampling, teacher.max_parse_retries (re-asks of an invalid answer
    with its problems fed back) and teacher.best_of: with more than one sample per set, the
    valid sample with the best `answer_scores` quality is kept. Those scores know the next
    movie, so best-of is rejection sampling on the training labels (never used on eval sets).
    `templates`: `read_templates(answer.prompt)`.
    """
    out = Path(out)
    sets = read_candidate_sets(candidates, "train")
    prompts = [recommend_messages(cs, answer, templates) for cs in sets]
    model = load_model(teacher.llm, artifacts_dir, out / "cache" / "teacher.sqlite")
    results = generate_parsed(model, prompts, answer_parsers(sets, answer), teacher.sampling, n=teacher.best_of,
                              max_retries=teacher.max_parse_retries)
    rows, kept_rows = [], 0
    with open(out / "sft.jsonl", "w") as fh:
        for cs, messages, samples in zip(sets, prompts, results, strict=True):
            k = wanted_picks(cs, answer)
            quality = [answer_scores(p.value, p.text, cs, k).quality if p.valid else None for p in samples]
            valid = [j for j, p in enumerate(samples) if p.valid]
            kept = max(valid, key=lambda j: (quality[j], -j)) if valid else None
            for j, parsed in enumerate(samples):
                rows.append({
                    "case_id": cs.set_id, "sample": j, "text": parsed.text, "valid": parsed.valid,
                    "attempts": parsed.attempts,
                    "error": parsed.errors[-1] if parsed.errors and not parsed.valid else None,
                    "quality": quality[j], "kept": j == kept, "prompt_tokens": parsed.prompt_tokens,
                    "completion_tokens": parsed.completion_tokens, "latency_s": parsed.latency_s,
                })
            if kept is not None:
                kept_rows += 1
                reply = {"role": "assistant", "content": samples[kept].text.strip()}
                fh.write(json.dumps({"messages": [*messages, reply], "case_id": cs.set_id}) + "\n")
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(out / "generations.parquet")
    samples = [p for s in results for p in s]
    stats = {
        "sets": len(sets),
        **validity_stats(samples),
        "sft_rows": kept_rows,
        "best_of": teacher.best_of,
        "model": teacher.llm.model,
        "usage": usage_counts(model),
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    if kept_rows == 0:
        raise ValueError(f"reclaif_teacher: none of the teacher's {len(samples)} answers is valid "
                         f"(first problem: {samples[0].errors[-1] if samples[0].errors else 'none'}); "
                         "nothing to fine-tune on: raise teacher.sampling.max_new_tokens or teacher.max_parse_retries, "
                         "or use a stronger teacher")


@reads(answer=ALL, recommender=ALL, templates=("answer.prompt",))
def reclaif_template_teacher(
    out: Path, *, answer: ReclaifAnswerConfig, recommender: RecommenderConfig, candidates: Path, data: Path,
    templates: dict[str, str],
) -> None:
    """The `template` teacher: the classic recommender (`recommender.model`, fit on the train
    split, so it never sees the train sets' targets) ranks each train set's candidates and
    `template_answer` writes its top k in RecLAIF's format. Writes the same files as
    `reclaif_teacher` (sft.jsonl, generations.parquet, stats.json); every answer is checked by
    `parse_recommendation`. `templates`: `read_templates(answer.prompt)`."""
    out = Path(out)
    sets = read_candidate_sets(candidates, "train")
    interactions = read_interactions(Path(data)).filter(pl.col("split") == "train")
    rec = fit_recommender(recommender, interactions)
    matrix = np.array([[c.item_id for c in cs.candidates] for cs in sets], dtype=np.int64)
    scores = score_candidates(rec, [cs.user_id for cs in sets], matrix)
    order = np.argsort(-scores, axis=1, kind="stable")
    rows, invalid, ranks, positions = [], [], [], []
    with open(out / "sft.jsonl", "w") as fh:
        for i, cs in enumerate(sets):
            k = wanted_picks(cs, answer)
            ranking = matrix[i, order[i]].tolist()
            text = template_answer(cs, ranking, k)
            parsed = parse_recommendation(text, cs.candidates, k, answer.fuzzy_threshold)
            if not parsed.valid or parsed.picks != ranking[:k]:  # a template bug, not a model's slip: report it
                invalid.append(f"{cs.set_id}: {'; '.join(parsed.problems) or 'picks differ from the ranking'}")
            ranks.append(parsed.rank_of(cs.target.item_id))
            positions += [shown_position(cs, item) for item in ranking[:k]]
            messages = recommend_messages(cs, answer, templates)
            fh.write(
                json.dumps({"messages": [*messages, {"role": "assistant", "content": text}], "case_id": cs.set_id})
                + "\n"
            )
            rows.append({"case_id": cs.set_id, "sample": 0, "text": text, "valid": parsed.valid, "kept": True,
                         "quality": answer_scores(parsed, text, cs, k).quality})
    if invalid:
        raise ValueError(f"template teacher wrote answers its own parser rejects: {invalid[:3]}")
    pl.DataFrame(rows).write_parquet(out / "generations.parquet")
    # What the SFT rows teach about ranking: how often the answer holds the next movie, and where.
    stats = {"sets": len(sets), "samples": len(sets), "validity_ratio": 1.0, "sft_rows": len(sets),
             "teacher": f"template ({recommender.model})",
             "next_movie_in_answer": round(float(np.mean([r <= answer.top_k for r in ranks])), 4),
             "next_movie_ranks": {str(r): sum(int(x) == r for x in ranks if x <= answer.top_k)
                                  for r in range(1, answer.top_k + 1)},
             "mean_pick_position": round(float(np.mean(positions)), 2)}
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
