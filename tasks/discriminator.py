"""Stage `train_discriminator` (`judge.kind: discriminator`, LLMXRec): learn the judge's preferences.

Reads the pairs every judge_pairs stage kept (the base judge's order-consistent, decisive
verdicts: the teacher's pairs and each DPO round's) and, when `judge.discriminator.arena_votes`
names an export of the arena's votes, people's decisive votes on this run's explanations. Holds
out `judge.discriminator.holdout` of the cases, trains the LoRA reward model of
`recxplain.discriminator` on the rest, and writes into `out`:

- `discriminator/`: the peft adapter with its score head, and the tokenizer (the evaluate
  stage loads it as the tournament's judge);
- `pairs.parquet`: every pair (case_id, source, split, chosen, rejected) with the discriminator's
  two scores and its verdict ("a": it agrees with the judge, "b": it disagrees, "tie");
- `agreement.json`: agreement with the held-out verdicts (and, for comparison, with the training
  pairs it saw), overall and per source, with n, a Wilson 95% interval and a binomial test
  against chance; the arena votes used and left out;
- `training.json`: steps, loss and accuracy per step, device (`run.json`: seconds).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from recxplain import discriminator as disc
from recxplain.config import JudgeConfig
from recxplain.schemas import check_columns, read_cases
from recxplain.stage import ALL, reads, write_run_facts


@reads(judge=ALL, templates=("judge.discriminator.prompt",))
def train_discriminator(
    out: Path,
    *,
    judge: JudgeConfig,
    cases: Path,
    judged: dict[str, Path],
    templates: dict[str, str],
    artifacts_dir: Path,
    explanations: Path | None = None,
    votes_digest: str | None = None,
) -> None:
    """Train the discriminator and measure its agreement with held-out verdicts.

    Args:
        out: the stage folder.
        judge: `judge.discriminator` holds the settings.
        cases: the build_cases folder (train.jsonl, eval.jsonl: the evidence of every pair).
        judged: label -> judge_pairs folder (`preferences`, `preferences_r1`, ...).
        templates: `read_templates(judge.discriminator.prompt)`.
        artifacts_dir: artifacts root (the embedded model's converted copy).
        explanations: the generate_explanations folder, whose texts the arena votes name
            (needed only with `judge.discriminator.arena_votes`).
        votes_digest: sha256 of the votes export (`recxplain.discriminator.file_digest`), so
            that new votes train a new discriminator; not read here.
    """
    del votes_digest  # part of the cache key only
    config = judge.discriminator
    out = Path(out)
    by_id = {c.case_id: c for name in ("train.jsonl", "eval.jsonl") if (Path(cases) / name).exists()
             for c in read_cases(Path(cases) / name)}
    pairs = disc.judged_pairs(judged)
    unknown = sorted({p["case_id"] for p in pairs} - by_id.keys())
    if unknown:
        raise ValueError(f"judged pairs name case_id(s) {unknown[:5]} that are not in {cases}")
    arena = None
    if config.arena_votes is not None:
        if explanations is None:
            raise ValueError("judge.discriminator.arena_votes needs the run's explanations (generate_explanations)")
        path = Path(explanations) / "explanations.parquet"
        texts = pd.read_parquet(path)
        check_columns(texts, "explanations", path)
        voted, arena = disc.arena_pairs(disc.read_votes(config.arena_votes), texts)
        pairs += [p for p in voted if p["case_id"] in by_id]
    if not pairs:
        raise ValueError(f"no pair to train the discriminator on: the judge kept none in {sorted(judged)}"
                         + (" and no decisive arena vote matched" if arena is not None else ""))

    train_pairs, held_out = disc.split_by_case(pairs, config.holdout, config.seed)
    report = disc.train(out, train_pairs, by_id, config, templates, artifacts_dir)
    model, tokenizer = disc.load(out / disc.ADAPTER, config, artifacts_dir)
    rows, measured = [], {}
    for split, part in (("train", train_pairs), ("held_out", held_out)):
        scores = disc.scores(model, tokenizer, [(by_id[p["case_id"]], p[key]) for key in ("chosen", "rejected")
                                                for p in part], config, templates)
        chosen, rejected = scores[: len(part)], scores[len(part) :]
        measured[split] = disc.agreement(part, chosen, rejected, config.tie_margin)
        for p, a, b, verdict in zip(part, chosen, rejected, disc.verdicts(chosen, rejected, config.tie_margin)):
            rows.append(p | {"split": split, "score_chosen": a, "score_rejected": b, "verdict": verdict})
    pd.DataFrame(rows).to_parquet(out / "pairs.parquet", index=False)
    sources = pd.Series([p["source"] for p in pairs]).value_counts().to_dict()
    (out / "agreement.json").write_text(json.dumps({
        "base": config.base, "tie_margin": config.tie_margin, "pairs": len(pairs), "sources": sources,
        "train_pairs": len(train_pairs), "held_out_pairs": len(held_out),
        "held_out_cases": len({p["case_id"] for p in held_out}),
        "held_out": measured["held_out"], "train": measured["train"], "arena": arena,
    }, indent=2))
    write_run_facts(out, train_seconds=report.pop("train_seconds"))
    (out / "training.json").write_text(json.dumps(report, indent=2))
