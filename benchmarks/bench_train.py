"""Benchmark: SFT, ORPO and DPO steps on SmolLM2-135M with the default LoRA config (2 cores).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py [--steps 4] [--rows 64]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_train.py --default-flow

Per trainer (each in its own process, so peak memory is that trainer's alone): seconds per
optimiser step, real (non-padding) tokens per second and peak RSS, measured by the stage
functions of tasks/train.py themselves (their training.json), plus the fastest step after the
first (the closest to an unloaded machine's when others share it) and CPU seconds per step.
Compared side by side:
- SFT with the plain cross-entropy (our CPU default) vs trl's chunked LM-head loss, and with
  batch 2 x 2 accumulation steps vs batch 4 (same rows per step, less memory);
- SFT in fp32 vs bf16 autocast (`--trainers sft_fp32 sft_bf16`): bf16 pays only where the CPU
  multiplies bf16 matrices in hardware (AMX);
- DPO with the reference log-probs computed by an extra forward pass each step vs precomputed
  once before training (`training.dpo.precompute_ref_log_probs`). The precompute runs in the
  DPOTrainer's constructor over every pair, before the timed steps, so it is timed separately
  (trainer construction and trl's `_precompute_ref_logps`), and the number of optimiser steps in
  one round from which precomputing pays off is printed. The reference is the round's init
  student, so the precompute is paid again every DPO round;
- DPO scoring the completion tokens only (our CPU default) vs every position, trl's own choice
  on devices without Triton (`--trainers dpo_per_step dpo_all_positions`);
- SFT with the LM head on the answer positions only (our CPU default) vs on every position, the
  model's own loss (`--trainers sft_plain_loss sft_full_head`);
- ORPO and DPO reading each pair's prompt once, [prompt][chosen][rejected] in one row (our CPU
  default), vs trl's two rows per pair (`--trainers orpo orpo_unpacked dpo_per_step dpo_unpacked`);
- SFT with LoRA dropout 0 (the default) vs 0.05 (`--trainers sft_plain_loss sft_lora_dropout`).

`--default-flow` runs SFT, ORPO and two DPO rounds with the default TrainingConfig (what
`make flow` trains) and reports each stage's wall time, for the 15-minute flow budget.

Rows are synthetic but shaped like the pipeline's: a system prompt, a user message with a
10-movie rating history from ml-100k (titles, years, genres from the recbole wheel), item-KNN
neighbours and knowledge-graph paths, and a ~60-word answer. Timings on a shared machine are
noisy: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import functools
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


def _timed(cls: type, name: str, seconds: dict, calls: list | None = None) -> None:
    """Add the wall and CPU time of every call of `cls.name` to `seconds[name]` and
    `seconds[name + "_cpu"]`; with `calls`, also append each call's wall time to it."""
    method = getattr(cls, name)
    seconds[name] = seconds[name + "_cpu"] = 0.0

    @functools.wraps(method)
    def timed(*args, **kwargs):
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            return method(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - start
            seconds[name + "_cpu"] += time.process_time() - cpu_start
            if calls is not None:
                calls.append(time.perf_counter() - start)

    setattr(cls, name, timed)


def _record_step_times(trainer_class: type, step_times: list) -> None:
    """Append the wall time of every optimiser step (all its micro-batches) to `step_times`."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter() - self.start)

    train = trainer_class.train

    @functools.wraps(train)
    def train_with_step_times(self, *args, **kwargs):
        self.add_callback(StepTimes())
        return train(self, *args, **kwargs)

    trainer_class.train = train_with_step_times


def run_one(kind: str, work: Path, steps: int, threads: int | None = None) -> dict:
    """One trainer, in this process; returns its training.json summary and timings."""
    import torch
    from transformers import Trainer

    if threads:
        torch.set_num_threads(threads)

    from recxplain import training as trainers
    from recxplain.config import TrainingConfig
    from tasks import train

    # Steps capped, no validation: the numbers are step costs, not quality.
    overrides = {"valid_fraction": 0.0, "sft": {"max_steps": steps}, "orpo": {"max_steps": steps},
                 "dpo": {"max_steps": steps, "precompute_ref_log_probs": kind == "dpo_precomputed"}}
    if kind == "sft_batch2x2":  # same 4 rows per optimiser step, half the activations at a time
        overrides.update(batch_size=2, gradient_accumulation_steps=2)
    if kind in ("sft_fp32", "sft_bf16"):  # training.precision pinned either way (`auto` picks one)
        overrides["precision"] = kind.removeprefix("sft_")
    if kind == "sft_lora_dropout":
        overrides["lora"] = TrainingConfig().lora.model_copy(update={"dropout": 0.05})
    training = TrainingConfig(**overrides)
    artifacts = REPO / "artifacts"
    out = work / kind
    out.mkdir()

    # On a shared machine the fastest step is the closest to an unloaded one; CPU seconds of the
    # training loop (all threads) are another, steadier view than wall time.
    seconds: dict[str, float] = {}
    step_times: list[float] = []
    ref_forwards: list[float] = []
    _record_step_times(Trainer, step_times)
    _timed(Trainer, "train", seconds)
    if kind == "sft_trl_loss":
        from trl import SFTTrainer

        train.plain_loss_sft_trainer = lambda: SFTTrainer  # trl's own chunked LM-head loss
    if kind == "sft_full_head":  # the model's own loss: the LM head at every position
        from trl import SFTTrainer

        class FullHeadSFTTrainer(SFTTrainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels")}
                return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

        train.plain_loss_sft_trainer = lambda: FullHeadSFTTrainer
    if kind == "orpo_unpacked":  # trl's forward: chosen and rejected rows each with the prompt
        trainers.packed_pair_logps = lambda *args: None
    if kind == "dpo_unpacked":  # trl's rows: chosen and rejected each with the prompt
        train.read_dpo_prompts_once = lambda trainer: None
    if kind == "dpo_all_positions":  # trl's own CPU behaviour: log-probs of every position
        train.score_completion_tokens_only = lambda: None
    if kind.startswith("dpo"):
        from trl import DPOTrainer

        _timed(DPOTrainer, "__init__", seconds)  # includes the precompute and its model hash
        _timed(DPOTrainer, "_precompute_ref_logps", seconds)
        # Called once per batch of pairs by the precompute (the per-step reference is computed inline).
        _timed(DPOTrainer, "compute_ref_log_probs", seconds, ref_forwards)
    start, cpu_start = time.perf_counter(), time.process_time()
    if kind.startswith("sft"):
        train.train_sft(out, training=training, sft=work / "sft", artifacts_dir=artifacts)
    elif kind.startswith("orpo"):
        train.train_orpo(out, training=training, preferences=work / "pairs", artifacts_dir=artifacts)
    else:
        train.train_dpo(out, training=training, preferences=work / "pairs", init=work / "sft_plain_loss",
                        artifacts_dir=artifacts)  # fmt: skip
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    # The content (steps, tokens) and the run's timings and peak memory, kept beside it.
    report = json.loads((out / "training.json").read_text()) | json.loads((out / "run.json").read_text())
    tokens_per_step = report["train_tokens"] / report["steps"]
    later = step_times[1:] or step_times  # the first step also warms up
    return {
        "trainer": kind,
        "steps": report["steps"],
        "s_per_step": report["train_runtime_s"] / report["steps"],
        "min_step_s": min(later),
        "step_times_s": step_times,
        "cpu_s_per_step": seconds["train_cpu"] / report["steps"],
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": report["tokens_per_second"],
        "tokens_per_s_min_step": tokens_per_step / min(later),
        "peak_rss_gb": report["peak_memory_mb"] / 1024,
        "train_runtime_s": report["train_runtime_s"],
        "stage_wall_s": wall,
        "stage_cpu_s": cpu,
        "bf16": report["bf16"],
        "trainable_parameters": report["trainable_parameters"],
        "rows": report["rows"],
        "batch_size": report["batch_size"],
        "trainer_init_s": seconds.get("__init__"),
        "precompute_s": seconds.get("_precompute_ref_logps"),
        "precompute_cpu_s": seconds.get("_precompute_ref_logps_cpu"),
        "ref_forward_s": ref_forwards,
        "load_average": os.getloadavg()[0],
        "threads": torch.get_num_threads(),
        "lora_dropout": training.lora.dropout,
    }


def default_flow(work: Path) -> None:
    """SFT, ORPO, DPO r1, DPO r2 with the default TrainingConfig; wall time per stage."""
    from recxplain.config import TrainingConfig
    from tasks import train

    training = TrainingConfig()
    artifacts = REPO / "artifacts"
    total = total_cpu = 0.0
    print(f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    print(f"{'stage':10} {'steps':>5} {'wall_s':>7} {'cpu_s':>7} {'train_s':>7} {'valid_loss first->last':>24} "
          f"{'peak_GB':>7}")
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


def _compare(results: list[dict]) -> None:
    """Ratios between the rows of this run, by mean step time and by fastest step."""
    by = {r["trainer"]: r for r in results}

    def ratio(slow: dict, fast: dict) -> str:
        return (f"{slow['s_per_step'] / fast['s_per_step']:.2f}x by mean step, "
                f"{slow['min_step_s'] / fast['min_step_s']:.2f}x by fastest step")

    if "sft_plain_loss" in by and "sft_trl_loss" in by:
        print(f"SFT plain loss faster than trl chunked loss: {ratio(by['sft_trl_loss'], by['sft_plain_loss'])}")
    for slow, fast, what in (("sft_full_head", "sft_plain_loss", "SFT LM head on answer positions vs every position"),
                             ("orpo_unpacked", "orpo", "ORPO prompt read once per pair vs two rows per pair"),
                             ("dpo_unpacked", "dpo_per_step", "DPO prompt read once per pair vs trl's rows")):
        if slow in by and fast in by:
            print(f"{what}: faster {ratio(by[slow], by[fast])}; peak {by[fast]['peak_rss_gb']:.2f} vs "
                  f"{by[slow]['peak_rss_gb']:.2f} GB")
    if "sft_plain_loss" in by and "sft_lora_dropout" in by:
        print(f"SFT LoRA dropout {by['sft_plain_loss']['lora_dropout']} faster than "
              f"{by['sft_lora_dropout']['lora_dropout']}: {ratio(by['sft_lora_dropout'], by['sft_plain_loss'])}")
    if "sft_plain_loss" in by and "sft_batch2x2" in by:
        a, b = by["sft_plain_loss"], by["sft_batch2x2"]
        print(f"SFT batch 2 x 2 accumulation vs batch 4: step time {ratio(b, a)}; "
              f"peak {b['peak_rss_gb']:.2f} vs {a['peak_rss_gb']:.2f} GB")  # fmt: skip
    if "dpo_per_step" in by and "dpo_precomputed" in by:
        a, b = by["dpo_per_step"], by["dpo_precomputed"]
        print(f"DPO precomputed faster than per-step reference: {ratio(a, b)}; "
              f"peak {b['peak_rss_gb']:.2f} vs {a['peak_rss_gb']:.2f} GB")  # fmt: skip
        batches = b["ref_forward_s"]
        print(f"precompute: {b['precompute_s']:.1f} s wall ({b['precompute_cpu_s']:.1f} s CPU) for {b['rows']} pairs "
              f"in {len(batches)} batches (fastest batch {min(batches):.2f} s)")  # fmt: skip
        steps_per_epoch = b["rows"] / b["batch_size"]
        # The fixed cost of a round (precompute over every pair + trl's model hash) against the
        # time saved per step; by wall time of this run, and from the fastest step and batch.
        estimates = (
            ("wall", b["trainer_init_s"] - a["trainer_init_s"], a["s_per_step"] - b["s_per_step"]),
            ("fastest", min(batches) * len(batches), a["min_step_s"] - b["min_step_s"]),
        )
        for label, extra, saved in estimates:
            if saved <= 0:
                print(f"  {label}: no step time saved, precomputing does not pay off")
                continue
            even = extra / saved
            print(f"  {label}: +{extra:.1f} s per round, {saved:.2f} s saved per step -> pays off from ~{even:.0f} "
                  f"steps in one round (= {even / steps_per_epoch:.1f} epochs over {b['rows']} pairs, "
                  f"{b['batch_size']} pairs/step); paid again every round")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps per trainer")
    parser.add_argument("--rows", type=int, default=64, help="synthetic rows / pairs")
    parser.add_argument("--default-flow", action="store_true", help="time the default flow's training stages")
    parser.add_argument("--trainers", nargs="+",
                        default=["sft_plain_loss", "sft_trl_loss", "sft_batch2x2", "orpo", "dpo_per_step",
                                 "dpo_precomputed"])  # fmt: skip
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core); 1 keeps "
                        "the timings steadier while other processes share the cores")  # fmt: skip
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one trainer in this process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, Path(args.work), args.steps, args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        sft, prefs = _rows(args.rows)
        _write(work / "sft", "sft.jsonl", sft)
        _write(work / "pairs", "preferences.jsonl", prefs)
        if args.default_flow:
            default_flow(work)
            return
        print(f"SmolLM2-135M-Instruct, default LoRA, {args.steps} steps per trainer, {args.rows} synthetic rows, "
              f"torch threads: {args.threads or 'default'}; "
              f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")  # fmt: skip
        print(f"{'trainer':16} {'s/step':>7} {'fastest':>7} {'cpu_s/step':>10} {'tok/step':>8} {'tok/s':>6} "
              f"{'tok/s@fastest':>13} {'peak_GB':>7} {'init_s':>6} {'precompute_s':>12} {'load':>5}")  # fmt: skip
        results = []
        for kind in args.trainers:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", kind, "--work", str(work), "--steps", str(args.steps)]
                + (["--threads", str(args.threads)] if args.threads else []),
                capture_output=True, text=True, cwd=REPO,
            )  # fmt: skip
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{kind}: failed\n{proc.stderr[-3000:]}")
                continue
            r = json.loads(line[len("RESULT ") :])
            results.append(r)
            init = f"{r['trainer_init_s']:.1f}" if r["trainer_init_s"] is not None else "-"
            precompute = f"{r['precompute_s']:.1f}" if r["precompute_s"] else "-"
            print(f"{kind:16} {r['s_per_step']:>7.2f} {r['min_step_s']:>7.2f} {r['cpu_s_per_step']:>10.2f} "
                  f"{r['tokens_per_step']:>8.0f} {r['tokens_per_s']:>6.0f} {r['tokens_per_s_min_step']:>13.0f} "
                  f"{r['peak_rss_gb']:>7.2f} {init:>6} {precompute:>12} {r['load_average']:>5.1f}",
                  flush=True)  # fmt: skip
        _compare(results)
        print(f"load average at end {os.getloadavg()[0]:.1f}")
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
