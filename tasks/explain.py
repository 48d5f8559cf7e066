"""Every explainer writes an explanation of every held-out case (the `generate_explanations` stage).

An explainer is an entry of `evaluation.explainers`: a built-in name, which `explainer_llm`
(recxplain/explainers.py, with the explainers' names and prompts) maps to a model, or a named
model config (`recxplain.config.NamedExplainer`: any provider and model, with its own prompt and
decoding), which is its own model:

- `template`: no model: fixed sentences over the evidence (`template_explanation`), the first
  seed's reference [1] baseline
- `teacher`: `teacher.llm`
- `base`: `training.base_model`, untrained
- `sft`, `orpo`, `dpo_rN`: the base model plus that student's adapter (`students[name]/adapter/`),
  or its `merged/` model (`recxplain.models.student_llm`)

`dpo` in the list stands for every round `dpo_r1` .. `dpo_r{training.rounds}`. Every LLM explainer
but the teacher gets the prompt of the students' SFT and preference rows (`teacher.prompt`,
without its worked example unless `teacher.students_see_example`, rendered by
`recxplain.prompts.explain_messages`), so the students are asked what they were trained on and
`base` is asked the same; the teacher gets the prompt it wrote its SFT answers with. A named
explainer gets its own `prompt` (default: that same students' prompt), with the worked example when
its `example` says so, and its own `sampling` (default: `evaluation.sampling`).

Outputs in `out`:
- `explanations.parquet`: case_id, model, text (cleaned like the teacher's answers:
  `recxplain.checks.clean_explanation`), tokens (completion tokens; 0 for the template),
  valid (the teacher's format rule, `recxplain.checks.parse_explanation`: complete, within
  teacher.min_words..max_words, not looping; and the model ended the answer itself, before
  `max_new_tokens`), prompt_tokens.
- `attributes.parquet` (when `evaluation.attribute_prediction`): LLMXRec's attribute prediction,
  one row per (LLM explainer, case, attribute): the model sees the history and the recommended
  movie only (no profile) and must name the user's age bracket, gender or occupation from a list.
  Columns: case_id, model, attribute, truth, predicted (None when no option could be read),
  answer (raw text), n_options.
- `cache/`: the response caches of the models, so a killed run resumes without new calls.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pandas as pd

from recxplain.checks import Catalogue, clean_explanation, parse_explanation, pick_best
from recxplain.config import EvaluationConfig, LLMConfig, TeacherConfig, TrainingConfig
from recxplain.explainers import (
    AGE_BRACKETS,
    age_bracket,
    attribute_truth,
    explainer_llm,
    explainer_names,
    explanation_prompts,
    named_explainers,
)
from recxplain.llm import load_chat_model, release_models
from recxplain.prompts import explain_messages, read_templates
from recxplain.schemas import Case, read_cases
from recxplain.stage import reads

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The template explainer


def _quoted(titles: list[str]) -> str:
    quoted = [f'"{t}"' for t in titles]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def template_explanation(case: Case, max_neighbours: int = 3, max_paths: int = 2) -> str:
    """Fixed sentences over the case's evidence: what a recommender shows without a language model."""
    item = case.item
    genres = " and ".join(g.lower() for g in item.genres[:2])
    article = "an" if genres[:1] in ("a", "e", "i", "o", "u") else "a"
    sentences = [f'We recommend "{item.title}"' + (f", {article} {genres} movie." if genres else ".")]
    rated = sorted((n for n in case.neighbours if n.rated is not None), key=lambda n: -n.weight)[:max_neighbours]
    if rated:
        liked = ", ".join(f'"{n.title}" ({n.rated:g}/5)' for n in rated)
        sentences.append(f"It is similar to movies you rated: {liked}.")
    elif case.neighbours:
        closest = sorted(case.neighbours, key=lambda n: -n.weight)[:max_neighbours]
        sentences.append(f"People who watch it also watch {_quoted([n.title for n in closest])}.")
    for path in case.paths[:max_paths]:
        text = path.text.strip()
        sentences.append(text if text.endswith(".") else text + ".")
    if not rated and not case.paths and case.history:
        recent = [m.title for m in case.history[-2:]]
        sentences.append(f"You recently watched {_quoted(recent)}.")
    return " ".join(sentences)


def is_valid(text: str, teacher: TeacherConfig, case: Case) -> bool:
    """Validity: the answer is a usable explanation by the rule the teacher's answers must pass
    (`recxplain.checks.parse_explanation`: complete, within the teacher's word bounds, not looping)."""
    try:
        parse_explanation(text, min_words=teacher.min_words, max_words=teacher.max_words, case=case)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# Attribute prediction (LLMXRec, section 3.3 "Local Evaluation with Attribute Prediction")

GENDERS = {"male": "M", "female": "F"}


def attribute_options(attribute: str, cases: list[Case]) -> list[str]:
    """The classes a model chooses from: fixed for age and gender, the data's own for the rest."""
    if attribute == "age":
        return list(AGE_BRACKETS)
    if attribute == "gender":
        return list(GENDERS)
    if attribute == "age_years":  # a number, not a choice
        return []
    return sorted({t for c in cases if (t := attribute_truth(c, attribute)) is not None})


ATTRIBUTE_PROMPT = (
    "The history movies watched by the customer are: {history}. "
    'The recommender system suggests the customer to watch this movie: "{title}" ({genres}). '
    "Your mission is to infer the customer's {attribute} from the history record. "
    "{choose}You must infer the {attribute}. {answer} "
    "Do not return other information. And DO NOT return Unknown or Null."
)


def attribute_messages(case: Case, attribute: str, options: list[str]) -> list[dict]:
    """LLMXRec's attribute prediction instruction for the movie domain (history and candidate only)."""
    history = "; ".join(f"{m.title} ({', '.join(m.genres)})" if m.genres else m.title for m in case.history)
    years = attribute == "age_years"  # an age in years: no list to choose from
    content = ATTRIBUTE_PROMPT.format(
        history=history, title=case.item.title, genres=", ".join(case.item.genres),
        attribute={"age": "age group", "age_years": "age"}.get(attribute, attribute),
        choose="" if years else f"Choose one of: {'; '.join(options)}. ",
        answer="Answer with one number only (the age in years)." if years else "Answer with one option only.")
    return [{"role": "user", "content": content}]


def parse_attribute(answer: str, attribute: str, options: list[str]) -> str | None:
    """The option the answer names first (whole words; longest option first on a tie), else None.

    An age answered as a number ("about 30") is mapped to its bracket; `age_years` is the first
    number of the answer.
    """
    text = answer.lower()
    if attribute == "age_years":
        number = re.search(r"\b(\d{1,3})\b", text)
        return str(int(number.group(1))) if number else None
    found = []
    for option in options:
        match = re.search(r"(?<![\w-])" + re.escape(option.lower()) + r"(?![\w-])", text)
        if match:
            found.append((match.start(), -len(option), option))
    if found:
        return min(found)[2]
    if attribute == "age":
        number = re.search(r"\b(\d{1,2})\b", text)
        if number:
            return age_bracket(int(number.group(1)))
    return None


# --------------------------------------------------------------------------------------------
# The stage


def load_model(config: LLMConfig, artifacts_dir: Path, cache_path: Path):
    """The chat model of an explainer, with its response cache in this stage's folder."""
    return load_chat_model(config, artifacts_dir, cache_path=cache_path)


@reads(evaluation=("explainers", "sampling", "attribute_prediction", "attributes", "attribute_sampling"),
       teacher=("llm", "prompt", "sampling", "best_of", "students_see_example", "min_words", "max_words"),
       training=("base_model", "thinking", "rounds"),
       templates=lambda evaluation, teacher, **_: explanation_prompts(evaluation, teacher))
def generate_explanations(
    out: Path,
    *,
    evaluation: EvaluationConfig,
    teacher: TeacherConfig,
    training: TrainingConfig,
    cases: Path,
    artifacts_dir: Path,
    students: dict[str, Path] | None = None,
    templates: dict[str, str] | None = None,
    explainer: str | None = None,
    shard: int = 0,
    shard_cases: int = 0,
) -> None:
    """Explain every held-out case with every explainer; predict user attributes with each LLM.
    A flow runs it per explainer and shard of cases (`explainer`, `shard`), and `merge_explanations`
    joins them into what one call for every explainer and case writes.
    The `teacher` explainer samples `teacher.best_of` answers with `teacher.sampling` and keeps
    the one the checks rate best (as for its SFT data); every other LLM explainer writes one
    answer with `evaluation.sampling` (`base` is thus one plain sample of the untrained model).

    Args:
        out: the stage folder.
        evaluation: the explainers, their decoding, attribute prediction.
        teacher: the teacher model, the explanation prompt every LLM explainer gets, and the
            word bounds of a valid explanation.
        training: the base model, and the number of DPO rounds `dpo` expands to.
        cases: the build_cases folder (`eval.jsonl` is explained; `train.jsonl`, when there, adds
            to the occupation classes).
        artifacts_dir: artifacts root (model resolution).
        students: explainer name -> student folder, for every name `student_explainers` lists.
        templates: `read_templates(*explanation_prompts(evaluation, teacher))`, the explanation
            prompts (default: the shipped files), so a changed prompt changes this stage's key.
            A named explainer's prompt missing from it is read from the shipped folder.
        explainer: only this explainer (None: every one).
        shard, shard_cases: only the held-out cases `shard * shard_cases` up to the next
            `shard_cases` (shard_cases 0: every case).
    """
    out, students = Path(out), dict(students or {})
    wanted = explanation_prompts(evaluation, teacher)
    templates = dict(templates) if templates is not None else {}
    templates |= read_templates(*[name for name in wanted if name not in templates])
    eval_cases = read_cases(Path(cases) / "eval.jsonl")
    if not eval_cases:
        raise ValueError(f"{Path(cases) / 'eval.jsonl'}: no evaluation cases")
    train_path = Path(cases) / "train.jsonl"
    all_cases = eval_cases + (read_cases(train_path) if train_path.exists() else [])
    if shard_cases:  # the options of attribute prediction stay those of every case
        eval_cases = eval_cases[shard * shard_cases:(shard + 1) * shard_cases]
    names = [n for n in explainer_names(evaluation, training) if explainer in (None, n)]
    named = named_explainers(evaluation)
    configs = {n: named[n].llm if n in named
               else explainer_llm(n, teacher=teacher, training=training, students=students)
               for n in names}
    catalogue = Catalogue.read(cases) if (Path(cases) / "catalogue.json").exists() else None
    (out / "cache").mkdir(parents=True, exist_ok=True)

    explanation_rows, attribute_rows = [], []
    student_prompts = [explain_messages(case, teacher.prompt, templates, example=teacher.students_see_example)
                       for case in eval_cases]
    for name in names:
        config = configs[name]
        if config is None:
            explanation_rows += [{"case_id": case.case_id, "model": name, "text": template_explanation(case),
                                  "tokens": 0, "valid": True, "prompt_tokens": 0} for case in eval_cases]
            continue
        started = time.perf_counter()
        model = load_model(config, Path(artifacts_dir), out / "cache" / f"{name}.jsonl")
        if name == "teacher":  # best-of-n with the teacher's decoding, as for its SFT data
            prompts = [explain_messages(case, teacher.prompt, templates) for case in eval_cases]
            outputs = model.generate(prompts, teacher.sampling, n=teacher.best_of)
            # Candidates are the answers that would be valid rows (an answer cut at max_new_tokens is not).
            texts = [[clean_explanation(g.text) if is_valid(g.text, teacher, case) and g.finish_reason != "length"
                      else None for g in samples] for case, samples in zip(eval_cases, outputs)]
            best, _ = pick_best(eval_cases, texts, catalogue=catalogue, min_words=teacher.min_words,
                                max_words=teacher.max_words, require_passed=False)
            outputs = [[samples[k if k is not None else 0]] for samples, k in zip(outputs, best)]
        elif name in named:  # its own prompt and decoding
            explainer = named[name]
            prompts = [explain_messages(case, explainer.prompt or teacher.prompt, templates,
                                        example=teacher.students_see_example if explainer.example is None
                                        else explainer.example) for case in eval_cases]
            outputs = model.generate(prompts, explainer.sampling or evaluation.sampling, n=1)
        else:
            outputs = model.generate(student_prompts, evaluation.sampling, n=1)
        for case, (generation, *_) in zip(eval_cases, outputs, strict=True):
            explanation_rows.append({
                # Cleaned as the teacher's SFT answers were (labels, quotes, an unfinished sentence).
                "case_id": case.case_id, "model": name, "text": clean_explanation(generation.text),
                "tokens": int(generation.completion_tokens),
                # An answer still going at max_new_tokens did not end by itself: not valid.
                "valid": is_valid(generation.text, teacher, case) and generation.finish_reason != "length",
                "prompt_tokens": int(generation.prompt_tokens),
            })
        if evaluation.attribute_prediction:
            attribute_rows += _predict_attributes(model, name, eval_cases, all_cases, evaluation)
        log.info("explainer %s: %d cases in %.1f s, usage %s", name, len(eval_cases),
                 time.perf_counter() - started, getattr(model, "usage", {}))
        model = None  # the stage's last reference: release it before the next explainer loads its own
        release_models()

    pd.DataFrame(explanation_rows).to_parquet(out / "explanations.parquet", index=False)
    if evaluation.attribute_prediction:
        pd.DataFrame(attribute_rows, columns=ATTRIBUTE_COLUMNS).to_parquet(out / "attributes.parquet", index=False)


ATTRIBUTE_COLUMNS = ["case_id", "model", "attribute", "truth", "predicted", "answer", "n_options"]


@reads(evaluation=("attribute_prediction", "attributes"))
def merge_explanations(out: Path, *, evaluation: EvaluationConfig, shards: list[Path]) -> None:
    """Join the folders of `generate_explanations` run per explainer and shard of cases (in
    explainer, then case order) into the files one call for every explainer writes: the same
    rows in the same order, whichever worker wrote each shard."""
    rows = [row for folder in shards for row in pd.read_parquet(Path(folder) / "explanations.parquet")
            .to_dict("records")]
    pd.DataFrame(rows).to_parquet(Path(out) / "explanations.parquet", index=False)
    if evaluation.attribute_prediction:
        found = [row for folder in shards for row in pd.read_parquet(Path(folder) / "attributes.parquet")
                 .to_dict("records")]
        # One call predicts attribute by attribute over its cases: reorder the shards' rows so.
        model_rank = {model: i for i, model in enumerate(dict.fromkeys(row["model"] for row in rows))}
        attribute_rank = {attribute: i for i, attribute in enumerate(evaluation.attributes)}
        found.sort(key=lambda row: (model_rank[row["model"]], attribute_rank[row["attribute"]]))  # stable
        pd.DataFrame(found, columns=ATTRIBUTE_COLUMNS).to_parquet(Path(out) / "attributes.parquet", index=False)


def _predict_attributes(model, name: str, eval_cases: list[Case], all_cases: list[Case],
                        evaluation: EvaluationConfig) -> list[dict]:
    # One generate call for every attribute: a user's prompts start with the same history, which
    # the local provider then reads once for all of them (recxplain.llm.local.shared_prefixes).
    jobs = []  # (case, attribute, truth, options)
    for attribute in evaluation.attributes:
        options = attribute_options(attribute, all_cases)
        targets = [(c, t) for c in eval_cases if (t := attribute_truth(c, attribute)) is not None]
        if not targets or len(options) < 2 and attribute != "age_years":
            log.warning("attribute %s: no profile values in the cases, not predicted", attribute)
            continue
        jobs += [(case, attribute, truth, options) for case, truth in targets]
    outputs = model.generate([attribute_messages(c, a, o) for c, a, _, o in jobs], evaluation.attribute_sampling, n=1)
    return [{"case_id": case.case_id, "model": name, "attribute": attribute, "truth": truth,
             "predicted": parse_attribute(generation.text, attribute, options),
             "answer": generation.text, "n_options": len(options)}
            for (case, attribute, truth, options), (generation, *_) in zip(jobs, outputs, strict=True)]
