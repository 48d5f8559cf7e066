"""Judging two RecLAIF answers of one candidate set (RecLAIF Algorithm 1, step 2; the
`reclaif_judge_pairs` stage, tasks/reclaif/judge.py).

The judge (`judge_recommendation_pairs`) reuses recxplain/judging.py: the LLM verdict, both
orders and order consistency come from `judge_explanation_pairs` with the RecLAIF template; the
`rubric` (`answer_scores`) is the verifiable counterpart for recommendation answers: relevance
from the rank of the next movie among the picks, diversity from the picks' genres,
explainability from the preferences and reasons given; `ensemble` mixes them as the explanation
judge does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recxplain.config import JudgeConfig, ReclaifAnswerConfig
from recxplain.judging import (
    CandidateScores,
    PairJudgement,
    ensemble_verdict,
    judge_explanation_pairs,
    vote_can_change_verdict,
)
from recxplain.prompts import ChatModel, Templates
from recxplain.reclaif import CandidateSet
from recxplain.reclaif.answers import (
    RecommendationAnswer,
    answer_scores,
    judge_context,
    parse_recommendation,
    wanted_picks,
)


@dataclass
class RecommendationJudgement:
    """The judgement of answers A and B of one candidate set: the judge's `PairJudgement` (verdict,
    LLM verdicts of both orders, 0-1 scores) plus the parsed answers and their rubric scores."""

    judgement: PairJudgement
    answer_a: RecommendationAnswer
    answer_b: RecommendationAnswer
    rubric_a: CandidateScores
    rubric_b: CandidateScores


def judge_recommendation_pairs(
    items: Sequence[tuple[CandidateSet, str, str]],
    *,
    judge: JudgeConfig,
    answer: ReclaifAnswerConfig,
    templates: Templates | None = None,
    model: ChatModel | None = None,
) -> list[RecommendationJudgement]:
    """Judge each (candidate set, answer A, answer B) with the configured judge.

    `llm`: RecLAIF's judge through `recxplain.judging.judge_explanation_pairs` (both orders when
    judge.both_orders, order-consistent choices only; score = mean 0-5 score / 5). `rubric`:
    the rank of the next movie first: when the answers' relevance differs (one ranks the next
    movie higher in its top k), the higher-ranking answer wins if it is valid, and the pair is a
    tie if it is not (a broken answer that happens to name the next movie would teach the broken
    format, a valid one that misses it would teach missing it); a relevance sum of 0.5 x 5 over
    the three criteria would otherwise let genre diversity outvote a hit. Equal relevance:
    validity, both-bad when neither answer is valid, the valid one when only one is (teaching
    the format is the point of the first rounds); between two valid answers the `answer_scores`
    quality margin decides (tie below judge.tie_margin). `ensemble`: the same rules, then margin
    = w * LLM vote + (1 - w) * rubric margin, w = judge.llm_weight. The LLM cannot change a
    rank or validity decision, so the ensemble asks it only about pairs of two valid answers of
    equal relevance whose verdict its vote can change (each question is two long generations;
    `llm_choice` stays None for the rest).
    """
    needs_llm = judge.kind in ("llm", "ensemble")
    if needs_llm and (model is None or templates is None):
        raise ValueError(f"judge.kind={judge.kind!r} needs a model and the judge template ({judge.prompt})")
    parsed = [tuple(parse_recommendation(t, cs.candidates, wanted_picks(cs, answer), answer.fuzzy_threshold)
                    for t in (text_a, text_b)) for cs, text_a, text_b in items]
    rubrics = [tuple(answer_scores(p, t, cs, wanted_picks(cs, answer)) for p, t in zip(pair, (text_a, text_b)))
               for pair, (cs, text_a, text_b) in zip(parsed, items)]

    ask = [i for i, ((pa, pb), (ra, rb)) in enumerate(zip(parsed, rubrics)) if judge.kind == "llm"
           or (judge.kind == "ensemble" and pa.valid and pb.valid and ra.relevance == rb.relevance
               and vote_can_change_verdict(ra.quality - rb.quality, True, judge))]
    llm: list[PairJudgement | None] = [None] * len(items)
    if ask:
        verdicts = judge_explanation_pairs([(judge_context(items[i][0]), items[i][1], items[i][2]) for i in ask],
                                           judge=judge.model_copy(update={"kind": "llm"}), templates=templates,
                                           model=model)
        for i, found in zip(ask, verdicts, strict=True):
            llm[i] = found
    judged = []
    for (parsed_a, parsed_b), (rubric_a, rubric_b), verdict_llm in zip(parsed, rubrics, llm, strict=True):
        gate = parsed_a.valid or parsed_b.valid
        fields: dict[str, Any] = {}
        if verdict_llm is not None:
            fields = {
                name: getattr(verdict_llm, name) for name in ("llm_choice", "llm_ab", "llm_ba", "raw_ab", "raw_ba")
            }
        w = judge.llm_weight
        score_a, score_b = rubric_a.quality, rubric_b.quality
        if judge.kind == "llm":
            verdict, score_a, score_b = verdict_llm.verdict, verdict_llm.score_a, verdict_llm.score_b
        elif rubric_a.relevance != rubric_b.relevance:
            higher_a = rubric_a.relevance > rubric_b.relevance
            verdict = ("a" if higher_a else "b") if (parsed_a if higher_a else parsed_b).valid else "tie"
        elif parsed_a.valid != parsed_b.valid:
            verdict = "a" if parsed_a.valid else "b"
        else:  # rubric (its LLM weight is 0) or ensemble
            choice = verdict_llm.llm_choice if verdict_llm is not None else None
            verdict = ensemble_verdict(choice, rubric_a.quality - rubric_b.quality, gate, judge)
            if judge.kind == "ensemble" and verdict_llm is not None and verdict_llm.score_a is not None:
                score_a = w * verdict_llm.score_a + (1 - w) * rubric_a.quality
                score_b = w * verdict_llm.score_b + (1 - w) * rubric_b.quality
        judged.append(RecommendationJudgement(
            PairJudgement(verdict=verdict, score_a=score_a, score_b=score_b, **fields),
            parsed_a, parsed_b, rubric_a, rubric_b,
        ))
    return judged


def ranking_signal(judged: Sequence[RecommendationJudgement]) -> dict[str, int]:
    """What the judged pairs can teach about ranking: pairs where an answer has the next movie in
    its top k, pairs whose two answers rank it differently, and among the kept pairs those whose
    chosen answer ranks it higher or lower than the rejected one (lower should never happen with
    the rubric and ensemble judges); `rank_vs_format`: pairs left as ties because the answer
    ranking the next movie higher was invalid."""
    differ = [j for j in judged if j.rubric_a.relevance != j.rubric_b.relevance]
    kept = [j for j in differ if j.judgement.kept]

    def chosen_higher(j: RecommendationJudgement) -> bool:
        return (j.rubric_a.relevance > j.rubric_b.relevance) == (j.judgement.verdict == "a")

    return {
        "pairs_with_next_movie": sum(max(j.rubric_a.relevance, j.rubric_b.relevance) > 0 for j in judged),
        "pairs_rank_differs": len(differ),
        "kept_chosen_ranks_higher": sum(chosen_higher(j) for j in kept),
        "kept_chosen_ranks_lower": sum(not chosen_higher(j) for j in kept),
        "rank_vs_format": sum(j.judgement.verdict == "tie" for j in differ),
    }


def kept_preferences(folder: Path) -> int:
    """How many preference pairs a reclaif_judge_pairs folder kept (0: nothing for DPO to learn)."""
    path = Path(folder) / "preferences.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0
