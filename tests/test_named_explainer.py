"""Named explainers: a model config of one's own in `evaluation.explainers`, beside the built-in ones.

A smoke-sized run of the evaluation stages (generate_explanations, evaluate, write_report) on three
held-out cases compares `template`, `base` (a tiny random Llama) and `api-model`, a named explainer
served by an OpenAI-compatible HTTP server on 127.0.0.1 and reached through the real openai SDK
(the loopback server of tests/test_llm_api.py). It is marked slow: `make test-slow` runs it.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from recxplain.config import EvaluationConfig, JudgeConfig, SamplingConfig, TeacherConfig, TrainingConfig
from recxplain.explainers import explainer_names, explanation_prompts, named_explainers, student_explainers
from recxplain.schemas import write_cases
from tasks import evaluate as ev
from tasks import explain as ex
from tasks import report
from tests.test_explain import make_case
from tests.test_llm_api import Loopback
from tests.test_llm_local import random_llama

ANSWER = ("You rated Star Wars (1977) 5/5, and people who liked it also liked Return of the Jedi (1983). "
          "It is an action and sci-fi movie like the ones you enjoy most.")


class ExplainingServer(Loopback):
    """Answers every chat completion with ANSWER (usage: 10 prompt tokens, a token a word)."""

    def default_reply(self, request: dict) -> dict:
        return self.reply(ANSWER, request["model"])


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("RECXPLAIN_TEST_KEY", "sk-test")
    loopback = ExplainingServer("openai")
    yield loopback
    loopback.close()


def named(server: Loopback, **changes) -> dict:
    llm = {"provider": "openai", "model": "served-model", "base_url": server.url, "api_key_env": "RECXPLAIN_TEST_KEY",
           "max_retries": 0, "timeout_s": 10.0}
    return {"name": "api-model", "llm": llm} | changes


def test_named_explainer_config():
    entry = {"name": "gpt", "llm": {"provider": "openai", "model": "gpt-4.1-mini"}, "prompt": "explain_llmxrec.j2"}
    evaluation = EvaluationConfig(explainers=["template", entry, "dpo"])
    assert explainer_names(evaluation, TrainingConfig(rounds=2)) == ["template", "gpt", "dpo_r1", "dpo_r2"]
    assert student_explainers(evaluation, TrainingConfig(rounds=2)) == ["dpo_r1", "dpo_r2"]
    assert list(named_explainers(evaluation)) == ["gpt"]
    assert explanation_prompts(evaluation, TeacherConfig()) == ["explain_seed.j2", "explain_llmxrec.j2"]
    with pytest.raises(ValueError, match="built-in explainer's name"):
        EvaluationConfig(explainers=[{"name": "sft", "llm": {"provider": "openai", "model": "x"}}])
    with pytest.raises(ValueError, match="listed twice"):
        EvaluationConfig(explainers=["template", {"name": "gpt", "llm": {"provider": "openai", "model": "x"}},
                                     {"name": "gpt", "llm": {"provider": "anthropic", "model": "y"}}])
    with pytest.raises(ValueError, match="llm"):  # a mapping's errors name its own fields
        EvaluationConfig(explainers=[{"name": "gpt"}])


@pytest.mark.slow  # 2-3 min on 2 loaded cores (a tiny local model, the checks, the report's plots)
def test_smoke_run_puts_a_named_explainer_in_the_tournament_and_the_report(server, tmp_path):
    cases_dir, explanations, metrics, out = (tmp_path / name for name in ("cases", "expl", "metrics", "report"))
    for folder in (cases_dir, explanations, metrics, out):
        folder.mkdir()
    write_cases([make_case(f"{u}-3", "F" if u % 2 else "M") for u in (1, 2, 3)], cases_dir / "eval.jsonl")
    base_model = random_llama(tmp_path / "tiny-llama", initializer_range=0.5)
    evaluation = EvaluationConfig(
        explainers=["template", "base", named(server, sampling={"temperature": 0.0, "max_new_tokens": 64})],
        sampling=SamplingConfig(temperature=0.0, max_new_tokens=8), bootstrap=50, diversity=False,
        explainability=False, attribute_prediction=False, report_examples=1)
    teacher, training = TeacherConfig(), TrainingConfig(base_model=str(base_model))

    ex.generate_explanations(explanations, evaluation=evaluation, teacher=teacher, training=training, cases=cases_dir,
                             artifacts_dir=tmp_path)
    ev.evaluate(metrics, evaluation=evaluation, judge=JudgeConfig(kind="rubric"), cases=cases_dir,
                explanations=explanations, artifacts_dir=tmp_path)
    report.write_report(out, evaluation=evaluation, metrics=metrics, explanations=explanations, cases=cases_dir)

    # Asked through the SDK, with its own decoding and the students' prompt (no worked example).
    assert len(server.requests) == 3 and {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    body = server.requests[0]["body"]
    assert body["model"] == "served-model" and body["max_tokens"] == 64 and len(body["messages"]) <= 2
    texts = pd.read_parquet(explanations / "explanations.parquet")
    assert list(dict.fromkeys(texts["model"])) == ["template", "base", "api-model"]
    assert set(texts.loc[texts["model"] == "api-model", "text"]) == {ANSWER}
    # In the tournament, every pair of the three on every case...
    tournament = pd.read_parquet(metrics / "tournament.parquet")
    pairs = set(zip(tournament["model_a"], tournament["model_b"]))
    assert {("template", "api-model"), ("base", "api-model")} <= pairs and len(tournament) == 3 * 3
    table = pd.read_parquet(metrics / "metrics.parquet")
    assert {"win_ratio", "bt_strength", "check_score", "validity"} <= set(
        table.loc[table["explainer"] == "api-model", "metric"]
    )
    # ...not in "did alignment help?" (no student), and a row of its own in the report.
    assert "api-model" not in set(pd.read_parquet(metrics / "alignment.parquet").get("explainer", pd.Series(dtype=str)))
    rows = json.loads((out / "metrics_table.json").read_text())
    assert any(row.get("explainer") == "api-model" for row in rows)
    assert "api-model" in (out / "report.md").read_text() and "api-model" in (out / "report.html").read_text()
