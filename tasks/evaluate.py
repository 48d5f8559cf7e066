"""Evaluation: every explainer on every metric of the three seeds, with bootstrap 95% intervals.

`evaluate(out, ...)` is the pipeline stage. It reads the held-out cases and the explanations of
every explainer (tasks/explain.py) and writes into `out`:

- `metrics.parquet` / `metrics.json`: one row per (explainer, metric): value, ci_low, ci_high, n.
- `per_explanation.parquet`: the per-explanation values the means are taken over (for drill-down).
- `significance.parquet`: style differences between every pair of explainers (Mann-Whitney U,
  two-sided, Holm-corrected within each metric).
- `tournament.parquet`: the judge's verdict on every pair of explainers on every case in both
  orders, and the order-consistent outcome; `bradley_terry.parquet`, `pairwise.parquet`,
  `win_rates.parquet`: the tournament's statistics (recxplain.stats).
- `attributes.parquet`: LLMXRec attribute prediction accuracy vs random and majority baselines.
- `bias.parquet`: explanation length by user gender (LLMXRec Table 4), difference with its CI.

Metric definitions (all per explanation, then averaged per explainer unless said otherwise):

- `rouge_l`: ROUGE-L F1 against the teacher's explanation of the same case (first seed).
- `domain_terms`, `technical_terms`, `subjective_terms`: occurrences per 100 words of the shipped
  movie vocabulary (recxplain/lexicons/: genres, crew roles, film words), of residual technical
  terms of the evidence (lexicon + id patterns), and of evaluative words of the VADER lexicon
  (genre words excluded: "war" or "horror" describe, they do not judge). `sentiment`: VADER's
  compound score in [-1, 1].
- From the checks of `recxplain.checks` (the same checks label the preference pairs):
  `check_score` (share of checks passed, specificity counting as one more), `passes_checks`
  (every check passes), `loop` (a sentence said twice or a 4-gram said three times),
  `false_rating_claims` (a claim about the user's ratings the history contradicts),
  `faithfulness` (supported claims - evidence titles, genres, correct rating claims - over all
  checkable claims; explanations that make none are left out, n says how many counted),
  `hallucination_rate` (names a title or a name outside the evidence), `mentions_item`.
- "Did alignment help?" (`alignment.parquet`): every trained student against `base` and
  `template` on the same cases: paired differences of validity, check score, loops,
  faithfulness and ROUGE-L with 95% intervals; McNemar for the 0/1 metrics, Wilcoxon
  signed-rank for the scores (`recxplain.stats.paired_comparison`).
- `diversity`: mean pairwise cosine distance between the sentence embeddings of an explainer's
  explanations (RecLAIF); the per-explanation value is its mean distance to the others, whose mean
  is exactly the mean pairwise distance.
- `distinct_1`, `distinct_2`: distinct n-grams over all n-grams of an explainer's explanations
  (Li et al. 2016). A corpus statistic: no interval (a bootstrap with repeated cases is biased).
- `explainability`: the judge's 1-100 score (RecLAIF); `explainability_parsed`: the share of
  explanations whose score the judge gave in a parsable form (unparsable ones are left out).
- `win_ratio`: points / comparisons over the tournament (LLMXRec), a win 1, a tie or both-bad
  0.5 each; `win_ratio_llmxrec` (with `judge.kind: discriminator`): LLMXRec's own count, wins /
  decisive comparisons over all cases (the better explanation 1, the other 0; ties and both-bad
  left out, as LLMXRec's discriminator always picks one), with a bootstrap interval over cases;
  `avg_rank`: per case, explainers ranked by their points (1 = best, ties averaged),
  averaged over cases (LLMXRec's ranking order); `bt_strength`: Bradley-Terry strength.
- `attr_<name>`: attribute prediction accuracy (see tasks/explain.py for the prompt).
- `gender_length_gap`: mean words for female users minus male users.
- `validity`, `words`, `tokens`: format-respecting share, length, cost.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from recxplain import judging
from recxplain.checks import Catalogue, CheckResult, check_explanations
from recxplain.config import EvaluationConfig, JudgeConfig
from recxplain.explainers import AGE_TOLERANCE, STUDENT, attribute_truth
from recxplain.metrics import load_embedder, mean_cosine_distance
from recxplain.prompts import judge_prompts
from recxplain.schemas import Case, check_columns, read_cases
from recxplain.stage import ALL, reads
from recxplain.stats import bootstrap_ci, bradley_terry, paired_comparison, pairwise_tests, win_rate_matrix

log = logging.getLogger(__name__)

LEXICONS = Path(__file__).resolve().parent.parent / "recxplain" / "lexicons"

# Style metrics compared between explainers with a significance test.
STYLE_METRICS = ("domain_terms", "technical_terms", "subjective_terms", "sentiment", "words")

# Identifier-like leftovers of the evidence: typed ids (movie:12, actor:m.0bln8), Freebase ids,
# dotted relation names (film.film.actor) and raw decimal weights (0.83).
TECHNICAL_PATTERNS = re.compile(
    r"\b(?:movie|actor|director|writer|producer|genre|tag|user|item):[\w.]+"
    r"|\bm\.0[0-9a-z_]+"
    r"|\b[a-z_]+\.[a-z_]+\.[a-z_]+\b"
    r"|\b0\.\d{2,}\b"
)

_WORD = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")

# Longest phrase looked up (a title or lexicon term); longer MovieLens titles are matched by their
# first words only. A constant, so lookups cost the same whatever the index holds.
MAX_PHRASE_TOKENS = 16


# --------------------------------------------------------------------------------------------
# Words, phrases, lexicons


def words(text: str) -> list[str]:
    """Lowercase word tokens (apostrophes and hyphens inside a word are kept: sci-fi, children's)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def phrase_index(phrases: Iterable[str]) -> dict[tuple[str, ...], str]:
    """Map each phrase's token tuple (at most MAX_PHRASE_TOKENS) to the phrase, for `find_phrases`."""
    return {tuple(words(p))[:MAX_PHRASE_TOKENS]: p for p in phrases if words(p)}


def find_phrases(tokens: list[str], index: dict[tuple[str, ...], object]) -> list[tuple[int, int, object]]:
    """Non-overlapping occurrences of indexed phrases, longest first at each position.

    Returns (start, end, value) spans over `tokens`. Scanning left to right and taking the longest
    phrase that starts at each position is what a reader does: "science fiction" is one term,
    and "Star Wars" inside "Return of the Jedi" does not match twice.
    """
    if not index:
        return []
    longest = MAX_PHRASE_TOKENS
    spans, i = [], 0
    while i < len(tokens):
        for size in range(min(longest, len(tokens) - i), 0, -1):
            value = index.get(tuple(tokens[i : i + size]))
            if value is not None:
                spans.append((i, i + size, value))
                i += size
                break
        else:
            i += 1
    return spans


def load_lexicon(name: str) -> list[str]:
    """Terms of a shipped lexicon file (`recxplain/lexicons/<name>.txt`), comments skipped."""
    path = LEXICONS / f"{name}.txt"
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.lower() for line in lines if line and not line.startswith("#")]


@lru_cache(maxsize=1)
def _style_indexes() -> tuple[dict, dict, dict, object]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    genres = load_lexicon("genres")
    domain = phrase_index(genres + load_lexicon("crew") + load_lexicon("film_words"))
    technical = phrase_index(load_lexicon("technical_terms"))
    domain_words = frozenset(w for phrase in domain for w in phrase)
    vader = SentimentIntensityAnalyzer()
    # Evaluative words: VADER's lexicon (a maintained, human-rated valence list) minus the movie
    # vocabulary, whose genre names carry valence in VADER but describe rather than judge.
    evaluative = {w: w for w in vader.lexicon if _WORD.fullmatch(w) and w not in domain_words}
    return domain, technical, {(w,): w for w in evaluative}, vader


def style_rates(text: str) -> dict[str, float]:
    """Domain, technical and subjective term rates per 100 words, and VADER's compound sentiment."""
    domain, technical, evaluative, vader = _style_indexes()
    tokens = words(text)
    if not tokens:
        return {"domain_terms": 0.0, "technical_terms": 0.0, "subjective_terms": 0.0, "sentiment": 0.0}
    per100 = 100.0 / len(tokens)
    n_technical = len(find_phrases(tokens, technical)) + len(TECHNICAL_PATTERNS.findall(text.lower()))
    return {
        "domain_terms": len(find_phrases(tokens, domain)) * per100,
        "technical_terms": n_technical * per100,
        "subjective_terms": len(find_phrases(tokens, evaluative)) * per100,
        "sentiment": vader.polarity_scores(text)["compound"],
    }


# --------------------------------------------------------------------------------------------
# Overlap and diversity


def rouge_l(texts: list[str], references: list[str]) -> list[float]:
    """ROUGE-L F1 of each text against its reference (rouge-score, Porter stemming)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, text)["rougeL"].fmeasure for text, ref in zip(texts, references, strict=True)]


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over a set of texts (0 when there are none)."""
    grams = [tuple(t[i : i + n]) for t in map(words, texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


# --------------------------------------------------------------------------------------------
# Tournament (LLMXRec win ratio and ranking order; Bradley-Terry through recxplain.stats)

OUTCOMES = ("a", "b", "tie", "both_bad")
INVALID = "invalid"  # the judge's answer never parsed


def consistent_outcome(verdict_ab: str, verdict_ba: str | None) -> str:
    """Combine the verdicts of (A, B) and of (B, A) into one outcome for A versus B.

    `verdict_ba` is the judge's answer with the texts swapped, so its "a" means B. Agreeing orders
    keep their verdict; disagreeing ones (position bias) count as a tie. An order whose answer
    was invalid is ignored; both invalid gives "invalid" (left out of every statistic).
    """
    for v in (verdict_ab, verdict_ba):
        if v is not None and v not in (*OUTCOMES, INVALID):
            raise ValueError(f"verdict {v!r}: expected one of {(*OUTCOMES, INVALID)}")
    swapped = None if verdict_ba is None else {"a": "b", "b": "a"}.get(verdict_ba, verdict_ba)
    if verdict_ab == INVALID:
        return swapped if swapped is not None else INVALID
    if swapped is None or swapped == INVALID:
        return verdict_ab
    return verdict_ab if verdict_ab == swapped else "tie"


def points(tournament: pd.DataFrame) -> pd.DataFrame:
    """Per (case, explainer): points (win 1, tie or both-bad 0.5) and comparisons (invalid left out)."""
    tournament = tournament[tournament["outcome"] != INVALID]
    credit_a = tournament["outcome"].map({"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5})
    rows = pd.concat(
        [
            pd.DataFrame({"case_id": tournament["case_id"], "explainer": tournament["model_a"], "points": credit_a}),
            pd.DataFrame(
                {"case_id": tournament["case_id"], "explainer": tournament["model_b"], "points": 1 - credit_a}
            ),
        ]
    )
    return rows.groupby(["case_id", "explainer"], as_index=False).agg(
        points=("points", "sum"), comparisons=("points", "size")
    )


def win_ratio_and_rank(tournament: pd.DataFrame) -> pd.DataFrame:
    """Per (case, explainer): win ratio and rank within the case (1 = most points, ties averaged)."""
    table = points(tournament)
    table["win_ratio"] = table["points"] / table["comparisons"]
    table["rank"] = table.groupby("case_id")["points"].rank(ascending=False, method="average")
    return table


# --------------------------------------------------------------------------------------------
# Attribute prediction and bias


def correct_attribute(attribute: str, predicted: pd.Series, truth: pd.Series) -> np.ndarray:
    """1.0 where a prediction is right: the same class, or for `age_years` an age within
    AGE_TOLERANCE years of the truth (LLMXRec); an unparsed prediction (None) is wrong."""
    if attribute != "age_years":
        return (predicted.to_numpy() == truth.to_numpy()).astype(float)
    guess = pd.to_numeric(predicted, errors="coerce").to_numpy(dtype=float)
    return (np.abs(guess - truth.astype(float).to_numpy()) <= AGE_TOLERANCE).astype(float)


def attribute_accuracy(predictions: pd.DataFrame, train_truth: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per (explainer, attribute) with random and majority baselines.

    `predictions`: model, case_id, attribute, truth, predicted (None when unparsable: wrong),
    n_options. `train_truth`: attribute, truth over the training cases, whose most frequent value
    is the majority baseline's constant guess (scored on the evaluation cases' truths). Random is
    1 / n_options, and for `age_years` (scored within AGE_TOLERANCE years) the accuracy of
    guessing the age of a random training user.
    """
    rows = []
    for (model, attribute), group in predictions.groupby(["model", "attribute"], sort=True):
        correct = correct_attribute(attribute, group["predicted"], group["truth"])
        train = train_truth.loc[train_truth["attribute"] == attribute, "truth"]
        reference = train if len(train) else group["truth"]
        majority_value = reference.mode().iloc[0]
        if attribute == "age_years":
            random = float(np.mean([correct_attribute(attribute, reference.reset_index(drop=True),
                                                      pd.Series([t] * len(reference))).mean() for t in group["truth"]]))
        else:
            random = 1.0 / group["n_options"].iloc[0]
        majority = correct_attribute(attribute, pd.Series([majority_value] * len(group)), group["truth"]).mean()
        low, high = bootstrap_ci(correct)
        rows.append(
            {
                "explainer": model,
                "attribute": attribute,
                "accuracy": correct.mean(),
                "ci_low": low,
                "ci_high": high,
                "random": random,
                "majority": float(majority),
                "majority_value": str(majority_value),
                "parsed": float(group["predicted"].notna().mean()),
                "n": len(group),
            }
        )
    return pd.DataFrame(rows)


def length_gap(lengths: np.ndarray, genders: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    """Mean length for female users minus male users, with a bootstrap CI over explanations."""
    lengths, genders = np.asarray(lengths, float), np.asarray(genders)
    female, male = genders == "F", genders == "M"
    result = {"mean_f": np.nan, "mean_m": np.nan, "difference": np.nan, "ci_low": np.nan, "ci_high": np.nan,
              "n_f": int(female.sum()), "n_m": int(male.sum())}
    if not female.any() or not male.any():
        return result
    result.update(mean_f=lengths[female].mean(), mean_m=lengths[male].mean())
    result["difference"] = result["mean_f"] - result["mean_m"]
    # Resample female and male explanations separately so every resample has both groups.
    rng = np.random.default_rng(seed)
    f, m = lengths[female], lengths[male]
    diffs = [rng.choice(f, len(f)).mean() - rng.choice(m, len(m)).mean() for _ in range(n_boot)]
    result["ci_low"], result["ci_high"] = np.quantile(diffs, [0.025, 0.975])
    return result


# --------------------------------------------------------------------------------------------
# Aggregation and significance


def summarise(per_explanation: pd.DataFrame, metrics: Iterable[str], n_boot: int, seed: int) -> pd.DataFrame:
    """Mean and bootstrap CI of each per-explanation metric per explainer (NaNs left out)."""
    rows = []
    for explainer, group in per_explanation.groupby("explainer", sort=False):
        for metric in metrics:
            if metric not in group:
                continue
            values = group[metric].dropna().to_numpy(dtype=float)
            if len(values) == 0:
                continue
            low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed) if len(values) > 1 else (np.nan, np.nan)
            rows.append({"explainer": explainer, "metric": metric, "value": float(values.mean()),
                         "ci_low": float(low), "ci_high": float(high), "n": len(values)})
    return pd.DataFrame(rows, columns=["explainer", "metric", "value", "ci_low", "ci_high", "n"])


def style_significance(per_explanation: pd.DataFrame, metrics: Iterable[str] = STYLE_METRICS) -> pd.DataFrame:
    """Every pair of explainers on every style metric: Mann-Whitney U (two-sided), Holm within metric."""
    from scipy.stats import mannwhitneyu
    from statsmodels.stats.multitest import multipletests

    explainers = list(dict.fromkeys(per_explanation["explainer"]))
    frames = []
    for metric in metrics:
        rows = []
        for a, b in itertools.combinations(explainers, 2):
            x = per_explanation.loc[per_explanation["explainer"] == a, metric].dropna().to_numpy(float)
            y = per_explanation.loc[per_explanation["explainer"] == b, metric].dropna().to_numpy(float)
            if len(x) == 0 or len(y) == 0:
                continue
            if np.ptp(np.concatenate([x, y])) == 0:  # all values equal: no difference to test
                statistic, p = len(x) * len(y) / 2, 1.0
            else:
                statistic, p = mannwhitneyu(x, y, alternative="two-sided")
            rows.append({"metric": metric, "explainer_a": a, "explainer_b": b, "mean_a": x.mean(), "mean_b": y.mean(),
                         "u_statistic": float(statistic), "p_value": float(p)})
        if rows:
            table = pd.DataFrame(rows)
            table["p_holm"] = multipletests(table["p_value"], method="holm")[1]
            table["significant"] = table["p_holm"] < 0.05
            frames.append(table)
    columns = [
        "metric", "explainer_a", "explainer_b", "mean_a", "mean_b", "u_statistic", "p_value", "p_holm", "significant",
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


# --------------------------------------------------------------------------------------------
# Judge calls (recxplain/judging.py)


def judge_tournament(
    cases: dict[str, Case],
    explanations: pd.DataFrame,
    explainers: list[str],
    judge_pairs: Callable[[list[tuple[Case, str, str]]], list[tuple[str, str | None]]],
) -> pd.DataFrame:
    """Every pair of explainers on every case; one row per (case, pair).

    `judge_pairs` takes (case, text_a, text_b) triples and returns, for each, the verdict with A
    shown first and the verdict with B shown first (as shown: its "a" means B; None when the
    judge asks one order only), each in OUTCOMES or INVALID (recxplain.judging.make_pair_judge).
    """
    text = explanations.set_index(["case_id", "model"])["text"]
    jobs = []
    for case_id in explanations["case_id"].drop_duplicates():
        present = [e for e in explainers if (case_id, e) in text.index]
        for a, b in itertools.combinations(present, 2):
            jobs.append((case_id, a, b))
    verdicts = judge_pairs([(cases[c], text[(c, a)], text[(c, b)]) for c, a, b in jobs]) if jobs else []
    rows = [
        {"case_id": c, "model_a": a, "model_b": b, "verdict_ab": ab, "verdict_ba": ba,
         "outcome": consistent_outcome(ab, ba),
         "consistent": ba is None or INVALID in (ab, ba) or consistent_outcome(ab, ba) == ab}
        for (c, a, b), (ab, ba) in zip(jobs, verdicts, strict=True)
    ]
    columns = ["case_id", "model_a", "model_b", "verdict_ab", "verdict_ba", "outcome", "consistent"]
    return pd.DataFrame(rows, columns=columns)


def _judge_functions(judge: JudgeConfig, evaluation: EvaluationConfig, artifacts_dir: Path, cache_dir: Path,
                     cases_dir: Path, templates: dict[str, str] | None, discriminator: Path | None = None):
    """(pairwise verdict function, explainability score function) from recxplain/judging.py; None when off.
    `discriminator`: the train_discriminator folder (`judge.kind: discriminator`)."""
    pair = scorer = None
    if evaluation.tournament:
        has_catalogue = (Path(cases_dir) / "catalogue.json").exists()
        catalogue = Catalogue.read(cases_dir) if has_catalogue else None
        pair = judging.make_pair_judge(judge, artifacts_dir, cache_dir, templates=templates, catalogue=catalogue,
                                       discriminator=discriminator)
    if evaluation.explainability:
        scorer = judging.make_explainability_scorer(judge, artifacts_dir, cache_dir, templates=templates)
    return pair, scorer


# --------------------------------------------------------------------------------------------
# The stage


def _read_explanations(folder: Path) -> pd.DataFrame:
    path = Path(folder) / "explanations.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no explanations (run generate_explanations first)")
    frame = pd.read_parquet(path)
    check_columns(frame, "explanations", path)
    return frame


def check_metrics(result: CheckResult) -> dict[str, float]:
    """The per-explanation metrics a `CheckResult` gives (the same checks label preference pairs)."""
    return {
        "check_score": result.score,
        "passes_checks": float(result.passed),
        "loop": float(not result.no_repetition),
        "faithfulness": result.faithfulness,
        "hallucination_rate": float(bool(result.unknown_titles or result.unknown_names)),
        "false_rating_claims": float(bool(result.false_rating_claims)),
        "mentions_item": float(result.mentions_title),
        "failed_checks": ",".join(result.failed),
    }


def per_explanation_metrics(cases: dict[str, Case], explanations: pd.DataFrame, catalogue: Catalogue | None,
                            embed: Callable[[list[str]], np.ndarray] | None, teacher: str | None = "teacher",
                            min_words: int = 15, max_words: int = 120) -> pd.DataFrame:
    """One row per explanation with every metric that is defined per explanation."""
    frame = explanations.rename(columns={"model": "explainer"}).reset_index(drop=True)
    missing = sorted(set(frame["case_id"]) - set(cases))
    if missing:
        raise ValueError(f"explanations name case(s) not in the cases file: {missing[:5]}")
    frame["words"] = [len(words(t)) for t in frame["text"]]
    style = pd.DataFrame([style_rates(t) for t in frame["text"]], index=frame.index)
    checks = check_explanations([(cases[c], t) for c, t in zip(frame["case_id"], frame["text"])], catalogue=catalogue,
                                min_words=min_words, max_words=max_words)
    checked = pd.DataFrame([check_metrics(r) for r in checks], index=frame.index)
    frame = pd.concat([frame, style, checked], axis=1)
    frame["gender"] = [str(cases[c].profile.get("gender", "")) for c in frame["case_id"]]
    frame["rouge_l"] = np.nan
    if teacher is not None and teacher in set(frame["explainer"]):
        reference = frame[frame["explainer"] == teacher].set_index("case_id")["text"]
        others = frame["explainer"] != teacher
        has_ref = others & frame["case_id"].isin(reference.index)
        frame.loc[has_ref, "rouge_l"] = rouge_l(frame.loc[has_ref, "text"].tolist(),
                                                reference.loc[frame.loc[has_ref, "case_id"]].tolist())
    frame["diversity"] = np.nan
    if embed is not None:
        vectors = embed(frame["text"].tolist())
        for _, index in frame.groupby("explainer").groups.items():
            frame.loc[index, "diversity"] = mean_cosine_distance(
                vectors[np.asarray([frame.index.get_loc(i) for i in index])]
            )
    return frame


# "Did alignment help?": metric -> (kind, direction) for recxplain.stats.paired_comparison.
ALIGNMENT_METRICS = {"validity": ("binary", 1), "check_score": ("score", 1), "loop": ("binary", -1),
                     "faithfulness": ("score", 1), "rouge_l": ("score", 1)}


def judge_note(judge: JudgeConfig) -> str:
    """What judged the preference pairs and the tournament, for the report."""
    if judge.kind == "discriminator":
        d = judge.discriminator
        return (f"Preference pairs were judged by judge.kind {d.base}; the tournament by a discriminator "
                f"(LLMXRec): a LoRA reward model on {d.model} trained on the pairs that judge kept"
                f"{' and on the arena votes' if d.arena_votes else ''}. LLMXRec's win ratio counts decisive "
                "verdicts only (1 / 0); ours counts a tie as half a win.")
    if judge.kind == "rubric":
        return ("Preference pairs and the tournament were judged by the verifiable checks alone (judge.kind: "
                "rubric). A language-model judge (judge.kind: llm or ensemble) is meant for API or GPU models: "
                "the embedded 135M model's verdicts follow the position of the answers, not their content.")
    return (f"Preference pairs and the tournament were judged by judge.kind {judge.kind} with {judge.llm.model} "
            f"({judge.llm.provider}); see the judge stats for its position bias.")


PER_EXPLANATION_METRICS = (
    "validity", "check_score", "passes_checks", "loop", "false_rating_claims", "words", "tokens", "rouge_l",
    "domain_terms", "technical_terms", "subjective_terms",
    "sentiment", "faithfulness", "hallucination_rate", "mentions_item", "diversity", "explainability",
    "explainability_parsed",
)


@reads(evaluation=("attribute_prediction", "attributes", "bootstrap", "diversity", "embedding_model", "explainability",
                   "seed", "tournament", "tournament_cases"),
       judge=ALL,
       templates=lambda judge, evaluation, **_: judge_prompts(judge, explainability=evaluation.explainability))
def evaluate(out: Path, *, evaluation: EvaluationConfig, judge: JudgeConfig, cases: Path, explanations: Path,
             artifacts_dir: Path, templates: dict[str, str] | None = None, discriminator: Path | None = None) -> None:
    """Score every explainer's held-out explanations; write the tables listed in the module docstring.

    Args:
        out: the stage folder.
        evaluation: which metrics run (tournament, attribute prediction), bootstrap size, seed.
        judge: the judge of the tournament and of the explainability score.
        cases: the build_cases folder: `eval.jsonl`; `train.jsonl` (majority baseline of attribute
            prediction) and `catalogue.json` (every title of the dataset, for hallucination checks;
            without it titles are checked through quoted phrases and capitalised runs only) when there.
        explanations: the generate_explanations folder (`explanations.parquet`, `attributes.parquet`).
        artifacts_dir: artifacts root (model resolution for an LLM judge).
        templates: `read_templates(judge.prompt, judge.explainability_prompt)`, the judge's prompt
            templates (default: the shipped files); with `judge.kind: discriminator` also
            `judge.discriminator.prompt`.
        discriminator: the train_discriminator folder (`judge.kind: discriminator`): the
            tournament's judge; its agreement with held-out verdicts goes into metrics.json.
    """
    out = Path(out)
    eval_cases = read_cases(Path(cases) / "eval.jsonl")
    by_id = {c.case_id: c for c in eval_cases}
    frame = _read_explanations(Path(explanations))
    explainers = list(dict.fromkeys(frame["model"]))
    n_boot, seed = evaluation.bootstrap, evaluation.seed

    embed = None
    if evaluation.diversity:
        model = load_embedder(evaluation.embedding_model)
        embed = lambda texts: model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)  # noqa: E731
    has_catalogue = (Path(cases) / "catalogue.json").exists()
    catalogue = Catalogue.read(Path(cases)) if has_catalogue else None
    table = per_explanation_metrics(by_id, frame, catalogue, embed, min_words=judge.min_words,
                                    max_words=judge.max_words)
    table["validity"] = table["valid"].astype(float)

    metric_frames = []
    tournament = None
    if evaluation.tournament or evaluation.explainability:
        pair_judge, scorer = _judge_functions(judge, evaluation, Path(artifacts_dir), out / "cache", Path(cases),
                                              templates, discriminator)
        if evaluation.explainability:
            scores = scorer([(by_id[c], t) for c, t in zip(table["case_id"], table["text"])])
            table["explainability"] = pd.to_numeric(pd.Series(scores, index=table.index, dtype=object), errors="coerce")
            # A small judge often never answers in the score format: say so rather than go blank.
            table["explainability_parsed"] = table["explainability"].notna().astype(float)
        if evaluation.tournament and len(explainers) > 1:
            case_ids = list(dict.fromkeys(frame["case_id"]))[: evaluation.tournament_cases]
            subset = frame[frame["case_id"].isin(case_ids)]
            tournament = judge_tournament(by_id, subset, explainers, pair_judge)
    metric_frames.append(summarise(table, PER_EXPLANATION_METRICS, n_boot, seed))
    table.drop(columns=["text"]).to_parquet(out / "per_explanation.parquet", index=False)

    for explainer, group in table.groupby("explainer", sort=False):
        for n in (1, 2):
            metric_frames.append(pd.DataFrame([{"explainer": explainer, "metric": f"distinct_{n}",
                                                "value": distinct_n(group["text"].tolist(), n),
                                                "ci_low": np.nan, "ci_high": np.nan, "n": len(group)}]))

    style_significance(table).to_parquet(out / "significance.parquet", index=False)
    students = [e for e in explainers if STUDENT.fullmatch(e)]  # named explainers are no students
    alignment = paired_comparison(table, students, ["base", "template"], ALIGNMENT_METRICS, n_boot, seed)
    alignment.to_parquet(out / "alignment.parquet", index=False)

    if tournament is not None:
        tournament.to_parquet(out / "tournament.parquet", index=False)
        metric_frames.append(tournament_metrics(tournament, n_boot, seed, out, llmxrec=judge.kind == "discriminator"))

    if evaluation.attribute_prediction and (Path(explanations) / "attributes.parquet").exists():
        predictions = pd.read_parquet(Path(explanations) / "attributes.parquet")
        train_path = Path(cases) / "train.jsonl"
        train_truth = attribute_truths(read_cases(train_path) if train_path.exists() else [], evaluation.attributes)
        attributes = attribute_accuracy(predictions, train_truth)
        attributes.to_parquet(out / "attributes.parquet", index=False)
        metric_frames.append(attributes.assign(metric="attr_" + attributes["attribute"], value=attributes["accuracy"])[
            ["explainer", "metric", "value", "ci_low", "ci_high", "n"]])

    bias = pd.DataFrame([{"explainer": e, **length_gap(g["words"], g["gender"], n_boot, seed)}
                         for e, g in table.groupby("explainer", sort=False)])
    bias.to_parquet(out / "bias.parquet", index=False)
    metric_frames.append(bias.assign(metric="gender_length_gap", value=bias["difference"], n=bias["n_f"] + bias["n_m"])[
        ["explainer", "metric", "value", "ci_low", "ci_high", "n"]])

    metrics = pd.concat([f for f in metric_frames if len(f)], ignore_index=True)
    metrics = metrics.dropna(subset=["value"]).reset_index(drop=True)
    metrics.to_parquet(out / "metrics.parquet", index=False)
    summary = {
        "explainers": explainers,
        "cases": len(by_id),
        "judge_note": judge_note(judge),
        "metrics": json.loads(metrics.to_json(orient="records")),
    }
    if tournament is not None:
        summary["tournament"] = {
            "comparisons": len(tournament),
            "order_inconsistent": float((~tournament["consistent"]).mean()) if len(tournament) else 0.0,
        }
        if judge.kind == "discriminator":
            summary["tournament"]["ties"] = float((tournament["outcome"] == "tie").mean()) if len(tournament) else 0.0
    if discriminator is not None and (Path(discriminator) / "agreement.json").exists():
        summary["discriminator"] = json.loads((Path(discriminator) / "agreement.json").read_text())
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))


def decisive_win_ratio(tournament: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """LLMXRec's win ratio per explainer: wins / decisive comparisons over all cases (the better
    explanation scores 1, the other 0; ties, both-bad and invalid verdicts are left out), with a
    percentile bootstrap interval over cases. Rows as `summarise` (metric `win_ratio_llmxrec`);
    NaN for an explainer without a decisive comparison."""
    decisive = tournament[tournament["outcome"].isin(["a", "b"])]
    sides = pd.concat([
        pd.DataFrame(
            {"case_id": decisive["case_id"], "explainer": decisive["model_a"], "win": decisive["outcome"] == "a"}
        ),
        pd.DataFrame(
            {"case_id": decisive["case_id"], "explainer": decisive["model_b"], "win": decisive["outcome"] == "b"}
        ),
    ])
    explainers = list(dict.fromkeys([*tournament["model_a"], *tournament["model_b"]]))
    rng = np.random.default_rng(seed)
    rows = []
    for explainer in explainers:
        per_case = sides[sides["explainer"] == explainer].groupby("case_id")["win"].agg(["sum", "size"])
        wins, total = per_case["sum"].to_numpy(float), per_case["size"].to_numpy(float)
        value = wins.sum() / total.sum() if total.sum() else np.nan
        low = high = np.nan
        if len(per_case) > 1:
            draws = rng.integers(0, len(per_case), size=(n_boot, len(per_case)))
            low, high = np.percentile(wins[draws].sum(axis=1) / total[draws].sum(axis=1), [2.5, 97.5])
        elif len(per_case) == 1:
            low = high = value
        rows.append({"explainer": explainer, "metric": "win_ratio_llmxrec", "value": value, "ci_low": low,
                     "ci_high": high, "n": int(total.sum())})
    return pd.DataFrame(rows, columns=["explainer", "metric", "value", "ci_low", "ci_high", "n"])


def tournament_metrics(tournament: pd.DataFrame, n_boot: int, seed: int, out: Path | None = None,
                       llmxrec: bool = False) -> pd.DataFrame:
    """Win ratio, average rank (bootstrap over cases) and Bradley-Terry strength per explainer;
    with `llmxrec`, also LLMXRec's decisive-only win ratio (`decisive_win_ratio`).

    Also writes `bradley_terry.parquet`, `pairwise.parquet` and `win_rates.parquet` into `out`.
    """
    per_case = win_ratio_and_rank(tournament)
    rows = summarise(per_case, ("win_ratio", "rank"), n_boot, seed).replace({"metric": {"rank": "avg_rank"}})
    if llmxrec:
        rows = pd.concat([rows, decisive_win_ratio(tournament, n_boot, seed)], ignore_index=True)
    battles = tournament[["model_a", "model_b", "outcome"]]
    battles = battles[battles["outcome"] != INVALID]
    strengths = bradley_terry(battles, n_boot=n_boot, seed=seed)
    bt_rows = pd.DataFrame({"explainer": strengths["model"], "metric": "bt_strength", "value": strengths["strength"],
                            "ci_low": strengths["ci_low"], "ci_high": strengths["ci_high"], "n": strengths["battles"]})
    if out is not None:
        strengths.to_parquet(out / "bradley_terry.parquet", index=False)
        pairwise_tests(battles).to_parquet(out / "pairwise.parquet", index=False)
        win_rate_matrix(battles).to_parquet(out / "win_rates.parquet")
    return pd.concat([rows, bt_rows], ignore_index=True)


def attribute_truths(cases: list[Case], attributes: Iterable[str]) -> pd.DataFrame:
    """(attribute, truth) of every case whose profile has the attribute, ages as brackets."""
    rows = [{"attribute": a, "truth": attribute_truth(c, a)} for c in cases for a in attributes]
    return pd.DataFrame([r for r in rows if r["truth"] is not None], columns=["attribute", "truth"])
