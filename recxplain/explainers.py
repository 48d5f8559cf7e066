"""The explainers of the evaluation: their names, the model behind each, the prompts they are
asked with, and the true user attributes their attribute predictions are scored against.

Used by the `generate_explanations` stage (tasks/explain.py), the evaluation (tasks/evaluate.py),
RecLAIF (tasks/reclaif/recommend.py: its LLM recommenders are named and loaded as explainers) and the flows.
"""

from __future__ import annotations

import re
from pathlib import Path

from recxplain.config import EvaluationConfig, LLMConfig, NamedExplainer, TeacherConfig, TrainingConfig
from recxplain.models import student_llm
from recxplain.schemas import Case

STUDENT = re.compile(r"sft|orpo|dpo_r[1-9][0-9]*")


def expand_rounds(names: list[str], rounds: int) -> list[str]:
    """`names` with `dpo` expanded to one name per DPO round (`dpo_r1` ... `dpo_rN`), no repeats."""
    expanded: list[str] = []
    for name in names:
        for n in [f"dpo_r{r}" for r in range(1, rounds + 1)] if name == "dpo" else [name]:
            if n not in expanded:
                expanded.append(n)
    return expanded


def explainer_names(evaluation: EvaluationConfig, training: TrainingConfig) -> list[str]:
    """The configured explainers' names, in order, with `dpo` expanded to one name per DPO round."""
    return expand_rounds([e if isinstance(e, str) else e.name for e in evaluation.explainers], training.rounds)


def named_explainers(evaluation: EvaluationConfig) -> dict[str, NamedExplainer]:
    """The explainers configured as model configs, by name."""
    return {e.name: e for e in evaluation.explainers if isinstance(e, NamedExplainer)}


def explanation_prompts(evaluation: EvaluationConfig, teacher: TeacherConfig) -> list[str]:
    """Every prompt template generate_explanations renders (`read_templates(*...)` is its
    `templates` argument, so that an edited template reruns the stage)."""
    named = [e.prompt for e in named_explainers(evaluation).values() if e.prompt is not None]
    return list(dict.fromkeys([teacher.prompt, *named]))


def student_explainers(evaluation: EvaluationConfig, training: TrainingConfig) -> list[str]:
    """The explainers that need a trained student folder (the flow passes them as `students`)."""
    return [n for n in explainer_names(evaluation, training) if STUDENT.fullmatch(n)]


def explainer_llm(name: str, *, teacher: TeacherConfig, training: TrainingConfig,
                  students: dict[str, Path]) -> LLMConfig | None:
    """The model behind explainer `name` (None for the template explainer)."""
    if name == "template":
        return None
    if name == "teacher":
        return teacher.llm
    if name == "base":
        return LLMConfig(provider="local", model=training.base_model, thinking=training.thinking)
    if not STUDENT.fullmatch(name):
        raise ValueError(f"unknown explainer {name!r}: use template, teacher, base, sft, orpo or dpo_rN")
    if name not in students:
        raise ValueError(f"explainer {name!r} needs its student folder: students has {sorted(students)}")
    # The same student model the pair sampler uses: base + adapter, or the merged model.
    return student_llm(training, Path(students[name]))


# --------------------------------------------------------------------------------------------
# True user attributes (LLMXRec, section 3.3 "Local Evaluation with Attribute Prediction")

AGE_BRACKETS = ("under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56 or older")
AGE_TOLERANCE = 5  # `age_years`: LLMXRec counts a predicted age within 5 years of the truth as correct


def age_bracket(age: int) -> str:
    """MovieLens-1M's age groups, used as the classes of age prediction."""
    for bound, bracket in zip((18, 25, 35, 45, 50, 56), AGE_BRACKETS):
        if age < bound:
            return bracket
    return AGE_BRACKETS[-1]


def attribute_truth(case: Case, attribute: str) -> str | None:
    """The case user's true value of `attribute` as a class label, `age_years` as the age in whole
    years (None when the profile lacks it, or has no exact age for `age_years`)."""
    value = case.profile.get("age" if attribute == "age_years" else attribute)
    if value is None or value == "":
        return None
    if attribute == "age":
        return age_bracket(int(value))
    if attribute == "age_years":
        try:
            age = float(value)
        except ValueError:  # a bracket such as "25-34", not an age
            return None
        return str(int(age)) if age.is_integer() else None
    if attribute == "gender":
        return {"m": "male", "f": "female"}.get(str(value).lower(), str(value).lower())
    return str(value).lower()

