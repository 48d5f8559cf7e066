"""The arena bundle: what voters see, exported from a pipeline run (stage `export_arena`).

A bundle is a folder with

- `bundle.json`: the cases (the user's recent ratings with titles, the recommended movie and its
  genres) and each explainer's explanation under a code name (`e1`, `e2`, ...). Nothing in it
  says which model wrote what.
- `admin.json`: the code name -> explainer mapping, for the admin's leaderboard and exports.
- `judge.parquet` (when the evaluation's judge tournament is given): case_id, model_a, model_b,
  outcome with real explainer names, to measure how often the AI judge agrees with people
  (verdicts the evaluate stage marked `invalid`, never parsed, are left out).

Explanations are exported as written, valid or not (people may vote "both bad"); empty texts
are left out, and a case keeps only if at least two explainers explained it.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import polars as pl

from recxplain.config import ArenaConfig
from recxplain.schemas import check_columns, read_cases
from recxplain.stage import reads
from recxplain.stats import check_battles

BUNDLE_FORMAT = "recxplain-arena-bundle/1"


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: cases by id, code names, the code -> explainer mapping, judge verdicts."""

    cases: dict[str, dict]
    codes: list[str]
    mapping: dict[str, str]
    judge: pd.DataFrame | None
    digest: str  # sha256 of bundle.json: the votes database remembers which bundle it serves


def _tournament_file(path: Path) -> Path:
    file = path / "tournament.parquet" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no judge tournament (expected tournament.parquet)")
    return file


@reads(arena=("explainers", "max_history", "seed"))
def export_arena(
    out: Path,
    *,
    arena: ArenaConfig,
    cases: Path,
    explanations: Path,
    evaluation: Path | None = None,
) -> None:
    """Write an arena bundle into `out` (bundle.json, admin.json, judge.parquet when judged).

    Args:
        out: the stage folder.
        arena: `arena.explainers` picks the explainers (None: all), `arena.max_history` the
            history shown, `arena.seed` the code names.
        cases: folder with `eval.jsonl` (build_cases).
        explanations: folder with `explanations.parquet` (generate_explanations).
        evaluation: optional folder (or file) with the judge tournament `tournament.parquet`
            (case_id, model_a, model_b, outcome) written by the evaluate stage.
    """
    case_file = Path(cases) / "eval.jsonl"
    if not case_file.is_file():
        raise FileNotFoundError(f"{cases}: no eval.jsonl (the build_cases output)")
    explanation_file = Path(explanations) / "explanations.parquet"
    if not explanation_file.is_file():
        raise FileNotFoundError(f"{explanations}: no explanations.parquet (the generate_explanations output)")

    frame = pl.read_parquet(explanation_file)
    check_columns(frame, "explanations", explanation_file)
    duplicated = frame.filter(pl.struct("case_id", "model").is_duplicated())
    if len(duplicated):
        first = duplicated.row(0, named=True)
        raise ValueError(
            f"{explanation_file}: case {first['case_id']!r} has several explanations by {first['model']!r}"
        )
    available = sorted(frame["model"].unique().to_list())
    explainers = sorted(set(arena.explainers)) if arena.explainers is not None else available
    unknown = [name for name in explainers if name not in available]
    if unknown:
        raise ValueError(f"{explanation_file}: arena.explainers {unknown} not found; it has {available}")
    if len(explainers) < 2:
        raise ValueError(f"{explanation_file}: the arena needs at least two explainers; found {explainers}")

    # Code names in a seeded random order, so e1 is not always the alphabetically first model.
    shuffled = list(explainers)
    random.Random(arena.seed).shuffle(shuffled)
    code_of = {name: f"e{i}" for i, name in enumerate(shuffled, 1)}

    texts: dict[str, dict[str, str]] = {}
    for row in frame.filter(pl.col("model").is_in(explainers)).iter_rows(named=True):
        text = (row["text"] or "").strip()
        if text:
            texts.setdefault(str(row["case_id"]), {})[code_of[row["model"]]] = text

    exported = []
    for case in read_cases(case_file):
        explained = texts.get(case.case_id, {})
        if len(explained) < 2:
            continue
        history = case.history[-arena.max_history :]
        exported.append(
            {
                "case_id": case.case_id,
                "history": [{"title": m.title, "year": m.year, "rating": m.rating} for m in reversed(history)],
                "item": {"title": case.item.title, "year": case.item.year, "genres": case.item.genres},
                "explanations": dict(sorted(explained.items())),
            }
        )
    if not exported:
        raise ValueError(f"{case_file}: no eval case has explanations by two explainers in {explanation_file}")

    bundle = {"format": BUNDLE_FORMAT, "codes": sorted(code_of.values()), "cases": exported}
    (out / "bundle.json").write_text(json.dumps(bundle, ensure_ascii=False, indent=1))
    admin = {
        "format": BUNDLE_FORMAT,
        "mapping": {code: name for name, code in sorted(code_of.items(), key=lambda kv: kv[1])},
    }
    (out / "admin.json").write_text(json.dumps(admin, indent=1))

    if evaluation is not None:
        source = _tournament_file(Path(evaluation))
        judge = pd.read_parquet(source)
        # The evaluate stage marks verdicts that never parsed as "invalid": no opinion to compare.
        if "outcome" in judge.columns:
            judge = judge[judge["outcome"] != "invalid"]
        judge = check_battles(judge, str(source), need_case=True)
        exported_ids = {case["case_id"] for case in exported}
        keep = (
            judge["case_id"].astype(str).isin(exported_ids)
            & judge["model_a"].isin(explainers)
            & judge["model_b"].isin(explainers)
        )
        judge = judge.loc[keep, ["case_id", "model_a", "model_b", "outcome"]].astype(str)
        judge.to_parquet(out / "judge.parquet", index=False)


def load_bundle(folder: Path) -> Bundle:
    """Read and check a bundle folder written by `export_arena`."""
    folder = Path(folder)
    bundle_file, admin_file = folder / "bundle.json", folder / "admin.json"
    for file in (bundle_file, admin_file):
        if not file.is_file():
            raise FileNotFoundError(f"{folder}: not an arena bundle (no {file.name}); run the export_arena stage")
    raw = bundle_file.read_bytes()
    bundle = json.loads(raw)
    admin = json.loads(admin_file.read_text())
    for name, data in ((bundle_file, bundle), (admin_file, admin)):
        if data.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{name}: format {data.get('format')!r}, expected {BUNDLE_FORMAT!r}")
    codes = list(bundle["codes"])
    mapping = dict(admin["mapping"])
    if sorted(mapping) != sorted(codes):
        raise ValueError(f"{admin_file}: mapping covers {sorted(mapping)}, bundle has codes {sorted(codes)}")
    cases = {}
    for number, case in enumerate(bundle["cases"]):
        strange = set(case["explanations"]) - set(codes)
        if strange or len(case["explanations"]) < 2:
            raise ValueError(
                f"{bundle_file}: case {number} ({case.get('case_id')!r}) has explanations "
                f"{sorted(case['explanations'])}"
            )
        cases[case["case_id"]] = case
    judge_file = folder / "judge.parquet"
    judge = (
        check_battles(pd.read_parquet(judge_file), str(judge_file), need_case=True) if judge_file.is_file() else None
    )
    return Bundle(cases=cases, codes=codes, mapping=mapping, judge=judge, digest=hashlib.sha256(raw).hexdigest())
