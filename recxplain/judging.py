"""Judging explanations: verifiable rubric checks, an LLM judge, their ensemble, and their statistics.

Three judges compare two explanations (A, B) of one case:
- `rubric`: the verifiable checks of `recxplain.checks` (complete, within length bounds, no
  repetition loop, grounded in the evidence, no false claims about the user's ratings, no
  technical leftovers, names the recommended movie; plus a graded specificity), the same checks
  the evaluation grades with. Order-independent, but blind to style, tone and persuasiveness.
- `llm`: a language model reads the evidence and both explanations and answers with a structured
  verdict (`PairVerdict`: 0-5 scores for relevance, diversity, explainability and faithfulness
  per candidate, then A, B, tie or both_bad). Every pair is judged in both orders; only an
  order-consistent choice counts. Sees style, but a small model is close to chance and
  position-biased.
- `ensemble`: margin = w * LLM choice (+1 A, -1 B, 0 when tie, both-bad, inconsistent or invalid)
  + (1 - w) * (rubric score A - rubric score B), w = `judge.llm_weight`; the rubric alone decides
  when both candidates are unacceptable (`acceptable`: complete, within length bounds, no loop,
  check score >= `judge.min_rubric_score`), which makes the pair both-bad.
- `discriminator` (LLMXRec): the preference pairs are judged by `judge.discriminator.base`
  (`base_judge`), and a LoRA model trained on its verdicts (recxplain/discriminator.py, stage
  tasks/discriminator.py) judges the evaluation tournament (`make_pair_judge`).

Verdicts: "a", "b" (kept as preference pairs), "tie", "both_bad" (rejected, as in the first
seed), "inconsistent" (the two orders disagree), "invalid" (unparsable after retries).

Used by the `judge_pairs` stage (tasks/judge.py), RecLAIF's judge (recxplain/reclaif/judge.py) and the
evaluation (tasks/evaluate.py): `parse_verdict`, `judge_explanation_pairs` (and
`judge_explanation_pair` for one), `judge_stats`, `explainability_scores` (RecLAIF's 1-100 score),
`load_judge_model`, and the evaluation's adapters `make_pair_judge` and
`make_explainability_scorer`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from recxplain import discriminator as disc
from recxplain.checks import Catalogue, CheckResult, check_explanation
from recxplain.config import DiscriminatorConfig, JudgeConfig
from recxplain.llm import load_chat_model
from recxplain.prompts import (
    ChatModel,
    Parsed,
    Templates,
    generate_parsed,
    read_templates,
    render_messages,
)
from recxplain.schemas import Case

Verdict = Literal["a", "b", "tie", "both_bad", "inconsistent", "invalid"]

# ---------------------------------------------------------------------------------------------
# Parsing an LLM judge's answer


class CandidateScores(BaseModel):
    """One candidate's 0-5 scores (RecLAIF's three criteria plus faithfulness to the evidence)."""

    relevance: float = Field(ge=0, le=5)
    diversity: float = Field(ge=0, le=5)
    explainability: float = Field(ge=0, le=5)
    faithfulness: float | None = Field(None, ge=0, le=5)  # absent in RecLAIF's own format

    @property
    def quality(self) -> float:
        """Mean of the given scores, scaled to 0-1."""
        values = [v for v in (self.relevance, self.diversity, self.explainability, self.faithfulness) if v is not None]
        return sum(values) / (5 * len(values))


class PairVerdict(BaseModel):
    """A judge's structured answer for one ordering: scores of A and B, then its choice.
    Scores are None when the judge named only its choice (a bare "A", "Option B")."""

    a: CandidateScores | None = None
    b: CandidateScores | None = None
    choice: Literal["a", "b", "tie", "both_bad"]
    reasoning: str = ""

    def swapped(self) -> PairVerdict:
        """The same verdict with A and B exchanged (maps a (B, A) judgement back)."""
        return PairVerdict(a=self.b, b=self.a, choice=swap_choice(self.choice), reasoning=self.reasoning)


def extract_json(text: str) -> dict:
    """The first JSON object in `text`: inside a ``` fence or surrounded by prose."""
    fenced = re.findall(r"```(?:json)?\s*(.*?)```", text, re.DOTALL | re.IGNORECASE)
    decoder = json.JSONDecoder()
    for chunk in [*fenced, text]:
        for start in (i for i, ch in enumerate(chunk) if ch == "{"):
            try:
                value, _ = decoder.raw_decode(chunk, start)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise ValueError("no JSON object found in the answer")


def _key(name: str) -> str:
    name = re.sub(r"[^a-z_]", "", str(name).lower().replace(" ", "_"))
    return {"option_a": "a", "optiona": "a", "option_b": "b", "optionb": "b", "chosen": "choice",
            "chosen_option": "choice", "decision": "choice", "winner": "choice", "preferred": "choice",
            "reason": "reasoning"}.get(name, name)


def _choice(value: Any) -> str:
    text = re.sub(r"[^a-z]", " ", str(value).lower()).split()
    text = [t for t in text if t != "option"]
    joined = " ".join(text)
    if joined in ("a", "b"):
        return joined
    if joined in ("tie", "equal", "both good", "both equal", "draw"):
        return "tie"
    if joined in ("both bad", "bothbad", "neither", "none", "reject both", "both rejected"):
        return "both_bad"
    raise ValueError(f'"choice" must be "A", "B", "tie" or "both_bad" (got {value!r})')


def _scores(value: Any, label: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f'"{label}" must be an object of scores (got {value!r})')
    return {re.sub(r"[^a-z]", "", k.lower()).removesuffix("score"): v for k, v in value.items()}


def _verdict_from_json(data: dict) -> PairVerdict:
    data = {_key(k): v for k, v in data.items()}
    missing = [k for k in ("a", "b", "choice") if k not in data]
    if missing:
        raise ValueError(f"the JSON object lacks {', '.join(map(repr, missing))}; it needs \"A\", \"B\" and \"choice\"")
    try:
        return PairVerdict(
            a=_scores(data["a"], "A"), b=_scores(data["b"], "B"), choice=_choice(data["choice"]),
            reasoning=str(data.get("reasoning", "")),
        )
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in err.errors())
        raise ValueError(f"invalid scores: {problems}") from None


def _verdict_from_reclaif_text(text: str) -> PairVerdict:
    """RecLAIF's free-text format: "Option A Evaluation: - Relevance Score: 4 ..." "Chosen Option: A"."""
    sections = re.split(r"option\s+b\s+evaluation", text, flags=re.IGNORECASE)
    if len(sections) != 2 or not re.search(r"option\s+a\s+evaluation", sections[0], re.IGNORECASE):
        raise ValueError("no JSON object found in the answer")
    scores = []
    for section in sections:
        section = re.split(r"decision\s*:", section, flags=re.IGNORECASE)[0]
        found = {}
        for name in ("relevance", "diversity", "explainability", "faithfulness"):
            match = re.search(rf"{name}\s*(?:score)?\s*:?\s*\**\s*(\d+(?:\.\d+)?)", section, re.IGNORECASE)
            if match:
                found[name] = float(match.group(1))
        scores.append(found)
    choice = re.search(
        r"chosen\s+option\s*:?\s*\**\s*\[?([A-Za-z_ ]+?)\]?\s*(?:$|\n|\*)", text, re.IGNORECASE | re.MULTILINE
    )
    if not choice:
        raise ValueError('no "Chosen Option: A or B" line found in the answer')
    reasoning = re.search(r"reasoning\s*:\s*(.*)", text, re.IGNORECASE | re.DOTALL)
    return _verdict_from_json({"a": scores[0], "b": scores[1], "choice": choice.group(1),
                               "reasoning": reasoning.group(1).strip() if reasoning else ""})


_BARE_CHOICE = re.compile(
    r"^\W*(?:(?:i\s+)?(?:choose|pick|prefer|select)\s+|(?:you\s+can\s+)?choose\s+)?(?:option\s+|answer\s*:?\s*|choice\s*:?\s*)?"
    r"(a|b|tie|both[\s_]bad|neither)\W*$",
    re.IGNORECASE,
)


def _bare_choice(text: str) -> PairVerdict:
    """A short answer that only names the choice ("A", "Option B.", "You can choose option A.")."""
    match = _BARE_CHOICE.match(text.strip()) if len(text.split()) <= 8 else None
    if not match:
        raise ValueError("no JSON object found in the answer; answer with one JSON object in the form shown")
    return PairVerdict(choice=_choice(match.group(1)))


def parse_verdict(text: str) -> PairVerdict:
    """Parse a judge's answer: a JSON object (bare, fenced or amid prose), else RecLAIF's text
    format, else a short answer naming only the choice (then without scores: small models often
    answer just "A", and counting that as a choice lets their position bias show in the stats).
    Raises ValueError with a message the judge can act on when it is none of these."""
    try:
        data = extract_json(text)
    except ValueError:
        try:
            return _verdict_from_reclaif_text(text)
        except ValueError:
            return _bare_choice(text)
    return _verdict_from_json(data)


def parse_score(text: str) -> int:
    """RecLAIF's 1-100 explainability score from {"score": n}, "Score: n" or a lone number."""
    try:
        value = extract_json(text).get("score")
    except ValueError:
        match = re.search(r"score\s*[:=]?\s*(\d+(?:\.\d+)?)", text, re.IGNORECASE) or re.fullmatch(
            r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*100)?\s*\.?\s*", text
        )
        value = match.group(1) if match else None
    if value is None:
        raise ValueError('no score found; answer with JSON like {"score": 50, "reason": "one sentence"}')
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise ValueError(f'"score" must be a number from 1 to 100 (got {value!r})') from None
    if not 1 <= score <= 100:
        raise ValueError(f'"score" must be from 1 to 100 (got {value!r})')
    return int(round(score))


# ---------------------------------------------------------------------------------------------
# Judging pairs


class PairJudgement(BaseModel):
    """The outcome of judging explanations A and B of one case.

    Attributes:
        verdict: "a", "b", "tie", "both_bad", "inconsistent" or "invalid".
        score_a / score_b: each candidate's quality in 0-1 as the configured judge sees it (llm:
            mean 0-5 score / 5 over both orders; rubric: `CheckResult.score`; ensemble: the
            weighted mix), None when it could not be computed.
        llm_choice: the LLM's order-consistent choice, "inconsistent", "invalid", or None (no LLM).
        llm_ab / llm_ba: the LLM's parsed verdicts with A shown first / B shown first; `llm_ba`
            is already mapped back to the original labels.
        raw_ab / raw_ba: the LLM's raw answers (every attempt) for each order.
        rubric_a / rubric_b: rubric results (rubric and ensemble judges).
    """

    verdict: Verdict
    score_a: float | None = None
    score_b: float | None = None
    llm_choice: str | None = None
    llm_ab: PairVerdict | None = None
    llm_ba: PairVerdict | None = None
    raw_ab: list[str] = []
    raw_ba: list[str] = []
    rubric_a: CheckResult | None = None
    rubric_b: CheckResult | None = None

    @property
    def kept(self) -> bool:
        return self.verdict in ("a", "b")

    @property
    def order_consistent(self) -> bool | None:
        """Whether the LLM gave the same (mapped) choice in both orders; None without both."""
        if self.llm_ab is None or self.llm_ba is None:
            return None
        return self.llm_ab.choice == self.llm_ba.choice


def base_judge(judge: JudgeConfig) -> JudgeConfig:
    """The judge of the preference pairs: `judge` itself, or for `kind: discriminator` its base
    judge (`judge.discriminator.base` with the other settings). The discriminator section is
    reset to its defaults, so a rubric run and a discriminator run on a rubric base share their
    judge_pairs stages (and everything trained on them) in the cache."""
    if judge.kind != "discriminator":
        return judge
    return judge.model_copy(update={"kind": judge.discriminator.base, "discriminator": DiscriminatorConfig()})


def load_judge_model(judge: JudgeConfig, artifacts_dir: Path, cache_path: Path | None = None) -> ChatModel | None:
    """The judge's language model (None for the rubric judge, which needs none)."""
    judge = base_judge(judge)
    if judge.kind == "rubric":
        return None
    return load_chat_model(judge.llm, artifacts_dir, cache_path)


def _context(item: Case | Mapping[str, Any]) -> dict[str, Any]:
    """Template variables of a judged item: a Case renders as `case`; a mapping is passed as is
    (RecLAIF's judge of recommendation answers renders history, candidates and label)."""
    return dict(item) if isinstance(item, Mapping) else {"case": item}


def _llm_verdicts(
    items: Sequence[tuple[Case, str, str]], judge: JudgeConfig, templates: Templates, model: ChatModel
) -> tuple[list[Parsed], list[Parsed | None]]:
    prompts = [render_messages(judge.prompt, templates, **_context(c), option_a=a, option_b=b) for c, a, b in items]
    if judge.both_orders:
        prompts += [
            render_messages(judge.prompt, templates, **_context(c), option_a=b, option_b=a) for c, a, b in items
        ]
    parsed = [
        p[0]
        for p in generate_parsed(model, prompts, parse_verdict, judge.sampling, max_retries=judge.max_parse_retries)
    ]
    ab = parsed[: len(items)]
    ba = parsed[len(items) :] if judge.both_orders else [None] * len(items)
    return ab, ba


def acceptable(result: CheckResult, min_score: float) -> bool:
    """The rubric's gate: a usable answer (complete, within the length bounds, no loop) with a
    check score of at least `min_score`."""
    return result.usable and result.score >= min_score


def swap_choice(choice: str) -> str:
    """A choice as read with the two options exchanged: "a" <-> "b"; anything else unchanged."""
    return {"a": "b", "b": "a"}.get(choice, choice)


def decide_verdict(margin: float, any_acceptable: bool, judge: JudgeConfig) -> Verdict:
    """The verdict of a score margin (A's minus B's): both-bad when neither answer is acceptable,
    a tie below `judge.tie_margin`, else the side the margin favours. Shared by the explanation
    judge and RecLAIF's recommendation judge (recxplain/reclaif/judge.py)."""
    if not any_acceptable:
        return "both_bad"
    if abs(margin) < judge.tie_margin:
        return "tie"
    return "a" if margin > 0 else "b"


def judge_explanation_pairs(
    items: Sequence[tuple[Case, str, str]],
    *,
    judge: JudgeConfig,
    templates: Templates | None = None,
    model: ChatModel | None = None,
    catalogue: Catalogue | None = None,
) -> list[PairJudgement]:
    """Judge each (case, explanation A, explanation B) with the configured judge.

    For the `llm` judge the first element may also be a mapping of template variables instead
    of a Case (recxplain/reclaif/judge.py judges recommendation answers this way); the rubric needs a Case.

    `templates` must hold `judge.prompt` and `model` must be given for the `llm` and `ensemble`
    judges (see `load_judge_model`); all LLM calls go out as one batch per retry round. With
    `judge.both_orders` each pair is also judged as (B, A) and the LLM's choice counts only when
    both orders agree. The ensemble asks the LLM only where its vote can change the verdict
    (`vote_can_change_verdict`); elsewhere `llm_choice` stays None.
    """
    if judge.kind == "discriminator":
        raise ValueError("judge.kind 'discriminator' judges the evaluation tournament only; judge pairs with "
                         "base_judge(judge), its base judge (judge.discriminator.base)")
    needs_llm = judge.kind in ("llm", "ensemble")
    if needs_llm and (model is None or templates is None):
        raise ValueError(f"judge.kind={judge.kind!r} needs a model and the judge template ({judge.prompt})")
    rubrics: list[tuple[CheckResult, CheckResult] | None] = [None] * len(items)
    if judge.kind in ("rubric", "ensemble"):
        bounds = {"catalogue": catalogue, "min_words": judge.min_words, "max_words": judge.max_words}
        rubrics = [(check_explanation(case, a, **bounds), check_explanation(case, b, **bounds)) for case, a, b in items]
    # The ensemble asks only where the vote can matter; two identical texts get no vote either
    # way (the LLM's two orders cannot agree on one of them).
    ask = [i for i, ((_, text_a, text_b), rubric) in enumerate(zip(items, rubrics)) if judge.kind == "llm"
           or (judge.kind == "ensemble" and " ".join(text_a.split()) != " ".join(text_b.split())
               and vote_can_change_verdict(*_margin_and_gate(rubric, judge), judge))]
    ab: list[Parsed | None] = [None] * len(items)
    ba: list[Parsed | None] = [None] * len(items)
    if ask:
        asked_ab, asked_ba = _llm_verdicts([items[i] for i in ask], judge, templates, model)
        for i, first, second in zip(ask, asked_ab, asked_ba, strict=True):
            ab[i], ba[i] = first, second

    judgements = []
    for first, second, rubric in zip(ab, ba, rubrics):
        out: dict[str, Any] = {}
        llm_a = llm_b = None
        if first is not None:
            verdict_ab = first.value
            verdict_ba = second.value.swapped() if second is not None and second.valid else None
            out.update(llm_ab=verdict_ab, llm_ba=verdict_ba, raw_ab=first.raw, raw_ba=second.raw if second else [])
            valid = [v for v in (verdict_ab, verdict_ba) if v is not None]
            if verdict_ab is None or (second is not None and verdict_ba is None):
                out["llm_choice"] = "invalid"
            elif verdict_ba is None or verdict_ab.choice == verdict_ba.choice:
                out["llm_choice"] = verdict_ab.choice
            else:
                out["llm_choice"] = "inconsistent"
            scored = [v for v in valid if v.a is not None and v.b is not None]
            if scored:
                llm_a = sum(v.a.quality for v in scored) / len(scored)
                llm_b = sum(v.b.quality for v in scored) / len(scored)

        if judge.kind == "llm":
            verdict = out["llm_choice"]
            score_a, score_b = llm_a, llm_b
        else:
            out["rubric_a"], out["rubric_b"] = rubric
            r_a, r_b = rubric[0].score, rubric[1].score
            verdict = ensemble_verdict(out.get("llm_choice"), *_margin_and_gate(rubric, judge), judge)
            if llm_a is None:
                score_a, score_b = r_a, r_b
            else:
                w = judge.llm_weight
                score_a, score_b = w * llm_a + (1 - w) * r_a, w * llm_b + (1 - w) * r_b
        judgements.append(PairJudgement(verdict=verdict, score_a=score_a, score_b=score_b, **out))
    return judgements


def ensemble_verdict(llm_choice: str | None, rubric_margin: float, gate: bool, judge: JudgeConfig) -> Verdict:
    """The rubric or ensemble verdict: margin = w * vote + (1 - w) * rubric margin, where the vote
    is +1 / -1 for an LLM choice of "a" / "b" (0 otherwise: tie, both-bad, inconsistent, invalid,
    not asked) and w = `judge.llm_weight` for the ensemble, 0 for the rubric judge; both-bad
    when `gate` is False (no answer acceptable). Shared with RecLAIF's judge (recxplain/reclaif/judge.py)."""
    w = judge.llm_weight if judge.kind == "ensemble" else 0.0
    vote = {"a": 1.0, "b": -1.0}.get(llm_choice, 0.0)
    return decide_verdict(w * vote + (1 - w) * rubric_margin, gate, judge)


def vote_can_change_verdict(rubric_margin: float, gate: bool, judge: JudgeConfig) -> bool:
    """Whether the ensemble's LLM vote can change `ensemble_verdict` here: not when no answer
    passes the gate, nor when the rubric margin outweighs any vote. Each question the LLM is
    spared is two long prompts (both orders)."""
    return len({ensemble_verdict(choice, rubric_margin, gate, judge) for choice in ("a", None, "b")}) > 1


def _margin_and_gate(rubric: tuple[CheckResult, CheckResult], judge: JudgeConfig) -> tuple[float, bool]:
    """A's rubric score minus B's, and whether either explanation passes the rubric's gate."""
    return rubric[0].score - rubric[1].score, any(acceptable(r, judge.min_rubric_score) for r in rubric)


def judge_explanation_pair(case: Case, text_a: str, text_b: str, **kwargs: Any) -> PairJudgement:
    """`judge_explanation_pairs` for a single pair (same keyword arguments)."""
    return judge_explanation_pairs([(case, text_a, text_b)], **kwargs)[0]


def explainability_scores(
    items: Sequence[tuple[Case, str]],
    *,
    judge: JudgeConfig,
    templates: Templates,
    model: ChatModel,
) -> list[Parsed]:
    """RecLAIF's explainability score (1-100) for each (case, explanation), from `model` with the
    `judge.explainability_prompt` template; `.value` is the int score, None when invalid."""
    prompts = [
        render_messages(judge.explainability_prompt, templates, case=case, explanation=text) for case, text in items
    ]
    return [
        p[0] for p in generate_parsed(model, prompts, parse_score, judge.sampling, max_retries=judge.max_parse_retries)
    ]



def judge_stats(judgements: Sequence[PairJudgement]) -> dict:
    """Counts of a judging run: pairs judged, pairs the LLM was asked about, kept, ties, both-bad,
    order-inconsistent, invalid, the LLM's position-bias rate (share of pairs with valid verdicts
    in both orders whose choices disagree) and its validity ratio (share of LLM judgements that
    parsed)."""
    count = {
        v: sum(j.verdict == v for j in judgements) for v in ("a", "b", "tie", "both_bad", "inconsistent", "invalid")
    }
    both = [j for j in judgements if j.order_consistent is not None]
    llm_runs = [r for j in judgements if j.llm_choice is not None for r in (j.raw_ab, j.raw_ba) if r]
    llm_valid = sum(j.llm_ab is not None for j in judgements if j.raw_ab) + sum(
        j.llm_ba is not None for j in judgements if j.raw_ba
    )
    return {
        "pairs_judged": len(judgements),
        "llm_asked": sum(j.llm_choice is not None for j in judgements),
        "kept": count["a"] + count["b"],
        "chosen_a": count["a"],
        "chosen_b": count["b"],
        "ties": count["tie"],
        "both_bad": count["both_bad"],
        "order_inconsistent": count["inconsistent"],
        "invalid": count["invalid"],
        "llm_order_inconsistent": sum(j.llm_choice == "inconsistent" for j in judgements),
        "llm_invalid": sum(j.llm_choice == "invalid" for j in judgements),
        "position_bias_rate": round(sum(not j.order_consistent for j in both) / len(both), 4) if both else None,
        "validity_ratio": round(llm_valid / len(llm_runs), 4) if llm_runs else None,
    }


# ---------------------------------------------------------------------------------------------
# Adapters for the evaluation's tournament and explainability score (tasks/evaluate.py)


def make_pair_judge(judge: JudgeConfig, artifacts_dir: Path, cache_dir: Path, templates: Templates | None = None,
                    catalogue: Catalogue | None = None, model: ChatModel | None = None,
                    discriminator: Path | None = None):
    """A function (case, text_a, text_b) triples -> (verdict with A shown first, verdict with B
    shown first or None) each, both as shown: "a", "b", "tie", "both_bad" or "invalid".

    The `llm` judge answers each order on its own (the caller sees its position bias). The
    rubric and ensemble judges give one verdict whatever the order (the ensemble's LLM votes
    only when its two orders agree, `judge_explanation_pairs`), returned for both orders when
    `judge.both_orders`: a position-biased 135M judge would otherwise cast a vote for whichever
    answer is shown first, and every pair would come out a tie. `model`: the judge's language
    model (default: `load_judge_model`). `kind: discriminator` needs `discriminator`, the
    train_discriminator folder, and `templates` holding `judge.discriminator.prompt`; its
    verdicts come from the trained model's scores (`recxplain.discriminator.pair_judge`).
    """
    if judge.kind == "discriminator":
        if discriminator is None:
            raise ValueError("judge.kind 'discriminator' needs the train_discriminator stage's folder")
        templates = templates if templates is not None else read_templates(judge.discriminator.prompt)
        return disc.pair_judge(Path(discriminator) / disc.ADAPTER, judge.discriminator, templates, artifacts_dir,
                               both_orders=judge.both_orders)
    if model is None:
        model = load_judge_model(judge, artifacts_dir, Path(cache_dir) / "judge.sqlite")
    templates = templates if templates is not None else read_templates(judge.prompt)

    def both(j: PairJudgement) -> tuple[str, str | None]:
        if judge.kind == "llm":
            ab = j.llm_ab.choice if j.llm_ab is not None else "invalid"
            if not judge.both_orders:
                return ab, None
            return ab, swap_choice(j.llm_ba.choice) if j.llm_ba is not None else "invalid"
        return j.verdict, swap_choice(j.verdict) if judge.both_orders else None

    def judge_requests(requests: list[tuple[Case, str, str]]) -> list[tuple[str, str | None]]:
        judged = judge_explanation_pairs(requests, judge=judge, templates=templates, model=model, catalogue=catalogue)
        return [both(j) for j in judged]

    return judge_requests


def make_explainability_scorer(judge: JudgeConfig, artifacts_dir: Path, cache_dir: Path,
                               templates: Templates | None = None):
    """A function (case, text) pairs -> RecLAIF's 1-100 explainability score each (None when
    unparsable), from the judge's language model (`judge.llm`, even for the rubric judge)."""
    model = load_chat_model(judge.llm, artifacts_dir, Path(cache_dir) / "explainability.sqlite")
    templates = templates if templates is not None else read_templates(judge.explainability_prompt)

    def score(requests: list[tuple[Case, str]]) -> list[int | None]:
        return [p.value for p in explainability_scores(requests, judge=judge, templates=templates, model=model)]

    return score
