"""RecLAIF stage 3, per round r (Algorithm 1, step 1), `reclaif_sample_pairs`: two answers per
train set from the current student (or the teacher), for `reclaif_judge_pairs`
(tasks/reclaif/judge.py) to pick one.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from recxplain.config import PairsConfig, ReclaifAnswerConfig, TeacherConfig, TrainingConfig
from recxplain.llm import release_models
from recxplain.models import pair_sampler_llm
from recxplain.prompts import usage_counts
from recxplain.reclaif import read_candidate_sets
from recxplain.reclaif.answers import load_model, parse_recommendation, recommend_messages, wanted_picks
from recxplain.stage import ALL, reads


@reads(answer=ALL, pairs=ALL, teacher=ALL, training=("base_model", "thinking"), templates=("answer.prompt",))
def reclaif_sample_pairs(
    out: Path,
    *,
    answer: ReclaifAnswerConfig,
    pairs: PairsConfig,
    teacher: TeacherConfig,
    training: TrainingConfig,
    candidates: Path,
    student: Path | None,
    templates: dict[str, str],
    artifacts_dir: Path,
) -> None:
    """Write pairs.parquet (case_id = set_id, text_a, text_b, source, prompt as JSON messages,
    model, valid_a, valid_b) and stats.json: two samples per train set at `pairs.sampling`.

    From the student in `student` (pairs.source `student`, RecLAIF) or the teacher. Samples are
    not re-asked (an invalid answer is what the judge should reject); identical twins carry no
    preference and are dropped.
    """
    out = Path(out)
    cfg = pair_sampler_llm(pairs, teacher, training, student)
    sets = read_candidate_sets(candidates, "train")
    prompts = [recommend_messages(cs, answer, templates) for cs in sets]
    model = load_model(cfg, artifacts_dir, out / "cache" / "pairs.sqlite")
    outputs = model.generate(prompts, pairs.sampling, n=2)
    usage = usage_counts(model)
    model = None  # one model in memory at a time
    release_models()
    rows, identical, tokens = [], 0, 0
    name = cfg.model if cfg.adapter is None else f"{cfg.model}+{cfg.adapter}"
    for cs, messages, samples in zip(sets, prompts, outputs, strict=True):
        text_a, text_b = (g.text.strip() for g in samples)
        tokens += sum(g.completion_tokens for g in samples)
        if " ".join(text_a.split()) == " ".join(text_b.split()):
            identical += 1
            continue
        k = wanted_picks(cs, answer)
        valid_a, valid_b = (
            parse_recommendation(t, cs.candidates, k, answer.fuzzy_threshold).valid for t in (text_a, text_b)
        )
        rows.append({"case_id": cs.set_id, "text_a": text_a, "text_b": text_b, "source": pairs.source,
                     "prompt": json.dumps(messages), "model": name, "valid_a": valid_a, "valid_b": valid_b})
    schema = {"case_id": pl.String, "text_a": pl.String, "text_b": pl.String, "source": pl.String,
              "prompt": pl.String, "model": pl.String, "valid_a": pl.Boolean, "valid_b": pl.Boolean}
    pl.DataFrame(rows, schema=schema).write_parquet(out / "pairs.parquet")
    answers = 2 * len(rows)
    stats = {
        "sets": len(sets), "pairs": len(rows), "identical_dropped": identical, "source": pairs.source, "model": name,
        "validity_ratio": round(sum(r["valid_a"] + r["valid_b"] for r in rows) / answers, 4) if answers else None,
        "completion_tokens": tokens, "usage": usage,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
