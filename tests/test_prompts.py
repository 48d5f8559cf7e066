"""Prompt templates: rendering, strictness, content hashes, and format retries."""

from __future__ import annotations

import pytest

from recxplain.checks import parse_explanation
from recxplain.config import SamplingConfig, TeacherConfig
from recxplain.llm import Generation
from recxplain.prompts import (
    PROMPTS_DIR,
    RETRY_MESSAGE,
    explain_messages,
    generate_parsed,
    read_templates,
    render_messages,
    template_hash,
)
from tests.scripted import ScriptedModel, toy_case

SHIPPED = ["explain_seed.j2", "explain_llmxrec.j2", "judge_pair.j2", "explainability.j2",
           "reclaif_recommend.j2", "reclaif_judge.j2"]


def test_seed_prompt_states_the_evidence_as_facts_after_a_worked_example():
    messages = explain_messages(toy_case(), "explain_seed.j2")
    # the worked example is an earlier user turn and the assistant's answer to it
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    user = messages[-1]["content"]
    assert user.startswith("Facts:\n- The movie: Babe (Comedy, Drama).\n")
    # post-hoc explanation: the rendered path; with a path, the neighbours are left out
    assert "- You rated Toy Story 5/5; it shares the genre Comedy with Babe.\n" in user
    assert "Lion King" not in user and "similarity" not in user
    assert user.rstrip().endswith("Babe.") and "{" not in user and "}" not in user
    # the example's answer is itself a usable explanation by the teacher's default rule
    teacher = TeacherConfig()
    parse_explanation(messages[2]["content"], min_words=teacher.min_words, max_words=teacher.max_words)
    # without paths: the neighbours the user rated (intrinsic explanation), not the others
    no_paths = explain_messages(toy_case().model_copy(update={"paths": []}), "explain_seed.j2")[-1]["content"]
    assert "- You rated The Lion King 5/5; people who liked it also liked Babe.\n" in no_paths
    assert "Fargo" not in no_paths


def test_the_students_prompt_leaves_the_worked_example_out():
    full = explain_messages(toy_case(), "explain_seed.j2")
    bare = explain_messages(toy_case(), "explain_seed.j2", example=False)
    assert [m["role"] for m in bare] == ["system", "user"]
    assert bare == [full[0], full[-1]]
    # a template without an example renders the same either way
    assert explain_messages(toy_case(), "explain_llmxrec.j2", example=False) == explain_messages(
        toy_case(), "explain_llmxrec.j2")


def test_llmxrec_prompt_is_the_papers_instruction():
    [message] = explain_messages(toy_case(), "explain_llmxrec.j2")
    assert message == {"role": "user", "content": (
        "The history films watched by the customer are: Toy Story (Animation, Comedy); Heat (Action). "
        "The age of the customer is 24, the gender is male and the customer's occupation is technician. "
        "As a recommender system in the movie domain, give reasons why the customer needs to watch this "
        "movie with the following title and class: Babe (Comedy, Drama)."
    )}
    without_profile = toy_case().model_copy(update={"profile": {"gender": "F"}})
    text = explain_messages(without_profile, "explain_llmxrec.j2")[0]["content"]
    assert "Heat (Action). The gender is female. As a recommender" in text


def test_mapping_and_folder_render_the_same_and_hash_follows_content():
    templates = read_templates("explain_seed.j2")
    assert explain_messages(toy_case(), "explain_seed.j2", templates) == explain_messages(toy_case(), "explain_seed.j2")
    edited = {"explain_seed.j2": templates["explain_seed.j2"].replace("{% block system %}\n",
                                                                       "{% block system %}\nBe kind.\n")}
    assert template_hash(edited["explain_seed.j2"]) != template_hash(templates["explain_seed.j2"])
    assert explain_messages(toy_case(), "explain_seed.j2", edited)[0]["content"].startswith("Be kind.\n")
    assert len(template_hash("x")) == 16


def test_every_shipped_template_renders():
    case = toy_case()
    movies = [{"title": "Toy Story"}, {"title": "Heat"}]
    contexts = {
        "explain_seed.j2": {"case": case},
        "explain_llmxrec.j2": {"case": case},
        "judge_pair.j2": {"case": case, "option_a": "First text.", "option_b": "Second text."},
        "explainability.j2": {"case": case, "explanation": "Some text."},
        "reclaif_recommend.j2": {"history": movies, "candidates": movies, "k": 3},
        "reclaif_judge.j2": {"history": movies, "candidates": movies, "option_a": "x", "option_b": "y",
                             "label": {"title": "Fargo"}},
    }
    for name in SHIPPED:
        messages = render_messages(name, **contexts[name])
        assert messages[-1]["role"] == "user" and messages[-1]["content"]
    judge = render_messages("judge_pair.j2", **contexts["judge_pair.j2"])[1]["content"]
    assert "Option A: First text.\n\nOption B: Second text." in judge
    assert "Next Preferred Movie: Fargo" in render_messages(
        "reclaif_judge.j2", **contexts["reclaif_judge.j2"]
    )[0]["content"]


def test_bad_templates_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="explain_seed.j2, block user: 'option_a' is undefined"):
        render_messages("explain_seed.j2", {"explain_seed.j2": "{% block user %}{{ option_a }}{% endblock %}"})
    with pytest.raises(KeyError, match="'judge_pair.j2' was not passed"):
        render_messages("judge_pair.j2", read_templates("explain_seed.j2"), case=toy_case())
    with pytest.raises(FileNotFoundError, match="nope.j2 not found; available: .*explain_seed.j2"):
        read_templates("nope.j2")
    with pytest.raises(ValueError, match="bad.j2:1: syntax error"):
        render_messages("bad.j2", {"bad.j2": "{% block user %}{{ x"})
    with pytest.raises(ValueError, match="needs a {% block user %}"):
        render_messages("plain.j2", {"plain.j2": "no blocks"})
    assert set(SHIPPED) <= {p.name for p in PROMPTS_DIR.glob("*.j2")}


def _number(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"{text!r} is not a number")
    return int(text)


def test_generate_parsed_retries_with_the_error_then_gives_up():
    answers = {"p1": ["seven", "7"], "p2": ["x", "y", "z", "never read"], "p3": ["3"]}

    def reply(messages, j):
        key = messages[0]["content"]
        attempt = sum(m["role"] == "assistant" for m in messages)
        return answers[key][attempt]

    model = ScriptedModel(reply)
    prompts = [[{"role": "user", "content": k}] for k in ("p1", "p2", "p3")]
    [[first], [second], [third]] = generate_parsed(model, prompts, _number, SamplingConfig(), max_retries=2)
    assert (first.value, first.attempts, first.raw) == (7, 2, ["seven", "7"])
    assert first.valid and first.errors == ["'seven' is not a number"]
    assert (second.value, second.attempts, second.valid) == (None, 3, False)
    assert second.errors == ["'x' is not a number", "'y' is not a number", "'z' is not a number"]
    assert (third.value, third.attempts) == (3, 1)
    # the re-ask continues the conversation with the bad answer and the parse error
    retry = next(p for p in model.prompts if len(p) == 3 and p[0]["content"] == "p1")
    assert retry[1] == {"role": "assistant", "content": "seven"}
    assert retry[2]["content"] == RETRY_MESSAGE.format(error="'seven' is not a number")
    # 3 first answers, 2 re-asks in round one, 1 in round two
    assert model.usage["calls"] == 6


def test_generate_parsed_n_samples_are_parsed_separately():
    model = ScriptedModel(lambda messages, j: ["1", "oops", "2"][j] if len(messages) == 1 else "5")
    [[a, b, c]] = generate_parsed(model, [[{"role": "user", "content": "q"}]], _number, SamplingConfig(), n=3)
    assert [a.value, b.value, c.value] == [1, 5, 2]
    assert [a.attempts, b.attempts, c.attempts] == [1, 2, 1]


def test_generate_parsed_asks_again_when_the_provider_gave_no_answer():
    def reply(messages, j):
        if reply.failed:
            return "4"
        reply.failed = True
        return Generation("", error="RateLimitError: 429 after 4 retries")

    reply.failed = False
    model = ScriptedModel(reply)
    [[result]] = generate_parsed(model, [[{"role": "user", "content": "q"}]], _number, SamplingConfig())
    assert (result.value, result.attempts) == (4, 2)
    assert result.errors == ["provider error: RateLimitError: 429 after 4 retries"]
    assert model.prompts[1] == [{"role": "user", "content": "q"}]  # the same prompt, no feedback turn
