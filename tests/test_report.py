"""The report page, its markdown and its table (tasks/report.py), on a small evaluated run whose
judge is scripted (the evaluate stage runs for real, without the embedding model)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from recxplain.config import EvaluationConfig, JudgeConfig  # noqa: E402
from recxplain.schemas import Case, write_cases  # noqa: E402
from recxplain.stats import paired_comparison  # noqa: E402
from tasks import evaluate as ev  # noqa: E402
from tasks import report  # noqa: E402

EVIL = '<script>alert("x")</script> Return of the Jedi & more'
JUDGE_NOTE = "Judged by the rubric's verifiable checks alone: no LLM judge in this run."


def alignment_table():
    """paired_comparison on hand-made per-explanation values of 24 cases: the DPO student is valid
    on 20 where base is valid on 4 and loops less; sft equals base on validity."""
    valid_base = [1.0] * 4 + [0.0] * 20
    columns = {
        "base": {"validity": valid_base, "loop": [1.0] * 12 + [0.0] * 12, "check_score": [0.2] * 24},
        "template": {"validity": [1.0] * 24, "loop": [0.0] * 24, "check_score": [0.9] * 24},
        "sft": {"validity": valid_base, "loop": [1.0] * 12 + [0.0] * 12, "check_score": [0.3] * 24},
        "dpo_r2": {"validity": [1.0] * 20 + [0.0] * 4, "loop": [0.0] * 24, "check_score": [0.4] * 24},
    }
    frame = pd.concat([pd.DataFrame({"explainer": e, "case_id": [f"c{i}" for i in range(24)]} | values)
                       for e, values in columns.items()], ignore_index=True)
    metrics = {"validity": ("binary", 1), "loop": ("binary", -1), "check_score": ("score", 1)}
    return paired_comparison(frame, ["sft", "dpo_r2"], ["base", "template"], metrics, n_boot=200)


def make_case(case_id: str, gender: str) -> Case:
    return Case.model_validate({
        "case_id": case_id, "split": "eval", "user_id": int(case_id.split("-")[0]),
        "profile": {"gender": gender, "age": 30, "occupation": "writer"},
        "history": [{"item_id": 1, "title": "Star Wars (1977)", "genres": ["Sci-Fi"], "rating": 5, "timestamp": 1}],
        "item": {"item_id": 3, "title": "Return of the Jedi (1983)", "genres": ["Action", "Sci-Fi"]},
        "rank": 1, "score": 0.9,
        "neighbours": [{"item_id": 1, "title": "Star Wars (1977)", "weight": 0.8, "rated": 5.0}],
        "paths": [{"pattern": "p", "steps": ["user:1"], "text": "You rated <b>Star Wars</b> 5/5", "score": 0.7}],
    })


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    cases_dir, expl, metrics, student = root / "cases", root / "expl", root / "metrics", root / "sft"
    for d in (cases_dir, expl, metrics, student):
        d.mkdir()
    cases = [make_case(f"{u}-3", "F" if u % 2 else "M") for u in range(1, 7)]
    write_cases(cases, cases_dir / "eval.jsonl")
    texts = {"template": 'We recommend "Return of the Jedi (1983)". It is similar to "Star Wars (1977)" (5/5).',
             "teacher": "You loved Star Wars, so Return of the Jedi will thrill you.",
             "sft": EVIL}
    pd.DataFrame([{"case_id": c.case_id, "model": m, "text": t, "tokens": 12, "latency_s": 0.2, "valid": True}
                  for c in cases for m, t in texts.items()]).to_parquet(expl / "explanations.parquet")
    (student / "training.json").write_text(json.dumps({"curve": [
        {"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 1.5, "valid_loss": 1.7},
        {"step": 3, "train_loss": 1.2}]}))

    def prefer_teacher(requests):  # the teacher beats everyone; template beats sft (both orders)
        rank = {texts["teacher"]: 0, texts["template"]: 1, EVIL: 2}
        return [("a", "b") if rank[a] < rank[b] else ("b", "a") for _, a, b in requests]

    def score(requests):
        return [80 if text == texts["teacher"] else 40 for _, text in requests]

    original = ev._judge_functions
    ev._judge_functions = lambda *args, **kwargs: (prefer_teacher, score)
    try:
        ev.evaluate(metrics, evaluation=EvaluationConfig(bootstrap=50, diversity=False, attribute_prediction=False),
                    judge=JudgeConfig(), cases=cases_dir, explanations=expl, artifacts_dir=root)
    finally:
        ev._judge_functions = original
    # A copy of the evaluate folder as older runs left it: no alignment table, no judge note.
    plain = root / "metrics_plain"
    shutil.copytree(metrics, plain)
    (plain / "alignment.parquet").unlink(missing_ok=True)
    alignment_table().to_parquet(metrics / "alignment.parquet", index=False)
    summary = json.loads((metrics / "metrics.json").read_text())
    (metrics / "metrics.json").write_text(json.dumps(summary | {"judge_note": JUDGE_NOTE}))
    summary.pop("judge_note", None)
    (plain / "metrics.json").write_text(json.dumps(summary))
    out = root / "report"
    out.mkdir()
    paths = root / "paths"
    paths.mkdir()
    (paths / "path_quality.json").write_text(json.dumps(PATH_QUALITY))
    report.write_report(out, evaluation=EvaluationConfig(report_examples=2), metrics=metrics, explanations=expl,
                        cases=cases_dir, students={"sft": student}, paths=paths)
    return {"out": out, "metrics": metrics, "plain": plain, "explanations": expl, "cases": cases_dir}


PATH_QUALITY = {"recommendations": 9430, "explained": 9430, "coverage": 1.0, "paths_per_recommendation": 2.9989,
                "LIR": 0.394, "SEP": 0.559, "ETD": 0.349, "path_types_possible": 15,
                "patterns_of_chosen": {"user-rated-movie-similar_to-movie": 7065, "user-rated-movie-actor-movie": 894}}


def test_the_report_shows_the_paths_quality_and_pattern_mix(run):
    html = (run["out"] / "report.html").read_text()
    markdown = (run["out"] / "report.md").read_text()
    for page in (html, markdown):
        assert "ETD 0.349" in page and "similar_to 7,065 (89%), actor 894 (11%)" in page
        assert "9,430 recommendations: 100.0% have at least one" in page


def test_tournament_metrics_of_the_scripted_judge(run):
    value = pd.read_parquet(run["metrics"] / "metrics.parquet").set_index(["explainer", "metric"])["value"]
    assert value[("teacher", "win_ratio")] == 1.0 and value[("sft", "win_ratio")] == 0.0
    assert value[("template", "avg_rank")] == 2.0
    assert value[("teacher", "explainability")] == 80.0
    assert value[("teacher", "explainability_parsed")] == 1.0
    tournament = pd.read_parquet(run["metrics"] / "tournament.parquet")
    assert len(tournament) == 6 * 3 and tournament["consistent"].all()


def test_report_is_one_self_contained_escaped_page(run):
    html = (run["out"] / "report.html").read_text()
    for name in ("template", "teacher", "sft"):
        assert f"<th>{name}</th>" in html
    # Model text and evidence are escaped, never markup; the page has no script of its own.
    assert "<script" not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&lt;b&gt;Star Wars&lt;/b&gt;" in html
    # No external resources: every image is an inline PNG.
    assert not re.search(r"(src|href)=\"(?!data:)", html)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 5  # win ratio, BT, rank, bounded metrics, style, explainability, gender, curves
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "Training curves" in html and html.count('class="example"') == 2
    assert "Win rate of the row explainer" in html and "Pairwise tests" in html


def test_metrics_table_and_markdown(run):
    rows = report.metrics_table(run["metrics"])
    assert [r["explainer"] for r in rows] == ["template", "teacher", "sft"]
    teacher = next(r for r in rows if r["explainer"] == "teacher")
    assert teacher["win_ratio"] == "1.000 [1.000, 1.000]"
    assert (
        re.fullmatch(r"\d+\.\d+ \[\d+\.\d+, \d+\.\d+\]", teacher["bt_strength"])
        or teacher["bt_strength"].startswith("-")
    )
    markdown = (run["out"] / "report.md").read_text()
    assert "Best by win ratio: **teacher**" in markdown
    lines = markdown.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("| explainer |")))
    end = lines.index("", start)
    assert end - start == 1 + 1 + 3  # header, rule, explainers
    assert json.loads((run["out"] / "metrics_table.json").read_text()) == rows


def test_format_cell():
    assert report.format_cell(0.5, 0.4, 0.61, 2) == "0.50 [0.40, 0.61]"
    assert report.format_cell(0.5, float("nan"), float("nan"), 2) == "0.50"


def test_missing_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.parquet"):
        report.metrics_table(tmp_path)


def test_markdown_opens_with_did_alignment_help(run):
    markdown = (run["out"] / "report.md").read_text()
    body = [line for line in markdown.splitlines()[1:] if line]
    assert body[0] == "## Did alignment help?"
    section = markdown.split("## Did alignment help?")[1].split("held-out cases, explainers:")[0]
    # One sentence per student, against base; numbers from the table.
    sentences = [line for line in section.splitlines() if line.startswith("- ")]
    assert [s.split(":")[0] for s in sentences] == ["- sft vs base", "- dpo_r2 vs base"]
    dpo = sentences[1]
    assert "validity +0.667 [" in dpo and "McNemar p<0.0001 (better)" in dpo
    assert "repetition loops -0.500 [" in dpo and "check score +0.200" in dpo
    assert "validity +0.000 [+0.000, +0.000], McNemar p=1.000 (no difference)" in sentences[0]
    # The table: 2 students x 2 baselines x 3 metrics, metrics labelled.
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| student | baseline | metric | n |") and len(rows) == 1 + 12
    assert "| dpo_r2 | base | Validity | 24 | 0.833 | 0.167 | +0.667 [" in section
    assert "| dpo_r2 | template | Repetition loops |" in section and "| Check score |" in section
    assert f"_{JUDGE_NOTE}_" in section
    # The alignment section comes before the run's summary line and the metrics table.
    assert markdown.index("Did alignment help?") < markdown.index("| explainer |")


def test_page_opens_with_did_alignment_help(run):
    html = (run["out"] / "report.html").read_text()
    assert html.index("<h2>Did alignment help?</h2>") < html.index("<h2>Metrics</h2>")
    section = html[html.index("<h2>Did alignment help?</h2>"):html.index("<h2>Metrics</h2>")]
    assert "<li>dpo_r2 vs base: validity +0.667 [" in section and "McNemar p&lt;0.0001 (better)" in section
    assert section.count("<tr><th>dpo_r2</th>") == 6 and "<td>Repetition loops</td>" in section
    assert '<td class="better">better</td>' in section and '<td class="worse">worse</td>' in section
    assert "Judged by the rubric&#39;s verifiable checks alone" in section


def test_a_run_without_alignment_still_renders(run):
    markdown = report.report_markdown(run["plain"])
    assert "Did alignment help?" not in markdown and markdown.splitlines()[2].endswith("held-out cases, explainers: "
                                                                                      "template, teacher, sft.")
    html = report.render_report(evaluation=EvaluationConfig(report_examples=1), metrics=run["plain"],
                                explanations=run["explanations"], cases=run["cases"])
    assert "Did alignment help?" not in html and "<h2>Metrics</h2>" in html
    assert "Judged by" not in html and "Judged by" not in markdown
    # An empty table (no student was trained) is the same as none.
    shutil.copytree(run["plain"], run["plain"].parent / "metrics_empty")
    empty = run["plain"].parent / "metrics_empty"
    alignment_table().iloc[:0].to_parquet(empty / "alignment.parquet", index=False)
    assert "Did alignment help?" not in report.report_markdown(empty)
