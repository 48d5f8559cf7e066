"""The run's report: one self-contained HTML page, plus markdown and tables for Prefect artifacts.

`write_reclaif_report` is the same for `task: recommend` (RecLAIF): the comparison table of
classic and LLM recommenders, the AI-feedback counts per round, training curves and example
answers (see its docstring).

`write_report(out, ...)` is the pipeline stage. It reads the evaluate folder (metrics and the
tables beside it), the explanations, the cases and each student's `training.json`, and writes:

- `report.html`: one page that opens offline (plots embedded as base64 PNG, no scripts, no
  external assets). It opens with "Did alignment help?" when the evaluate folder has
  `alignment.parquet` (`recxplain.stats.paired_comparison`: each trained student against the
  untrained base model and the template on the same cases), then the metrics table with 95%
  intervals, win-ratio bars, Bradley-Terry strengths with intervals, grouped bars of the bounded
  metrics and of the style rates, attribute prediction against its baselines, training curves,
  explanation length by user gender, the significance tables, and example explanations side by
  side with their evidence. Every piece of model text is HTML-escaped (Jinja2 autoescape):
  explanations are untrusted LLM output.
- `report.md`: the markdown summary (`report_markdown`), also what the flow publishes as a
  Prefect markdown artifact; `metrics_table.json`: the rows of `metrics_table`, for a Prefect
  table artifact.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from recxplain.config import EvaluationConfig
from recxplain.reclaif import METRICS as RECLAIF_METRICS
from recxplain.reclaif import display_title, read_candidate_sets
from recxplain.schemas import Case, check_columns, read_cases
from recxplain.stage import reads

# metric -> (label, direction: +1 higher is better, -1 lower is better, 0 neither; digits)
METRICS: dict[str, tuple[str, int, int]] = {
    "bt_strength": ("Bradley-Terry strength", 1, 2),
    "win_ratio": ("Win ratio", 1, 3),
    "win_ratio_llmxrec": ("LLMXRec win ratio (decisive 1/0)", 1, 3),
    "avg_rank": ("Average rank", -1, 2),
    "explainability": ("Explainability (1-100)", 1, 1),
    "explainability_parsed": ("Explainability scores parsed", 0, 3),
    "faithfulness": ("Faithfulness", 1, 3),
    "hallucination_rate": ("Hallucinated-title rate", -1, 3),
    "mentions_item": ("Names the recommended movie", 1, 3),
    "validity": ("Validity ratio", 1, 3),
    "rouge_l": ("ROUGE-L vs teacher", 1, 3),
    "diversity": ("Diversity (cosine distance)", 1, 3),
    "distinct_1": ("Distinct-1", 1, 3),
    "distinct_2": ("Distinct-2", 1, 3),
    "domain_terms": ("Movie terms / 100 words", 0, 2),
    "technical_terms": ("Technical terms / 100 words", -1, 2),
    "subjective_terms": ("Evaluative words / 100 words", 0, 2),
    "sentiment": ("Sentiment (VADER compound)", 0, 3),
    "attr_age": ("Age bracket accuracy", 1, 3),
    "attr_gender": ("Gender accuracy", 1, 3),
    "attr_occupation": ("Occupation accuracy", 1, 3),
    "gender_length_gap": ("Words female - male", 0, 2),
    "words": ("Words", 0, 1),
    "tokens": ("Tokens", 0, 1),
    "latency_s": ("Latency (s)", -1, 3),
    "check_score": ("Check score", 1, 3),
    "passes_checks": ("Passes every check", 1, 3),
    "loop": ("Repetition loops", -1, 3),
    "false_rating_claims": ("False claims about the user's ratings", -1, 3),
}

# Shorter labels in the alignment section, where the metric is a row rather than a column header.
ALIGNMENT_LABELS = {"validity": "Validity", "check_score": "Check score", "loop": "Repetition loops",
                    "faithfulness": "Faithfulness", "rouge_l": "ROUGE-L vs teacher"}

# Bounded in [0, 1]: comparable on one axis in the grouped bar chart.
BOUNDED = ("win_ratio", "faithfulness", "hallucination_rate", "mentions_item", "validity", "rouge_l", "diversity",
           "distinct_2")
STYLE = ("domain_terms", "technical_terms", "subjective_terms")


# --------------------------------------------------------------------------------------------
# Reading


def _read(folder: Path, name: str) -> pd.DataFrame | None:
    """The parquet table `name` of the folder, or None when the run did not write it."""
    path = Path(folder) / name
    return pd.read_parquet(path) if path.exists() else None


def read_metrics(metrics: Path) -> pd.DataFrame:
    """The evaluate folder's metrics.parquet; a clear error when it is missing or malformed."""
    path = Path(metrics) / "metrics.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics (run evaluate first)")
    frame = pd.read_parquet(path)
    check_columns(frame, "metrics", path)
    return frame


def _explainer_order(metrics: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(metrics["explainer"]))


def _metric_order(metrics: pd.DataFrame) -> list[str]:
    present = set(metrics["metric"])
    return [m for m in METRICS if m in present] + sorted(present - set(METRICS))


def _fmt(value: float, digits: int) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_cell(value: float, low: float, high: float, digits: int = 3) -> str:
    """'0.512 [0.401, 0.630]', or just the value when there is no interval."""
    text = _fmt(value, digits)
    if text and not (pd.isna(low) or pd.isna(high)):
        text += f" [{_fmt(low, digits)}, {_fmt(high, digits)}]"
    return text


def metrics_table(metrics: Path | pd.DataFrame) -> list[dict]:
    """One row per explainer: its name and every metric as 'value [ci_low, ci_high]'.

    The rows a Prefect table artifact shows (`create_table_artifact(table=metrics_table(...))`).
    """
    frame = read_metrics(metrics) if not isinstance(metrics, pd.DataFrame) else metrics
    cells = frame.set_index(["explainer", "metric"])
    rows = []
    for explainer in _explainer_order(frame):
        row = {"explainer": explainer}
        for metric in _metric_order(frame):
            digits = METRICS.get(metric, ("", 0, 3))[2]
            if (explainer, metric) in cells.index:
                r = cells.loc[(explainer, metric)]
                row[metric] = format_cell(r["value"], r["ci_low"], r["ci_high"], digits)
            else:
                row[metric] = ""
        rows.append(row)
    return rows


def _best(frame: pd.DataFrame, metric: str) -> tuple[str, float] | None:
    rows = frame[frame["metric"] == metric]
    if rows.empty:
        return None
    direction = METRICS.get(metric, ("", 1, 3))[1] or 1
    best = rows.loc[(rows["value"] * direction).idxmax()]
    return str(best["explainer"]), float(best["value"])


# --------------------------------------------------------------------------------------------
# Did alignment help? (alignment.parquet: students against base and template on the same cases)


def _summary(metrics: Path) -> dict:
    """The evaluate folder's metrics.json, or {} for a run without one."""
    path = Path(metrics) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def read_alignment(metrics: Path) -> pd.DataFrame | None:
    """alignment.parquet of the evaluate folder; None when absent or empty (older runs, RecLAIF)."""
    frame = _read(Path(metrics), "alignment.parquet")
    return frame if frame is not None and len(frame) else None


def alignment_label(metric: str) -> str:
    """A readable name for a metric of the alignment table; unknown metrics as they are."""
    return ALIGNMENT_LABELS.get(metric) or METRICS.get(metric, (metric,))[0]


def _signed(value: float, digits: int) -> str:
    """The value with its sign ('+0.250', '-0.100'); '' for NaN."""
    return "" if pd.isna(value) else f"{value:+.{digits}f}"


def _difference(row, digits: int) -> str:
    """'+0.417 [+0.271, +0.563]', or the difference alone without an interval."""
    text = _signed(row.difference, digits)
    if text and not (pd.isna(row.ci_low) or pd.isna(row.ci_high)):
        text += f" [{_signed(row.ci_low, digits)}, {_signed(row.ci_high, digits)}]"
    return text


def _p(value: float) -> str:
    """A p-value for reading: '<0.0001' below that, 'n/a' where no test ran."""
    if pd.isna(value):
        return "n/a"
    return "<0.0001" if value < 0.0001 else f"{value:.4f}" if value < 0.001 else f"{value:.3f}"


def alignment_rows(alignment: pd.DataFrame) -> list[dict]:
    """The alignment table as display rows: every number formatted, metrics labelled."""
    rows = []
    for r in alignment.itertuples(index=False):
        digits = METRICS.get(r.metric, ("", 0, 3))[2]
        rows.append({"student": r.student, "baseline": r.baseline, "metric": alignment_label(r.metric),
                     "n": int(r.n), "mean_student": _fmt(r.mean_student, digits),
                     "mean_baseline": _fmt(r.mean_baseline, digits), "difference": _difference(r, digits),
                     "test": r.test, "p": _p(r.p_value), "verdict": r.verdict})
    return rows


def alignment_sentences(alignment: pd.DataFrame, reference: str = "base") -> list[str]:
    """One sentence per student: every metric against `reference` (the first baseline it met when
    `reference` is not in the table), e.g. 'dpo vs base: validity +0.417 [...], McNemar p=0.0001 (better); ...'."""
    sentences = []
    for student, rows in alignment.groupby("student", sort=False):
        baseline = reference if reference in set(rows["baseline"]) else rows["baseline"].iloc[0]
        parts = []
        for r in rows[rows["baseline"] == baseline].itertuples(index=False):
            label = alignment_label(r.metric)
            label = label if label[:2].isupper() else label[0].lower() + label[1:]  # keep 'ROUGE-L'
            p = _p(r.p_value)
            p = f"p{p}" if p.startswith("<") else f"p={p}"
            parts.append(f"{label} {_difference(r, METRICS.get(r.metric, ('', 0, 3))[2])}, "
                         f"{str(r.test).split()[0]} {p} ({r.verdict})")
        sentences.append(f"{student} vs {baseline}: " + "; ".join(parts) + ".")
    return sentences


# Said once under the heading, in both the markdown and the page.
ALIGNMENT_INTRO = ("Each trained student against the untrained base model and the fixed template, on the same "
                   "held-out cases: the difference is student minus baseline, averaged over the cases where both "
                   "have a value, with a bootstrap 95% interval over cases. Exact McNemar test for yes/no metrics, "
                   "Wilcoxon signed-rank for scores; the verdict (p < 0.05) takes the metric's direction into "
                   "account (fewer loops is better) and is not corrected for the number of comparisons.")
ALIGNMENT_HEADERS = ("student", "baseline", "metric", "n", "student mean", "baseline mean", "difference [95% CI]",
                     "test", "p", "verdict")


def alignment_markdown(alignment: pd.DataFrame | None, judge_note: str | None) -> list[str]:
    """The "Did alignment help?" section as markdown lines; none without an alignment table."""
    if alignment is None:
        return []
    lines = ["## Did alignment help?", "", ALIGNMENT_INTRO, ""]
    lines += [f"- {sentence}" for sentence in alignment_sentences(alignment)]
    lines += ["", "| " + " | ".join(ALIGNMENT_HEADERS) + " |", "|---" * len(ALIGNMENT_HEADERS) + "|"]
    for row in alignment_rows(alignment):
        lines.append("| " + " | ".join(str(v) for v in row.values()) + " |")
    if judge_note:
        lines += ["", f"_{judge_note}_"]
    return lines + [""]


def evidence_sentences(paths: Path | None) -> list[str]:
    """The knowledge-graph paths behind the explanations (mine_paths' `path_quality.json`):
    coverage, path quality (LIR, SEP, ETD) and the pattern mix of the chosen (first) paths."""
    file = Path(paths) / "path_quality.json" if paths is not None else None
    if file is None or not file.exists():
        return []
    q = json.loads(file.read_text())
    chosen = q.get("patterns_of_chosen") or {}  # pattern -> count, most frequent first
    total = sum(chosen.values()) or 1
    mix = ", ".join(f"{pattern.split('-')[-2]} {n:,} ({100 * n / total:.0f}%)" for pattern, n in chosen.items())
    return [f"Knowledge-graph paths for {q['recommendations']:,} recommendations: {100 * q['coverage']:.1f}% have at "
            f"least one, {q['paths_per_recommendation']:.2f} per recommendation.",
            f"Path quality of the chosen (first) paths: LIR {q['LIR']:.3f}, SEP {q['SEP']:.3f}, ETD {q['ETD']:.3f} "
            f"(per user: distinct patterns of the chosen paths over the most possible, at most the "
            f"{q['path_types_possible']} patterns the graph allows).",
            f"Patterns of the chosen paths: {mix}."]


def discriminator_sentences(summary: dict) -> list[str]:
    """What the discriminator (judge.kind: discriminator) learnt from and how often it agrees with
    the held-out verdicts of its base judge (and people's, with arena votes); [] without one."""
    d = summary.get("discriminator")
    if not d:
        return []

    def rate(a: dict) -> str:
        if not a or not a.get("n"):
            return "no pairs"
        p = "" if a.get("p_value") is None else _p(a["p_value"])
        p = p and (f", binomial p{p}" if p.startswith("<") else f", binomial p={p}")
        return (f"{a['agree']} of {a['n']} = {a['rate']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] "
                f"({a['disagree']} disagree, {a['ties']} ties{p})")

    sources = ", ".join(f"{n} {s}" for s, n in d.get("sources", {}).items())
    lines = [f"Discriminator (LLMXRec): a reward model trained on {d['train_pairs']} of {d['pairs']} pairs "
             f"({sources}); {d['held_out_pairs']} pairs of {d['held_out_cases']} cases held out.",
             f"Agreement with the held-out verdicts ({d['base']} judge): {rate(d['held_out'].get('all'))}; "
             f"on its own training pairs: {rate(d['train'].get('all'))}."]
    if "arena" in d["held_out"]:
        lines.append(f"Agreement with held-out arena votes: {rate(d['held_out']['arena'])}.")
    if d.get("arena"):
        a = d["arena"]
        lines.append(f"Arena votes: {a['votes']}, used {a['used']} (left out: {a['not_decisive']} ties or both-bad, "
                     f"{a['flagged']} flagged, {a['unmatched']} on explanations this run lacks, "
                     f"{a['identical']} identical).")
    tournament = summary.get("tournament") or {}
    if "ties" in tournament:
        lines.append(f"Tournament: {tournament['comparisons']} comparisons, {100 * tournament['ties']:.1f}% ties, "
                     "which LLMXRec's win ratio leaves out and ours counts as half a win.")
    return lines


def report_markdown(
    metrics: Path,
    headline: tuple[str, ...] = ("bt_strength", "win_ratio", "win_ratio_llmxrec", "avg_rank", "explainability",
                                 "faithfulness", "hallucination_rate", "rouge_l", "diversity", "validity"),
) -> str:
    """A markdown summary of the evaluation: whether alignment helped (when the run compared its
    students), the leader, a compact table, the significant pairs."""
    frame = read_metrics(metrics)
    summary = _summary(metrics)
    alignment = read_alignment(metrics)
    lines = ["# recxplain evaluation", ""] + alignment_markdown(alignment, summary.get("judge_note"))
    if summary:
        explainers = ", ".join(summary.get("explainers", []))
        lines += [f"{summary.get('cases', '?')} held-out cases, explainers: {explainers}.", ""]
    if summary.get("judge_note") and alignment is None:  # the note still belongs to the run
        lines += [f"_{summary['judge_note']}_", ""]
    if summary.get("discriminator"):
        lines += [f"- {s}" for s in discriminator_sentences(summary)] + [""]
    for metric in ("bt_strength", "win_ratio", "explainability"):
        best = _best(frame, metric)
        if best:
            lines.append(f"- Best by {METRICS[metric][0].lower()}: **{best[0]}** ({best[1]:.{METRICS[metric][2]}f})")
    lines.append("")
    columns = [m for m in headline if m in set(frame["metric"])]
    table = metrics_table(frame)
    lines.append("| explainer | " + " | ".join(METRICS.get(m, (m,))[0] for m in columns) + " |")
    lines.append("|---" * (len(columns) + 1) + "|")
    for row in table:
        lines.append(f"| {row['explainer']} | " + " | ".join(row.get(m, "") for m in columns) + " |")
    lines.append("")
    lines.append("Values are means with bootstrap 95% intervals in brackets.")
    pairwise = _read(Path(metrics), "pairwise.parquet")
    if pairwise is not None and len(pairwise):
        significant = pairwise[pairwise["p_value"] < 0.05]
        lines.append("")
        lines.append(f"Judge tournament: {len(significant)} of {len(pairwise)} explainer pairs differ at p < 0.05 "
                     "(exact binomial test on decisive verdicts).")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Plots


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _errors(rows: pd.DataFrame) -> np.ndarray:
    low = (rows["value"] - rows["ci_low"]).clip(lower=0).fillna(0)
    high = (rows["ci_high"] - rows["value"]).clip(lower=0).fillna(0)
    return np.vstack([low.to_numpy(float), high.to_numpy(float)])


def bar_plot(
    frame: pd.DataFrame, metric: str, explainers: list[str], title: str, reference: float | None = None
) -> str | None:
    """Horizontal bars of one metric per explainer with their intervals."""
    import matplotlib.pyplot as plt

    rows = (
        frame[frame["metric"] == metric]
        .set_index("explainer")
        .reindex(explainers)
        .dropna(subset=["value"])
        .reset_index()
    )
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1))
    ax.barh(rows["explainer"], rows["value"], xerr=_errors(rows), color="#4C72B0", capsize=3)
    if reference is not None:
        ax.axvline(reference, color="grey", linestyle="--", linewidth=1)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(METRICS.get(metric, (metric,))[0] + " (95% CI)")
    return _png(fig)


def grouped_bars(
    frame: pd.DataFrame, metrics: tuple[str, ...], explainers: list[str], title: str, ylabel: str
) -> str | None:
    """Grouped bars: one group per metric, one bar per explainer, with intervals."""
    import matplotlib.pyplot as plt

    metrics = tuple(m for m in metrics if m in set(frame["metric"]))
    if not metrics:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(metrics) + 2), 4))
    width = 0.8 / max(len(explainers), 1)
    cells = frame.set_index(["explainer", "metric"])
    for i, explainer in enumerate(explainers):
        rows = pd.DataFrame([cells.loc[(explainer, m)] if (explainer, m) in cells.index else
                             pd.Series({"value": np.nan, "ci_low": np.nan, "ci_high": np.nan}) for m in metrics])
        ax.bar(np.arange(len(metrics)) + i * width, rows["value"].fillna(0), width, yerr=_errors(rows),
               label=explainer, capsize=2)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(explainers) - 1) / 2)
    ax.set_xticklabels([METRICS.get(m, (m,))[0] for m in metrics], rotation=25, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=min(len(explainers), 4))
    return _png(fig)


def training_curves(students: dict[str, Path]) -> str | None:
    """Train and validation loss per step of every student's training.json, one panel each."""
    import matplotlib.pyplot as plt

    curves = {}
    for name, folder in students.items():
        path = Path(folder) / "training.json"
        if path.exists():
            curve = json.loads(path.read_text()).get("curve", [])
            if curve:
                curves[name] = pd.DataFrame(curve)
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3), squeeze=False)
    for ax, (name, curve) in zip(axes[0], curves.items()):
        for key, style in (("train_loss", "-o"), ("valid_loss", "--s")):
            if key in curve:
                points = curve.dropna(subset=[key])
                ax.plot(points["step"], points[key], style, markersize=3, label=key.replace("_", " "))
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("loss")
    return _png(fig)


def gender_length_plot(bias: pd.DataFrame) -> str | None:
    """Mean explanation words for female and male users per explainer (LLMXRec Table 4)."""
    import matplotlib.pyplot as plt

    bias = bias.dropna(subset=["mean_f", "mean_m"], how="all")
    if bias.empty:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(bias) + 2), 3.5))
    x = np.arange(len(bias))
    ax.bar(x - 0.2, bias["mean_f"], 0.4, label="female users", color="#DD8452")
    ax.bar(x + 0.2, bias["mean_m"], 0.4, label="male users", color="#4C72B0")
    ax.set_xticks(x)
    ax.set_xticklabels(bias["explainer"], rotation=20, ha="right")
    ax.set_ylabel("mean words")
    ax.set_title("Explanation length by user gender")
    ax.legend(fontsize=8)
    return _png(fig)


def attribute_plot(attributes: pd.DataFrame) -> str | None:
    """Attribute prediction accuracy per explainer, with the random and majority baselines."""
    import matplotlib.pyplot as plt

    if attributes is None or attributes.empty:
        return None
    names = list(dict.fromkeys(attributes["attribute"]))
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, attribute in zip(axes[0], names):
        rows = attributes[attributes["attribute"] == attribute].reset_index(drop=True)
        ax.bar(rows["explainer"], rows["accuracy"], yerr=_errors(rows.rename(columns={"accuracy": "value"})),
               capsize=3, color="#55A868")
        ax.axhline(rows["random"].iloc[0], color="grey", linestyle=":", label="random")
        ax.axhline(rows["majority"].iloc[0], color="black", linestyle="--", label="majority")
        ax.set_ylim(0, 1)
        ax.set_title(attribute)
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("accuracy")
    return _png(fig)


# --------------------------------------------------------------------------------------------
# Examples


def examples(cases: list[Case], explanations: pd.DataFrame, explainers: list[str], count: int) -> list[dict]:
    """The first `count` cases every explainer explained: evidence and explanations side by side."""
    texts = explanations.set_index(["case_id", "model"])["text"]
    complete = [c for c in cases if all((c.case_id, e) in texts.index for e in explainers)]
    return [
        {
            "case": case,
            "explanations": [(e, texts[(case.case_id, e)]) for e in explainers],
        }
        for case in complete[:count]
    ]


# --------------------------------------------------------------------------------------------
# The page

# The style of both report pages (one self-contained page each: no external assets).
STYLE = """body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; white-space: nowrap; }
.best { font-weight: bold; background: #e8f4e8; }
.plots img { max-width: 100%; margin: 0.5em 0; }
.example { border: 1px solid #ddd; padding: 0.8em; margin: 1em 0; }
.explanations { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 0.6em; }
.explanation { background: #fafafa; border: 1px solid #e3e3e3; padding: 0.5em; white-space: pre-wrap; }
.muted { color: #777; font-size: 0.9em; }
.better { background: #e8f4e8; }
.worse { background: #f8e6e6; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>recxplain report</title>
<style>
""" + STYLE + """</style></head><body>
<h1>recxplain: which explainer writes the explanations people prefer, and why</h1>
<p class="muted">{{ n_cases }} held-out cases; explainers: {{ explainers | join(", ") }}.
Values are means over explanations with bootstrap 95% intervals in brackets; n is the number of values.
Bold: the best explainer on a metric with a direction.</p>

{% if alignment %}<h2>Did alignment help?</h2>
<p>{{ alignment_intro }}</p>
<ul>{% for s in alignment_sentences %}<li>{{ s }}</li>{% endfor %}</ul>
<table><tr>{% for h in alignment_headers %}<th>{{ h }}</th>{% endfor %}</tr>
{% for r in alignment %}<tr><th>{{ r.student }}</th><td>{{ r.baseline }}</td><td>{{ r.metric }}</td>
<td class="num">{{ r.n }}</td><td class="num">{{ r.mean_student }}</td><td class="num">{{ r.mean_baseline }}</td>
<td class="num">{{ r.difference }}</td><td>{{ r.test }}</td><td class="num">{{ r.p }}</td>
<td class="{{ r.verdict if r.verdict in ('better', 'worse') else '' }}">{{ r.verdict }}</td></tr>
{% endfor %}</table>
{% if judge_note %}<p class="muted">{{ judge_note }}</p>{% endif %}
{% elif judge_note %}<p class="muted">{{ judge_note }}</p>
{% endif %}
<h2>Metrics</h2>
<table><tr><th>metric</th>{% for e in explainers %}<th>{{ e }}</th>{% endfor %}</tr>
{% for row in table %}<tr><th title="{{ row.metric }}">{{ row.label }}</th>
{% for cell in row.cells %}<td class="num{% if cell.best %} best{% endif %}">{{ cell.text }}\
{% if cell.n %} <span class="muted">n={{ cell.n }}</span>{% endif %}</td>{% endfor %}</tr>
{% endfor %}</table>

<h2>Judge tournament</h2>
<p>Every pair of explainers on every case{% if tournament %}\
 ({{ tournament.comparisons }} comparisons; {{ "%.1f" | format(100 * tournament.order_inconsistent) }}%\
 order-inconsistent, counted as ties){% endif %}.
Win ratio and average rank as LLMXRec; Bradley-Terry strengths with bootstrap intervals.</p>
{% if discriminator %}<ul>{% for s in discriminator %}<li>{{ s }}</li>{% endfor %}</ul>{% endif %}
<div class="plots">{% for img in tournament_plots %}\
<img alt="tournament plot" src="data:image/png;base64,{{ img }}">{% endfor %}</div>
{% if win_rates %}<h3>Win rate of the row explainer against the column explainer</h3>
<table><tr>{% for c in win_rates.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in win_rates.rows %}<tr>{% for v in r %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}
{% if pairwise %}<h3>Pairwise tests (exact binomial on decisive verdicts)</h3>
<table><tr>{% for c in pairwise.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in pairwise.rows %}<tr>{% for v in r %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}

<h2>Quality, alignment and style</h2>
<div class="plots">{% for img in metric_plots %}\
<img alt="metric plot" src="data:image/png;base64,{{ img }}">{% endfor %}</div>
{% if significance %}<h3>Style differences between explainers (Mann-Whitney U, Holm-corrected per metric)</h3>
<table><tr>{% for c in significance.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in significance.rows %}<tr>{% for v in r %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}

{% if attribute_plot or attributes %}<h2>Attribute prediction (LLMXRec)</h2>
<p>From the history and the recommended movie alone,\
 each LLM explainer names the user's age bracket, gender and occupation.</p>
{% if attribute_plot %}<div class="plots">\
<img alt="attribute accuracy" src="data:image/png;base64,{{ attribute_plot }}"></div>{% endif %}
{% if attributes %}<table><tr>{% for c in attributes.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in attributes.rows %}<tr>{% for v in r %}<td>{{ v }}</td>{% endfor %}</tr>\
{% endfor %}</table>{% endif %}{% endif %}

<h2>Bias: explanation length by user gender</h2>
{% if gender_plot %}<div class="plots">\
<img alt="length by gender" src="data:image/png;base64,{{ gender_plot }}"></div>{% endif %}
{% if bias %}<table><tr>{% for c in bias.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in bias.rows %}<tr>{% for v in r %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}

{% if curves %}<h2>Training curves</h2>
<div class="plots"><img alt="training curves" src="data:image/png;base64,{{ curves }}"></div>{% endif %}

{% if evidence %}<h2>The evidence: knowledge-graph paths</h2>
<ul>{% for s in evidence %}<li>{{ s }}</li>{% endfor %}</ul>{% endif %}

<h2>Examples</h2>
{% for ex in examples %}<div class="example">
<h3>Case {{ ex.case.case_id }}: "{{ ex.case.item.title }}"\
{% if ex.case.item.genres %} ({{ ex.case.item.genres | join(", ") }}){% endif %}</h3>
<p class="muted">User {{ ex.case.user_id }}{% for k, v in ex.case.profile.items() %}, {{ k }} {{ v }}{% endfor %}.
History: {% for m in ex.case.history %}{{ m.title }} ({{ "%g" | format(m.rating) }}/5)\
{{ "; " if not loop.last }}{% endfor %}.</p>
{% if ex.case.neighbours %}<p class="muted">Neighbours: {% for n in ex.case.neighbours %}\
{{ n.title }} ({{ "%.2f" | format(n.weight) }}{% if n.rated is not none %}\
, rated {{ "%g" | format(n.rated) }}{% endif %}){{ "; " if not loop.last }}{% endfor %}.</p>{% endif %}
{% if ex.case.paths %}<ul class="muted">{% for p in ex.case.paths %}<li>{{ p.text }}</li>{% endfor %}</ul>{% endif %}
<div class="explanations">{% for name, text in ex.explanations %}<div class="explanation"><b>{{ name }}</b>
{{ text }}</div>{% endfor %}</div></div>
{% endfor %}
</body></html>
"""


def _rows(frame: pd.DataFrame | None, digits: int = 3) -> dict | None:
    if frame is None or frame.empty:
        return None
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return _fmt(float(v), digits)
        return str(v)
    return {"columns": list(frame.columns), "rows": [[cell(v) for v in row] for row in frame.itertuples(index=False)]}


def _metric_rows(frame: pd.DataFrame, explainers: list[str]) -> list[dict]:
    cells = frame.set_index(["explainer", "metric"])
    rows = []
    for metric in _metric_order(frame):
        label, direction, digits = METRICS.get(metric, (metric, 0, 3))
        best = _best(frame, metric)[0] if direction and len(frame[frame["metric"] == metric]) > 1 else None
        row = {"metric": metric, "label": label, "cells": []}
        for e in explainers:
            if (e, metric) in cells.index:
                r = cells.loc[(e, metric)]
                row["cells"].append({"text": format_cell(r["value"], r["ci_low"], r["ci_high"], digits),
                                     "n": int(r["n"]), "best": e == best})
            else:
                row["cells"].append({"text": "", "n": None, "best": False})
        rows.append(row)
    return rows


def render_report(*, evaluation: EvaluationConfig, metrics: Path, explanations: Path, cases: Path,
                  students: dict[str, Path] | None = None, paths: Path | None = None) -> str:
    """The report page as an HTML string (see `write_report`)."""
    import matplotlib

    matplotlib.use("Agg")
    frame = read_metrics(metrics)
    explainers = _explainer_order(frame)
    eval_cases = read_cases(Path(cases) / "eval.jsonl")
    texts = pd.read_parquet(Path(explanations) / "explanations.parquet")
    summary = _summary(metrics)
    alignment = read_alignment(metrics)

    tournament_plots = [p for p in (
        bar_plot(frame, "win_ratio", explainers, "Win ratio in the judge tournament", reference=0.5),
        bar_plot(frame, "win_ratio_llmxrec", explainers, "LLMXRec's win ratio: decisive verdicts only", reference=0.5),
        bar_plot(frame, "bt_strength", explainers, "Bradley-Terry strength"),
        bar_plot(frame, "avg_rank", explainers, "Average rank per case (1 = best)"),
    ) if p]
    metric_plots = [p for p in (
        grouped_bars(frame, BOUNDED, explainers, "Bounded metrics (0-1)", "value"),
        grouped_bars(frame, STYLE, explainers, "Style: lexicon rates", "per 100 words"),
        bar_plot(frame, "explainability", explainers, "Judge's explainability score (1-100)"),
    ) if p]
    significance = _read(Path(metrics), "significance.parquet")
    if significance is not None and len(significance):
        significance = significance.sort_values(["metric", "p_holm"]).drop(columns=["u_statistic"], errors="ignore")
    attributes = _read(Path(metrics), "attributes.parquet")
    bias = _read(Path(metrics), "bias.parquet")
    pairwise = _read(Path(metrics), "pairwise.parquet")
    win_rates = _read(Path(metrics), "win_rates.parquet")
    if win_rates is not None:
        order = [e for e in explainers if e in win_rates.index]
        win_rates = win_rates.reindex(index=order, columns=order).rename_axis("explainer").reset_index()
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(PAGE).render(
        n_cases=len(eval_cases),
        explainers=explainers,
        alignment=alignment_rows(alignment) if alignment is not None else None,
        alignment_sentences=alignment_sentences(alignment) if alignment is not None else [],
        alignment_intro=ALIGNMENT_INTRO,
        alignment_headers=ALIGNMENT_HEADERS,
        judge_note=summary.get("judge_note"),
        table=_metric_rows(frame, explainers),
        tournament=summary.get("tournament"),
        discriminator=discriminator_sentences(summary),
        tournament_plots=tournament_plots,
        pairwise=_rows(pairwise),
        win_rates=_rows(win_rates),
        metric_plots=metric_plots,
        significance=_rows(significance),
        attribute_plot=attribute_plot(attributes),
        attributes=_rows(
            attributes.drop(columns=["majority_value"], errors="ignore") if attributes is not None else None
        ),
        gender_plot=gender_length_plot(bias) if bias is not None else None,
        bias=_rows(bias, 2),
        curves=training_curves(dict(students or {})),
        evidence=evidence_sentences(paths),
        examples=examples(eval_cases, texts, [e for e in explainers if e in set(texts["model"])],
                          evaluation.report_examples),
    )


@reads(evaluation=("report_examples",))
def write_report(out: Path, *, evaluation: EvaluationConfig, metrics: Path, explanations: Path, cases: Path,
                 students: dict[str, Path] | None = None, paths: Path | None = None) -> None:
    """Write report.html, report.md and metrics_table.json into `out`.

    Args:
        out: the stage folder.
        evaluation: `report_examples` (cases shown side by side).
        metrics: the evaluate folder.
        explanations: the generate_explanations folder.
        cases: the build_cases folder (`eval.jsonl`: the examples' evidence).
        students: explainer name -> student folder (each `training.json` gives a training curve).
        paths: the mine_paths folder (`path_quality.json`: coverage, LIR, SEP, ETD, pattern mix).
    """
    out = Path(out)
    (out / "report.html").write_text(render_report(evaluation=evaluation, metrics=metrics, explanations=explanations,
                                                   cases=cases, students=students, paths=paths))
    evidence = [f"- {sentence}" for sentence in evidence_sentences(paths)]
    (out / "report.md").write_text(report_markdown(metrics) + ("\n## The evidence\n\n" + "\n".join(evidence) + "\n"
                                                               if evidence else ""))
    (out / "metrics_table.json").write_text(json.dumps(metrics_table(metrics), indent=2))


# --------------------------------------------------------------------------------------------
# RecLAIF (`task: recommend`): the comparison table as the run's report

RECLAIF_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>recxplain RecLAIF report</title>
<style>
""" + STYLE + """</style></head><body>
<h1>recxplain RecLAIF: the language model as the recommender</h1>
<p class="muted">{{ caption }} Bold: the best recommender on a metric.</p>

<h2>Classic recommenders vs LLM recommenders on the same candidate sets</h2>
<table><tr><th>recommender</th><th>kind</th>{% for m in metrics %}<th>{{ m }}</th>{% endfor %}</tr>
{% for row in table %}<tr><th>{{ row.model }}</th><td>{{ row.kind }}</td>
{% for cell in row.cells %}<td class="num{% if cell.best %} best{% endif %}">{{ cell.text }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% if plot %}<div class="plots"><img alt="comparison plot" src="data:image/png;base64,{{ plot }}"></div>{% endif %}

{% if feedback %}<h2>AI feedback</h2>
<p>The SFT data and, per DPO round, the student's sampled answer pairs and what the judge kept
(only order-consistent verdicts on pairs where an answer is valid become DPO pairs).</p>
<table><tr>{% for c in feedback.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for r in feedback.rows %}<tr>{% for v in r %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}

{% if curves %}<h2>Training curves</h2>
<div class="plots"><img alt="training curves" src="data:image/png;base64,{{ curves }}"></div>{% endif %}

<h2>Examples</h2>
{% for ex in examples %}<div class="example">
<h3>{{ ex.set_id }}: next movie "{{ ex.target }}"</h3>
<p class="muted">History: {{ ex.history | join("; ") }}.</p>
<p class="muted">Candidates: {{ ex.candidates | join("; ") }}.</p>
<div class="explanations">{% for a in ex.answers %}<div class="explanation"><b>{{ a.model }}</b> ({{ a.verdict }})
{{ a.text }}</div>{% endfor %}</div></div>
{% endfor %}
</body></html>
"""

# Feedback stage stats shown in the report: (column, stats.json key), for answer stages (teacher,
# sampled pairs) and for judge stages (their validity_ratio is that of the LLM's verdicts).
ANSWER_COLUMNS = (("sets", "sets"), ("answers valid", "validity_ratio"), ("SFT rows", "sft_rows"),
                  ("pairs", "pairs"), ("identical dropped", "identical_dropped"))
JUDGE_COLUMNS = (("judged", "pairs_judged"), ("LLM asked", "llm_asked"), ("kept", "kept"), ("both bad", "both_bad"),
                 ("ties", "ties"), ("LLM verdicts parsed", "validity_ratio"),
                 ("LLM order-inconsistent", "llm_order_inconsistent"))


def _comparison_rows(summary: pd.DataFrame, metrics: list[str]) -> list[dict]:
    """One row per recommender: cells 'value [ci_low, ci_high]', the best per metric marked."""
    best = {}
    for metric in metrics:
        rows = summary[(summary["metric"] == metric) & (summary["n"] > 0)].dropna(subset=["value"])
        if len(rows) > 1 and rows["value"].nunique() > 1:
            best[metric] = set(rows.loc[rows["value"] == rows["value"].max(), "model"])
    table = []
    for model in dict.fromkeys(summary["model"]):
        frame = summary[summary["model"] == model].set_index("metric")
        cells = []
        for metric in metrics:
            if metric not in frame.index or frame.loc[metric, "n"] == 0:
                cells.append({"text": "–", "best": False})
                continue
            r = frame.loc[metric]
            digits = 1 if metric == "Explainability" else 3
            cells.append({"text": format_cell(r["value"], r["ci_low"], r["ci_high"], digits),
                          "best": model in best.get(metric, ())})
        table.append({"model": model, "kind": frame["kind"].iloc[0], "cells": cells})
    return table


def _feedback_table(feedback: dict[str, Path]) -> pd.DataFrame | None:
    """One row per feedback stage (its stats.json); columns only where some stage has a value."""
    rows = []
    for name, folder in feedback.items():
        path = Path(folder) / "stats.json"
        if path.exists():
            stats = json.loads(path.read_text())
            columns = JUDGE_COLUMNS if "pairs_judged" in stats else ANSWER_COLUMNS
            rows.append({"stage": name} | {column: stats.get(key) for column, key in columns})
    if not rows:
        return None
    frame = pd.DataFrame(rows, dtype=object)  # object: counts stay integers
    return frame.dropna(axis=1, how="all").fillna("")


def reclaif_examples(evaluation: Path, candidates: Path, count: int) -> list[dict]:
    """The first `count` eval sets: history, candidates, the next movie, and each recommender's
    answer (LLM text, or a classic model's top picks) with whether it parsed as valid."""
    answers = pd.read_parquet(Path(evaluation) / "per_answer.parquet")
    examples = []
    for cs in read_candidate_sets(candidates, "eval")[:count]:
        titles = {m.item_id: display_title(m) for m in cs.candidates}
        rows = answers[answers["case_id"] == cs.set_id]
        shown = []
        for r in rows.itertuples(index=False):
            text = r.text if r.kind == "llm" else "\n".join(f"{i}. {titles[p]}" for i, p in enumerate(r.picks, 1))
            verdict = "valid" if r.valid else f"invalid: {r.problems}"
            hit = f"next movie ranked {int(r.rank)}" if math.isfinite(r.rank) else "next movie not picked"
            shown.append({"model": r.model, "text": text, "verdict": f"{verdict}; {hit}" if r.kind == "llm" else hit})
        examples.append({"set_id": cs.set_id, "target": display_title(cs.target),
                         "history": [display_title(m) for m in cs.history],
                         "candidates": [titles[m.item_id] for m in cs.candidates], "answers": shown})
    return examples


def write_reclaif_report(out: Path, *, evaluation: Path, candidates: Path, feedback: dict[str, Path] | None = None,
                         students: dict[str, Path] | None = None, examples: int = 3) -> None:
    """The report of a `task: recommend` run: report.html, report.md and metrics_table.json.

    Args:
        out: the stage folder.
        evaluation: the reclaif_evaluate folder (comparison.parquet / .md, per_answer.parquet).
        candidates: the build_candidate_sets folder (the examples' history and candidates).
        feedback: stage label -> folder with a stats.json (teacher, sampled pairs and judge per round).
        students: recommender name -> student folder (training curves; a round that trained
            nothing shares its folder with the previous student and is drawn once).
        examples: eval sets shown with every recommender's answer.
    """
    import matplotlib

    matplotlib.use("Agg")
    out, evaluation = Path(out), Path(evaluation)
    summary = pd.read_parquet(evaluation / "comparison.parquet")
    comparison_md = (evaluation / "comparison.md").read_text()
    metrics = [m for m in RECLAIF_METRICS if m in set(summary["metric"])]
    table = _comparison_rows(summary, metrics)
    feedback_frame = _feedback_table(dict(feedback or {}))
    curves: dict[str, Path] = {}
    for name, folder in (students or {}).items():
        if Path(folder) not in curves.values():
            curves[name] = Path(folder)
    plot = grouped_bars(summary.rename(columns={"model": "explainer"}),
                        tuple(m for m in metrics if m != "Explainability"), list(dict.fromkeys(summary["model"])),
                        "Classic vs LLM recommenders (95% CI)", "value")
    stats_path = evaluation / "stats.json"
    k = json.loads(stats_path.read_text()).get("top_k", "K") if stats_path.exists() else "K"
    page = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(RECLAIF_PAGE).render(
        caption=comparison_md.splitlines()[0], metrics=[m.replace("@K", f"@{k}") for m in metrics], table=table,
        plot=plot,
        feedback=_rows(feedback_frame), curves=training_curves(curves),
        examples=reclaif_examples(evaluation, candidates, examples),
    )
    (out / "report.html").write_text(page)
    markdown = ["# recxplain RecLAIF evaluation", "", comparison_md]
    if feedback_frame is not None:
        markdown += ["## AI feedback", "", "| " + " | ".join(feedback_frame.columns) + " |",
                     "|" + "---|" * len(feedback_frame.columns)]
        markdown += ["| " + " | ".join(str(v) for v in row) + " |" for row in feedback_frame.itertuples(index=False)]
    (out / "report.md").write_text("\n".join(markdown) + "\n")
    rows = [{"recommender": row["model"], "kind": row["kind"]} | {m: c["text"] for m, c in zip(metrics, row["cells"])}
            for row in table]
    (out / "metrics_table.json").write_text(json.dumps(rows, indent=2))
