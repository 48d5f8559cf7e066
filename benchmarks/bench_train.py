"""Benchmark: SFT, ORPO and DPO steps on SmolLM2-135M with the default LoRA config (2 cores).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py [--steps 4] [--rows 64]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py --default-flow

Per trainer (each in its own process, so peak memory is that trainer's alone): seconds per
optimiser step, real (non-padding) tokens per second and peak RSS, measured by the stage
functions of tasks/train.py themselves (their training.json). Compared side by side:
- SFT with the plain cross-entropy (our CPU default) vs trl's chunked LM-head loss, and with
  batch 2 x 2 accumulation steps vs batch 4 (same rows per step, less memory);
- DPO with the reference log-probs computed by an extra forward pass each step vs precomputed
  once before training (`training.precompute_ref_log_probs`; the precompute time is reported).

`--default-flow` runs SFT, ORPO and two DPO rounds with the default TrainingConfig (what
`make flow` trains) and reports each stage's wall time, for the 15-minute flow budget.

Rows are synthetic but shaped like the pipeline's: a system prompt, a user message with a
10-movie rating history from ml-100k (titles, years, genres from the recbole wheel), item-KNN
neighbours and knowledge-graph paths, and a ~60-word answer. Timings on a shared machine are
noisy: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYSTEM = (
    "You are a movie recommendation assistant. Explain in 2-4 sentences, addressed to the user, why "
    "the recommended movie fits them, using only the evidence given."
)


def _movies() -> list[tuple[str, str, list[str]]]:
    import importlib.util

    root = Path(importlib.util.find_spec("recbole").origin).parent / "dataset_example" / "ml-100k"
    movies = []
    for line in (root / "ml-100k.item").read_text(encoding="latin-1").splitlines()[1:]:
        _, title, year, genres = (line.split("\t") + ["", "", ""])[:4]
        movies.append((title, year, genres.split()))
    return movies


def _rows(n: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """n SFT rows and n preference rows with pipeline-like prompts."""
    rng = random.Random(seed)
    movies = _movies()
    sft, prefs = [], []
    for i in range(n):
        history = rng.sample(movies, 10)
        item = rng.choice(movies)
        lines = [f"- {t} ({y}), {', '.join(g)}: rated {rng.randint(3, 5)}/5" for t, y, g in history]
        neighbours = [f"- {t} (similarity {rng.uniform(0.2, 0.6):.2f})" for t, _, _ in history[:5]]
        paths = [
            f"- you rated {history[k][0]} highly; it shares the genre {(history[k][2] or ['Drama'])[0]} with {item[0]}"
            for k in range(3)
        ]
        user = (
            "User: age 34, occupation engineer.\nRecently rated movies:\n" + "\n".join(lines)
            + f"\n\nRecommended movie: {item[0]} ({item[1]}), {', '.join(item[2])}.\n"
            + "Similar movies the user rated (item-KNN):\n" + "\n".join(neighbours)
            + "\nKnowledge-graph paths:\n" + "\n".join(paths) + "\n\nWrite the explanation."
        )
        prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        good = (
            f"Since you enjoyed {history[0][0]} and {history[1][0]}, {item[0]} should suit you: it is "
            f"a {', '.join(item[2]).lower()} film from {item[1]} that shares the tone of movies you rated highly. "
            f"Viewers who liked {history[2][0]} also rated it well, and like {history[3][0]} it rewards "
            "attention to character and story, so it is a natural next pick for your watchlist."
        )
        bad = f"{item[0]} is a movie. " * 6
        sft.append({"messages": prompt + [{"role": "assistant", "content": good}], "case_id": f"{i}-{i}"})
        prefs.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": good}],
            "rejected": [{"role": "assistant", "content": bad}],
            "case_id": f"{i}-{i}",
        })  # fmt: skip
    return sft, prefs


def _write(folder: Path, name: str, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def run_one(kind: str, work: Path, steps: int) -> dict:
    """One trainer, in this process; returns its training.json summary."""
    from recxplain.config import TrainingConfig
    from tasks import train

    # Steps capped, no validation: the numbers are step costs, not quality.
    cap = {"sft_max_steps": steps, "orpo_max_steps": steps, "dpo_max_steps": steps}
    overrides = {"valid_fraction": 0.0, **cap}
    if kind == "dpo_precomputed":
        overrides["precompute_ref_log_probs"] = True
    if kind == "sft_batch2x2":  # same 4 rows per optimiser step, half the activations at a time
        overrides.update(batch_size=2, gradient_accumulation_steps=2)
    training = TrainingConfig(**overrides)
    artifacts = REPO / "artifacts"
    out = work / kind
    out.mkdir()
    start, cpu_start = time.perf_counter(), time.process_time()
    if kind == "sft_trl_loss":
        train._PlainLossSFTTrainer = train.SFTTrainer  # trl's own chunked LM-head loss
    if kind.startswith("sft"):
        train.train_sft(out, training=training, sft=work / "sft", artifacts_dir=artifacts)
    elif kind == "orpo":
        train.train_orpo(out, training=training, preferences=work / "pairs", artifacts_dir=artifacts)
    else:
        train.train_dpo(out, training=training, preferences=work / "pairs", init=work / "sft_plain_loss",
                        artifacts_dir=artifacts)  # fmt: skip
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    report = json.loads((out / "training.json").read_text())
    return {
        "stage_cpu_s": cpu,  # CPU seconds of the whole stage: steadier than wall time under load
        "trainer": kind,
        "steps": report["steps"],
        "s_per_step": report["train_runtime_s"] / report["steps"],
        "tokens_per_step": report["train_tokens"] / report["steps"],
        "tokens_per_s": report["tokens_per_second"],
        "peak_rss_gb": report["peak_memory_mb"] / 1024,
        "train_runtime_s": report["train_runtime_s"],
        "stage_wall_s": wall,
        "bf16": report["bf16"],
        "trainable_parameters": report["trainable_parameters"],
    }


def default_flow(work: Path) -> None:
    """SFT, ORPO, DPO r1, DPO r2 with the default TrainingConfig; wall time per stage."""
    from recxplain.config import TrainingConfig
    from tasks import train

    training = TrainingConfig()
    artifacts = REPO / "artifacts"
    total = total_cpu = 0.0
    print(f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    print(f"{'stage':10} {'steps':>5} {'wall_s':>7} {'cpu_s':>7} {'train_s':>7} {'valid_loss first->last':>24} {'peak_GB':>7}")
    previous = None
    for name in ("sft", "orpo", "dpo_r1", "dpo_r2"):
        out = work / name
        out.mkdir()
        start, cpu_start = time.perf_counter(), time.process_time()
        if name == "sft":
            train.train_sft(out, training=training, sft=work / "sft", artifacts_dir=artifacts)
        elif name == "orpo":
            train.train_orpo(out, training=training, preferences=work / "pairs", artifacts_dir=artifacts)
        else:
            train.train_dpo(out, training=training, preferences=work / "pairs", init=previous, artifacts_dir=artifacts)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        total += wall
        total_cpu += cpu
        if name != "orpo":
            previous = out
        report = json.loads((out / "training.json").read_text())
        valid = [row["valid_loss"] for row in report["curve"] if "valid_loss" in row]
        first_last = f"{valid[0]:.3f} -> {valid[-1]:.3f}" if valid else "-"
        print(f"{name:10} {report['steps']:>5} {wall:>7.1f} {cpu:>7.1f} {report['train_runtime_s']:>7.1f} "
              f"{first_last:>24} {report['peak_memory_mb'] / 1024:>7.2f}", flush=True)  # fmt: skip
    print(f"total training: wall {total:.1f} s, CPU {total_cpu:.1f} s (2 cores: unloaded wall ~ CPU / 2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per trainer")
    parser.add_argument("--rows", type=int, default=64, help="synthetic rows / pairs")
    parser.add_argument("--default-flow", action="store_true", help="time the default flow's training stages")
    parser.add_argument("--trainers", nargs="+",
                        default=["sft_plain_loss", "sft_trl_loss", "sft_batch2x2", "orpo", "dpo_per_step", "dpo_precomputed"])  # fmt: skip
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one trainer in this process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, Path(args.work), args.steps)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        sft, prefs = _rows(args.rows)
        _write(work / "sft", "sft.jsonl", sft)
        _write(work / "pairs", "preferences.jsonl", prefs)
        if args.default_flow:
            default_flow(work)
            return
        print(f"SmolLM2-135M-Instruct, default LoRA, {args.steps} steps per trainer, {args.rows} synthetic rows; "
              f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")  # fmt: skip
        print(f"{'trainer':16} {'s/step':>7} {'tok/step':>8} {'tok/s':>7} {'peak_GB':>7} {'stage_wall_s':>12}")
        results = []
        for kind in args.trainers:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", kind, "--work", str(work), "--steps", str(args.steps)],
                capture_output=True, text=True, cwd=REPO,
            )  # fmt: skip
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{kind}: failed\n{proc.stderr[-3000:]}")
                continue
            r = json.loads(line[len("RESULT ") :])
            results.append(r)
            print(f"{kind:16} {r['s_per_step']:>7.2f} {r['tokens_per_step']:>8.0f} {r['tokens_per_s']:>7.0f} "
                  f"{r['peak_rss_gb']:>7.2f} {r['stage_wall_s']:>12.1f}", flush=True)  # fmt: skip
        print(f"load average at end {os.getloadavg()[0]:.1f}")
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
