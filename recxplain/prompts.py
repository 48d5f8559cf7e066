"""Prompt templates: Jinja2 files in `configs/prompts/`, rendered to chat messages.

A template is one `.j2` file holding a `{% block user %}` and, optionally, `{% block system %}`
and a worked example (`{% block example_user %}` and `{% block example_answer %}`, rendered as an
earlier user turn and the assistant's answer); each block renders to one chat message (a missing
or empty block gives no message). Templates use `StrictUndefined`, so a misspelt variable fails loudly instead of
rendering as an empty string.

Stages receive templates by content, not by path: `read_templates(name, ...)` returns
`{name: source}` and a stage takes that dict as its `templates` keyword argument. The stage cache
key hashes argument values, so a changed template reruns exactly the stages it was passed to, and
what a stage renders is exactly what its key hashed. Outside stages, the rendering functions also
accept a folder (default: the shipped `configs/prompts/`). `template_hash` is the short content hash
recorded next to every generation.

The explanation prompt is built in exactly one place, `explain_messages`: the teacher, the pair
sampler, the judge's preference rows and the evaluation's explainers all call it, so every model
sees the same prompt for the same case.

`generate_parsed` asks a model for answers in a required format and re-asks, with the parse error
fed back, those answers that break it; after `max_retries` failed re-asks the answer is recorded
as invalid (never raised), so one bad answer cannot crash a run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import jinja2

from recxplain.config import SamplingConfig
from recxplain.schemas import Case

# The shipped templates (config fields such as `teacher.prompt` name files in this folder).
PROMPTS_DIR = Path(__file__).resolve().parent.parent / "configs" / "prompts"

GENDERS = {"M": "male", "F": "female"}

_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
    autoescape=False,
)
_ENV.filters["gender"] = lambda value: GENDERS.get(str(value), str(value))
_ENV.filters["stars"] = lambda rating: f"{float(rating):g}/5"


def read_templates(*names: str, prompts_dir: Path = PROMPTS_DIR) -> dict[str, str]:
    """`{name: source}` of the named template files (a stage's `templates` argument)."""
    templates = {}
    for name in names:
        path = Path(prompts_dir) / name
        if not path.is_file():
            available = sorted(p.name for p in Path(prompts_dir).glob("*.j2"))
            raise FileNotFoundError(f"prompt template {path} not found; available: {available}")
        templates[name] = path.read_text()
    return templates


def usage_counts(model: object) -> dict:
    """A chat model's counters (calls, tokens, cost) without its wall time: what a stage writes
    into its stats; the seconds go to its run facts (artifact content must not change between
    identical runs)."""
    return {k: v for k, v in (getattr(model, "usage", {}) or {}).items() if k != "seconds"}


def judge_prompts(judge, *, explainability: bool = False) -> list[str]:
    """The templates a judge (`JudgeConfig`) renders: its pair prompt when an LLM votes, the
    discriminator's prompt, and with `explainability` the 1-100 score's prompt."""
    kind = judge.discriminator.base if judge.kind == "discriminator" else judge.kind
    names = [judge.prompt] if kind in ("llm", "ensemble") else []
    if judge.kind == "discriminator":
        names.append(judge.discriminator.prompt)
    if explainability:
        names.append(judge.explainability_prompt)
    return names


def template_hash(source: str) -> str:
    """First 16 hex digits of the sha256 of a template's source text."""
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@lru_cache(maxsize=32)
def _compile(name: str, source: str) -> jinja2.Template:
    try:
        template = _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"prompt template {name}:{err.lineno}: syntax error: {err.message}") from None
    if "user" not in template.blocks:
        raise ValueError(f"prompt template {name}: needs a {{% block user %}}")
    return template


Templates = Mapping[str, str] | Path


def template_source(name: str, templates: Templates = PROMPTS_DIR) -> str:
    """The source of template `name`: from a `{name: source}` mapping (a stage's `templates`
    argument) or read from a folder of `.j2` files."""
    if isinstance(templates, Mapping):
        if name not in templates:
            raise KeyError(
                f"prompt template {name!r} was not passed to this stage (has {sorted(templates)}); "
                f"pass templates=read_templates({name!r}, ...)"
            )
        return templates[name]
    return read_templates(name, prompts_dir=Path(templates))[name]


# Template blocks in conversation order, and the role of the message each renders to: a worked
# example is one earlier user turn and the assistant's answer to it.
BLOCKS = (("system", "system"), ("example_user", "user"), ("example_answer", "assistant"), ("user", "user"))


def render_messages(
    name: str, templates: Templates = PROMPTS_DIR, *, example: bool = True, **context: Any
) -> list[dict]:
    """Render template `name` to chat messages [system?, example user?, example answer?, user];
    `templates` as `template_source`; `example=False` leaves the worked example out."""
    template = _compile(name, template_source(name, templates))
    messages = []
    for block, role in BLOCKS:
        if block not in template.blocks or (not example and block.startswith("example_")):
            continue
        try:
            text = "".join(template.blocks[block](template.new_context(context))).strip()
        except jinja2.UndefinedError as err:
            raise ValueError(f"prompt template {name}, block {block}: {err.message}") from None
        if text:
            messages.append({"role": role, "content": text})
    return messages


def explain_messages(case: Case, name: str, templates: Templates = PROMPTS_DIR, *, example: bool = True) -> list[dict]:
    """The chat messages that ask a model to explain `case` with template `name` (the teacher,
    the pair sampler, the preference rows and the evaluation's explainers all call this).
    `example=False`: without the template's worked example (the students' prompt, see
    `TeacherConfig.students_see_example`)."""
    return render_messages(name, templates, example=example, case=case)


# ---------------------------------------------------------------------------------------------
# Asking for a format, re-asking with the parse error, giving up cleanly.


class ChatModel(Protocol):
    """What the pipeline needs of a language model (recxplain.llm.load_chat_model returns one)."""

    def generate(self, prompts: list[list[dict]], sampling: SamplingConfig, n: int = 1) -> list[list[Any]]: ...


RETRY_MESSAGE = (
    "Your answer could not be used: {error}\n"
    "Answer again, following the requested format exactly."
)


@dataclass
class Parsed:
    """One answer after parsing and re-asking.

    Attributes:
        value: what `parse` returned for the last attempt, or None when every attempt failed.
        raw: the text of every attempt, first to last.
        errors: the parse error of each failed attempt.
        prompt_tokens / completion_tokens / latency_s: summed over attempts.
        cached: True when every attempt came from the response cache.
    """

    value: Any = None
    raw: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = True
    _errors: list = field(default_factory=list, repr=False)

    @property
    def valid(self) -> bool:
        return self.value is not None

    @property
    def attempts(self) -> int:
        return len(self.raw)

    @property
    def text(self) -> str:
        """The last raw answer (the one `value` was parsed from when valid)."""
        return self.raw[-1] if self.raw else ""

    @property
    def provider_error(self) -> str | None:
        """The provider's error for the last attempt (no answer came back), else None."""
        return self._errors[-1] if self._errors else None

    def _add(self, generation: Any) -> None:
        self._errors.append(getattr(generation, "error", None))
        self.raw.append(generation.text)
        self.prompt_tokens += generation.prompt_tokens
        self.completion_tokens += generation.completion_tokens
        self.latency_s += generation.latency_s
        self.cached = self.cached and bool(generation.cached)


def validity_stats(samples: list[Parsed]) -> dict:
    """Counts every generating stage reports: samples, valid ones, valid at the first try, re-asks."""
    n = max(len(samples), 1)
    valid = sum(p.valid for p in samples)
    first_try = sum(p.valid and p.attempts == 1 for p in samples)
    return {
        "samples": len(samples),
        "valid_samples": valid,
        "valid_first_try": first_try,
        "retries": sum(p.attempts - 1 for p in samples),
        "validity_ratio": round(valid / n, 4),
        "first_try_validity_ratio": round(first_try / n, 4),
    }


def merge_stats(parts: list[dict], same: tuple[str, ...] = ()) -> dict:
    """The stats.json of a stage's shards as one: numbers summed (also nested, as `usage`), but
    the settings named in `same`; strings, and a field some shard has no number for (a ratio of
    a shard that kept nothing), taken from the first shard. Ratios come out summed or from the
    first shard: the caller recomputes them from the summed counts."""
    def merge(key: str, values: list):
        first = values[0]
        if isinstance(first, dict):
            return {name: merge(name, [value[name] for value in values]) for name in first}
        if key in same or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            return first
        return sum(values) if isinstance(first, int) else round(sum(values), 8)

    return merge("", parts)


def generate_parsed(
    model: ChatModel,
    prompts: list[list[dict]],
    parse: Callable[[str], Any] | Sequence[Callable[[str], Any]],
    sampling: SamplingConfig,
    *,
    n: int = 1,
    max_retries: int = 2,
) -> list[list[Parsed]]:
    """Generate `n` answers per prompt and parse each; re-ask failures with the error fed back.

    `parse(text)` returns the parsed value or raises ValueError with a message the model can act
    on; a sequence gives one parser per prompt (when what is valid depends on the prompt). A
    failed answer is re-asked as a continuation of its own conversation (the bad answer as the
    assistant turn, then `RETRY_MESSAGE` with the error), all failures of a round in one batch;
    an answer that never came (a Generation with `error` set: the provider gave up after its own
    retries) is asked again unchanged. Returns `n` `Parsed` per prompt, in order; invalid ones
    have `value=None`.
    """
    parsers = list(parse) if isinstance(parse, Sequence) else [parse] * len(prompts)
    if len(parsers) != len(prompts):
        raise ValueError(f"generate_parsed: {len(parsers)} parsers for {len(prompts)} prompts")
    results = [[Parsed() for _ in range(n)] for _ in prompts]
    outputs = model.generate(prompts, sampling, n=n) if prompts else []
    pending: list[tuple[int, int, list[dict]]] = []
    for i, samples in enumerate(outputs):
        if len(samples) != n:
            raise RuntimeError(f"model returned {len(samples)} samples for prompt {i}, asked for {n}")
        for j, generation in enumerate(samples):
            pending.append((i, j, prompts[i]))
            results[i][j]._add(generation)
    for attempt in range(max_retries + 1):
        retry = []
        for i, j, conversation in pending:
            result = results[i][j]
            result.value = None
            if result.provider_error:  # no answer at all (the provider gave up): ask again unchanged
                result.errors.append(f"provider error: {result.provider_error}")
                retry.append((i, j, conversation))
                continue
            try:
                result.value = parsers[i](result.text)
            except ValueError as err:
                result.errors.append(str(err))
                followup = [
                    *conversation,
                    {"role": "assistant", "content": result.text},
                    {"role": "user", "content": RETRY_MESSAGE.format(error=err)},
                ]
                retry.append((i, j, followup))
        if not retry or attempt == max_retries:
            break
        answers = model.generate([conversation for _, _, conversation in retry], sampling, n=1)
        for (i, j, _), samples in zip(retry, answers):
            results[i][j]._add(samples[0])
        pending = retry
    return results
