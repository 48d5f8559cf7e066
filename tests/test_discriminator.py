"""LLMXRec's discriminator (judge.kind: discriminator): its training pairs, its held-out split, the
arena votes it reads, its verdicts and agreement, LLMXRec's decisive win ratio, the wiring of the
judge and the flow, and one real training of the embedded SmolLM2-135M on hand-made pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from flows.console import planned_stages
from recxplain import discriminator as disc
from recxplain.config import ConfigError, DiscriminatorConfig, EvaluationConfig, JudgeConfig, load_config
from recxplain.judging import base_judge, judge_explanation_pairs, make_pair_judge
from recxplain.prompts import read_templates, render_messages
from recxplain.schemas import write_cases
from tasks import evaluate as ev
from tasks import report
from tasks.discriminator import train_discriminator
from tasks.judge import judge_pairs
from tests.scripted import GENRES, GOOD, TECHNICAL, TITLES, toy_case

ROOT = Path(__file__).resolve().parent.parent
DISCRIMINATOR = JudgeConfig(kind="discriminator", discriminator=DiscriminatorConfig(base="rubric"))
SHORT = "Babe is good."
LOOP = "You rated Toy Story 5/5. You rated Toy Story 5/5. You rated Toy Story 5/5. You rated Toy Story 5/5."


def write_preferences(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "preferences.jsonl", "w") as fh:
        for case_id, chosen, rejected in rows:
            fh.write(json.dumps({"prompt": [{"role": "user", "content": "Explain."}], "case_id": case_id,
                                "chosen": [{"role": "assistant", "content": chosen}],
                                "rejected": [{"role": "assistant", "content": rejected}]}) + "\n")
    return folder


# ---------------------------------------------------------------------------------------------
# Training pairs, split, arena votes


def test_judged_pairs_are_the_kept_preferences_of_every_judge_stage(tmp_path):
    first = write_preferences(tmp_path / "p0", [("1-2", GOOD, TECHNICAL)])
    second = write_preferences(tmp_path / "p1", [("3-2", GOOD, SHORT), ("4-2", GOOD, LOOP)])
    pairs = disc.judged_pairs({"preferences": first, "preferences_r1": second})
    assert [(p["case_id"], p["source"]) for p in pairs] == [("1-2", "preferences"), ("3-2", "preferences_r1"),
                                                             ("4-2", "preferences_r1")]
    assert pairs[0]["chosen"] == GOOD and pairs[0]["rejected"] == TECHNICAL
    with open(second / "preferences.jsonl", "a") as fh:
        fh.write('{"case_id": "5-2", "chosen": []}\n')
    with pytest.raises(ValueError, match=r"p1/preferences.jsonl:3: not a preference row"):
        disc.judged_pairs({"preferences_r1": second})
    with pytest.raises(FileNotFoundError, match="written by judge_pairs"):
        disc.judged_pairs({"x": tmp_path / "missing"})


def test_split_holds_out_whole_cases_and_keeps_some_to_train_on():
    pairs = [{"case_id": f"{i % 5}-1", "chosen": "a", "rejected": "b", "source": "p"} for i in range(20)]
    train, held = disc.split_by_case(pairs, holdout=0.2, seed=0)
    assert len(held) == 4 and len(train) == 16
    assert len({p["case_id"] for p in held}) == 1 and not {p["case_id"] for p in held} & {p["case_id"] for p in train}
    assert disc.split_by_case(pairs, 0.2, 0) == (train, held)  # seeded
    train, held = disc.split_by_case(pairs[:2], holdout=0.9, seed=0)  # two cases: one each side
    assert len(train) == len(held) == 1
    with pytest.raises(ValueError, match="at least two cases.*3 pair\\(s\\) of 1 case"):
        disc.split_by_case([{"case_id": "1-1"}] * 3, 0.2, 0)


def test_arena_votes_decisive_unflagged_and_matched_become_pairs(tmp_path):
    explanations = pd.DataFrame({"case_id": ["1-2"] * 3 + ["3-2"] * 2,
                                 "model": ["sft", "base", "dpo_r1", "sft", "base"],
                                 "text": [GOOD, TECHNICAL, GOOD, SHORT, GOOD]})
    votes = pd.DataFrame({
        "vote_id": range(7),
        "case_id": ["1-2", "1-2", "1-2", "1-2", "3-2", "9-9", "1-2"],
        "model_a": ["sft", "base", "sft", "sft", "sft", "sft", "sft"],
        "model_b": ["base", "sft", "base", "base", "base", "base", "dpo_r1"],
        "outcome": ["a", "a", "tie", "a", "b", "a", "b"],
        "flag": ["", "", "", "fast voter", "", "", ""],
    })
    path = tmp_path / "votes.csv"
    votes.to_csv(path, index=False)
    pairs, counts = disc.arena_pairs(disc.read_votes(path), explanations)
    assert [(p["case_id"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("1-2", GOOD, TECHNICAL), ("1-2", TECHNICAL, GOOD), ("3-2", GOOD, SHORT)]
    assert {p["source"] for p in pairs} == {"arena"}
    assert counts == {"votes": 7, "not_decisive": 1, "flagged": 1, "unmatched": 1, "identical": 1, "used": 3}
    votes.to_parquet(tmp_path / "votes.parquet")
    assert len(disc.read_votes(tmp_path / "votes.parquet")) == 7

    votes.assign(outcome=["a", "b", "maybe", "a", "a", "a", "a"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"votes.csv: line 4: outcome 'maybe' is not a, b, tie or both_bad"):
        disc.read_votes(path)
    votes.drop(columns="model_b").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['model_b'\]"):
        disc.read_votes(path)
    (tmp_path / "votes.sqlite3").write_text("")
    with pytest.raises(ValueError, match="votes.csv or votes.parquet export"):
        disc.read_votes(tmp_path / "votes.sqlite3")
    with pytest.raises(FileNotFoundError, match="arena_votes is not a file"):
        disc.read_votes(tmp_path / "none.csv")


# ---------------------------------------------------------------------------------------------
# Verdicts, agreement, LLMXRec's win ratio


def test_verdicts_and_agreement_with_the_judge():
    assert disc.verdicts(np.array([1.0, 0.0, 0.5, 0.2]), np.array([0.0, 1.0, 0.5, 0.1]), 0.0) == ["a", "b", "tie", "a"]
    assert disc.verdicts(np.array([1.0, 0.2]), np.array([0.0, 0.1]), 0.5) == ["a", "tie"]
    pairs = [{"source": "preferences"}] * 8 + [{"source": "arena"}] * 2
    chosen = np.array([2.0] * 6 + [0.0, 1.0] + [3.0, 0.0])
    rejected = np.array([1.0] * 6 + [1.0, 1.0] + [1.0, 1.0])
    result = disc.agreement(pairs, chosen, rejected, tie_margin=0.0)
    assert {k: result["all"][k] for k in ("n", "agree", "disagree", "ties")} == {
        "n": 10, "agree": 7, "disagree": 2, "ties": 1,
    }
    assert result["all"]["rate"] == 0.7 and result["all"]["ci_low"] < 0.7 < result["all"]["ci_high"]
    assert result["all"]["p_value"] == pytest.approx(0.1796875)  # binomtest(7, 9)
    assert result["preferences"]["agree"] == 6 and result["arena"] == result["arena"] | {"n": 2, "agree": 1}


def test_llmxrec_win_ratio_counts_decisive_verdicts_only():
    tournament = pd.DataFrame({
        "case_id": ["c1"] * 3 + ["c2"] * 3,
        "model_a": ["x", "x", "y"] * 2,
        "model_b": ["y", "z", "z"] * 2,
        "outcome": ["a", "tie", "a", "b", "a", "invalid"],
    })
    llmxrec = ev.decisive_win_ratio(tournament, n_boot=200, seed=0).set_index("explainer")
    # x: beat y (c1), lost to y (c2), beat z (c2): 2 of 3 decisive; the c1 tie is left out.
    assert llmxrec.loc["x", "value"] == pytest.approx(2 / 3) and llmxrec.loc["x", "n"] == 3
    assert llmxrec.loc["y", "value"] == pytest.approx(2 / 3) and llmxrec.loc["z", "value"] == 0.0
    assert llmxrec.loc["x", "ci_low"] <= 2 / 3 <= llmxrec.loc["x", "ci_high"]
    ours = ev.tournament_metrics(tournament, 50, 0, llmxrec=True).set_index(["explainer", "metric"])["value"]
    assert ours[("x", "win_ratio")] == pytest.approx((1.5 / 2 + 1 / 2) / 2)  # the tie is half a win
    assert ours[("x", "win_ratio_llmxrec")] == pytest.approx(2 / 3)
    assert "win_ratio_llmxrec" not in set(ev.tournament_metrics(tournament, 50, 0)["metric"])


# ---------------------------------------------------------------------------------------------
# Config and wiring


def test_config_errors_name_the_field():
    assert load_config("configs/default.yaml").judge.kind == "rubric"  # the default stays the rubric
    with pytest.raises(ConfigError, match="judge.discriminator.base: Input should be 'rubric', 'llm' or 'ensemble'"):
        load_config("configs/default.yaml", ["judge.kind=discriminator", "judge.discriminator.base=discriminator"])
    with pytest.raises(ConfigError, match="judge.discriminator.holdout: Input should be less than 1"):
        load_config("configs/default.yaml", ["judge.kind=discriminator", "judge.discriminator.holdout=1"])
    with pytest.raises(ConfigError, match="judge.discriminator.stepz: Extra inputs are not permitted"):
        load_config("configs/default.yaml", ["judge.discriminator.stepz=3"])
    with pytest.raises(ConfigError, match="reclaif.judge.kind 'discriminator' is not supported"):
        load_config("configs/reclaif.yaml", ["reclaif.judge.kind=discriminator"])


def test_pairs_are_judged_by_the_base_judge_and_share_its_cache_key(tmp_path):
    tuned = DISCRIMINATOR.model_copy(update={"discriminator": DiscriminatorConfig(base="rubric", steps=3)})
    assert base_judge(tuned) == JudgeConfig(kind="rubric")  # same key as a plain rubric run
    assert base_judge(JudgeConfig(kind="llm")) == JudgeConfig(kind="llm")
    with pytest.raises(ValueError, match="judges the evaluation tournament only"):
        judge_explanation_pairs([(toy_case(), GOOD, TECHNICAL)], judge=DISCRIMINATOR)
    with pytest.raises(ValueError, match="needs the train_discriminator stage's folder"):
        make_pair_judge(DISCRIMINATOR, tmp_path, tmp_path)

    cases, pairs, out = tmp_path / "cases", tmp_path / "pairs", tmp_path / "out"
    for folder in (cases, pairs, out):
        folder.mkdir()
    write_cases([toy_case("1-2")], cases / "train.jsonl")
    (cases / "catalogue.json").write_text(json.dumps({"titles": TITLES, "genres": GENRES}))
    pl.DataFrame({"case_id": ["1-2"], "text_a": [TECHNICAL], "text_b": [GOOD], "source": ["teacher"],
                  "prompt": ["[]"]}).write_parquet(pairs / "pairs.parquet")
    judge_pairs(out, judge=tuned, cases=cases, pairs=pairs, templates={}, artifacts_dir=tmp_path)
    verdicts = pl.read_parquet(out / "verdicts.parquet")
    assert verdicts["judge"].to_list() == ["rubric"] and verdicts["verdict"].to_list() == ["b"]


def test_the_flow_plans_one_more_stage_for_the_discriminator():
    smoke = load_config("configs/smoke.yaml")
    with_it = load_config("configs/smoke.yaml", ["judge.kind=discriminator", "judge.discriminator.base=ensemble"])
    assert planned_stages(with_it, "recxplain-pipeline") == planned_stages(smoke, "recxplain-pipeline") + 1
    assert planned_stages(with_it, "recxplain-evaluate") == planned_stages(smoke, "recxplain-evaluate") + 1


def test_report_shows_agreement_and_llmxrec_win_ratio(tmp_path):
    metrics = tmp_path / "evaluate"
    metrics.mkdir()
    pd.DataFrame({"explainer": ["sft", "base"] * 2, "metric": ["win_ratio"] * 2 + ["win_ratio_llmxrec"] * 2,
                  "value": [0.6, 0.4, 0.75, 0.25], "ci_low": [0.5, 0.3, 0.6, 0.1], "ci_high": [0.7, 0.5, 0.9, 0.4],
                  "n": [20, 20, 16, 16]}).to_parquet(metrics / "metrics.parquet")
    held = {"n": 12, "agree": 9, "disagree": 3, "ties": 0, "rate": 0.75, "ci_low": 0.468, "ci_high": 0.911,
            "p_value": 0.146}
    summary = {"explainers": ["sft", "base"], "cases": 10, "tournament": {"comparisons": 20, "ties": 0.2,
                                                                          "order_inconsistent": 0.0},
               "discriminator": {"base": "rubric", "pairs": 60, "sources": {"preferences": 40, "preferences_r1": 20},
                                 "train_pairs": 48, "held_out_pairs": 12, "held_out_cases": 3,
                                 "held_out": {"all": held}, "train": {"all": held | {"n": 48, "agree": 40,
                                                                                       "disagree": 8, "rate": 0.833}},
                                 "arena": None}}
    (metrics / "metrics.json").write_text(json.dumps(summary))
    markdown = report.report_markdown(metrics)
    assert "| explainer | Win ratio | LLMXRec win ratio (decisive 1/0) |" in markdown
    assert "| sft | 0.600 [0.500, 0.700] | 0.750 [0.600, 0.900] |" in markdown
    assert ("Agreement with the held-out verdicts (rubric judge): 9 of 12 = 0.750 [0.468, 0.911] "
            "(3 disagree, 0 ties, binomial p=0.146)") in markdown
    assert "trained on 48 of 60 pairs (40 preferences, 20 preferences_r1); 12 pairs of 3 cases held out" in markdown
    assert "20.0% ties, which LLMXRec's win ratio leaves out and ours counts as half a win" in markdown
    assert report.discriminator_sentences({"explainers": []}) == []


# ---------------------------------------------------------------------------------------------
# The real model: a tiny training, its files, and the tournament's judge


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """train_discriminator on hand-made judged pairs of 3 cases (2 steps of 1 pair; one case held
    out), the real SmolLM2-135M and the shipped template."""
    root = tmp_path_factory.mktemp("discriminator")
    cases = root / "cases"
    cases.mkdir()
    write_cases([toy_case("1-2"), toy_case("3-2"), toy_case("4-2")], cases / "train.jsonl")
    judged = {"preferences": write_preferences(root / "judged", [
        ("1-2", GOOD, TECHNICAL), ("1-2", GOOD, LOOP), ("3-2", GOOD, SHORT), ("3-2", GOOD, TECHNICAL),
        ("4-2", GOOD, LOOP)])}
    judge = JudgeConfig(kind="discriminator", discriminator=DiscriminatorConfig(
        steps=2, batch_size=1, learning_rate=1e-3, holdout=0.3, seed=1))
    out = root / "out"
    out.mkdir()
    artifacts = ROOT / "artifacts"  # the embedded model's converted copy, as the other tests use it
    templates = read_templates(judge.discriminator.prompt)
    train_discriminator(out, judge=judge, cases=cases, judged=judged, templates=templates, artifacts_dir=artifacts)
    return {"out": out, "judge": judge, "artifacts": artifacts, "templates": templates}


def test_a_real_training_writes_the_adapter_its_pairs_and_its_agreement(trained):
    out = trained["out"]
    assert (out / "discriminator" / "adapter_config.json").exists()
    assert json.loads((out / "discriminator" / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"
    training = json.loads((out / "training.json").read_text())
    assert training["steps"] == 2 and len(training["curve"]) == 2 and training["train_pairs"] in (3, 4)
    assert all(math.isfinite(row["loss"]) for row in training["curve"])
    agreement = json.loads((out / "agreement.json").read_text())
    assert agreement["pairs"] == 5 and agreement["held_out_cases"] == 1
    assert agreement["train_pairs"] + agreement["held_out_pairs"] == 5
    held = agreement["held_out"]["all"]
    assert held["n"] == agreement["held_out_pairs"] and held["agree"] + held["disagree"] + held["ties"] == held["n"]
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert set(pairs["split"]) == {"train", "held_out"} and len(pairs) == 5
    # The verdicts follow the scores written next to them.
    assert (pairs["verdict"] == np.where(pairs["score_chosen"] > pairs["score_rejected"], "a", "b")).all()


def test_the_tournament_judge_scores_each_text_once_whatever_its_position(trained):
    judge = make_pair_judge(trained["judge"], trained["artifacts"], trained["out"], templates=trained["templates"],
                            discriminator=trained["out"])
    case = toy_case("7-2")
    verdicts = judge([(case, GOOD, TECHNICAL), (case, TECHNICAL, GOOD), (case, GOOD, GOOD)])
    first, swapped, same = verdicts
    assert first[0] in ("a", "b") and first[1] == {"a": "b", "b": "a"}[first[0]]
    assert swapped == (first[1], first[0])  # no position bias: the same text wins either way
    assert same == ("tie", "tie")  # identical texts get identical scores
    assert ev.consistent_outcome(*first) == first[0]
    # What the model reads: the template's evidence, then the explanation as the assistant's answer.
    messages = render_messages(trained["judge"].discriminator.prompt, trained["templates"], case=case)
    assert (
        [m["role"] for m in messages] == ["system", "user"]
        and "Recommended: Babe (Comedy, Drama)." in messages[1]["content"]
    )


def test_evaluate_judges_the_tournament_with_the_discriminator(trained, tmp_path):
    cases_dir, expl, out = tmp_path / "cases", tmp_path / "expl", tmp_path / "evaluate"
    for folder in (cases_dir, expl, out):
        folder.mkdir()
    cases = [toy_case("7-2"), toy_case("8-2")]
    write_cases(cases, cases_dir / "eval.jsonl")
    texts = {"sft": GOOD, "base": TECHNICAL, "dpo_r1": GOOD}  # dpo_r1 writes what sft writes: a tie
    pd.DataFrame([{"case_id": c.case_id, "model": m, "text": t, "tokens": 20, "valid": True}
                  for c in cases for m, t in texts.items()]).to_parquet(expl / "explanations.parquet")
    ev.evaluate(out, evaluation=EvaluationConfig(bootstrap=20, diversity=False, attribute_prediction=False,
                                                 explainability=False),
                judge=trained["judge"], cases=cases_dir, explanations=expl, artifacts_dir=trained["artifacts"],
                templates=trained["templates"], discriminator=trained["out"])
    tournament = pd.read_parquet(out / "tournament.parquet").set_index(["case_id", "model_a", "model_b"])["outcome"]
    assert (tournament.xs(("sft", "dpo_r1"), level=(1, 2)) == "tie").all()
    sft_vs_base = tournament.xs(("sft", "base"), level=(1, 2))
    assert len(set(sft_vs_base)) == 1 and sft_vs_base.iloc[0] in ("a", "b")  # the same texts, the same verdict
    value = pd.read_parquet(out / "metrics.parquet").set_index(["explainer", "metric"])["value"]
    sft_wins = float(sft_vs_base.iloc[0] == "a")
    assert value[("sft", "win_ratio_llmxrec")] == sft_wins  # its one decisive pair per case; the tie left out
    assert value[("sft", "win_ratio")] == (sft_wins + 0.5) / 2  # ours: the tie is half a win
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["discriminator"] == json.loads((trained["out"] / "agreement.json").read_text())
    assert summary["tournament"]["ties"] == pytest.approx(1 / 3) and "LLMXRec" in summary["judge_note"]
    html = report.render_report(evaluation=EvaluationConfig(report_examples=1), metrics=out, explanations=expl,
                                cases=cases_dir)
    assert "LLMXRec win ratio (decisive 1/0)" in html and "Agreement with the held-out verdicts (rubric judge)" in html
    assert "33.3% ties, which LLMXRec&#39;s win ratio leaves out" in html


def test_a_sequence_over_max_length_names_its_case(trained, tmp_path):
    config = DiscriminatorConfig(max_length=40)
    model, tokenizer = disc.load(trained["out"] / "discriminator", config, trained["artifacts"])
    with pytest.raises(ValueError, match="case 1-2: evidence \\+ explanation is \\d+ tokens, over "
                                         "judge.discriminator.max_length=40"):
        disc.scores(model, tokenizer, [(toy_case("1-2"), GOOD)], config, trained["templates"])


# ---------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_smoke_flow_with_the_discriminator_as_the_tournament_judge(tmp_path):
    """The smoke pipeline with judge.kind discriminator on its ensemble judge: train_discriminator
    runs after the explanations, the evaluate stage's tournament is its, and the report shows
    its agreement and LLMXRec's win ratio."""
    import subprocess
    import sys

    artifacts = tmp_path / "artifacts"
    settings = [f"runtime.artifacts_dir={artifacts}", "judge.kind=discriminator", "judge.discriminator.base=ensemble",
                "judge.discriminator.steps=2", "judge.discriminator.batch_size=2"]
    done = subprocess.run([sys.executable, "-m", "flows.pipeline", "--config", "configs/smoke.yaml",
                           *[a for s in settings for a in ("--set", s)]],
                          cwd=ROOT, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    summary = json.loads((artifacts / "runs" / "smoke" / "summary.json").read_text())
    stages = [row["stage"] for row in summary["stages"]]
    assert stages.index("generate_explanations") < stages.index("train_discriminator") < stages.index("evaluate")
    assert len(stages) == planned_stages(load_config("configs/smoke.yaml", settings), "recxplain-pipeline")
    folders = summary["artifacts"]
    assert {"preferences", "preferences_r1", "preferences_r2", "discriminator"} <= set(folders)
    agreement = json.loads((Path(folders["discriminator"]) / "agreement.json").read_text())
    assert agreement["base"] == "ensemble" and agreement["held_out"]["all"]["n"] == agreement["held_out_pairs"] >= 1
    verdicts = pl.read_parquet(Path(folders["preferences"]) / "verdicts.parquet")
    assert set(verdicts["judge"]) == {"ensemble"}  # the pairs were judged by the base judge
    metrics = pd.read_parquet(Path(folders["evaluate"]) / "metrics.parquet")
    assert set(metrics.loc[metrics["metric"] == "win_ratio_llmxrec", "explainer"]) == set(metrics["explainer"])
    markdown = (artifacts / "runs" / "smoke" / "report.md").read_text()
    assert (
        "LLMXRec win ratio (decisive 1/0)" in markdown
        and "Agreement with the held-out verdicts (ensemble judge)" in markdown
    )
    assert "Agreement with the held-out verdicts" in (artifacts / "runs" / "smoke" / "report.html").read_text()
