"""Peak memory of a process that loads five students in a row (issue 15: within 1.5x of one
student's when each is released after use, as the stages do with `recxplain.llm.release_models`).

    .venv/bin/python benchmarks/bench_release.py [--students 5]

Each student is the embedded SmolLM2-135M plus its own LoRA adapter (random, so that each is a
distinct model), loaded through `load_chat_model` and asked one short question, as a stage would.
Two child processes side by side: one releases each student before loading the next, one keeps
them all (what `recxplain.llm.local` did before stages released their models). Prints each
process's peak RSS after the first student and after the last, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_RATIO = 1.5


def make_adapters(base: Path, folder: Path, count: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapters = []
    for i in range(count):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
        out = folder / f"student{i}"
        model.save_pretrained(out)
        AutoTokenizer.from_pretrained(base).save_pretrained(out)
        adapters.append(out)
    return adapters


def child(adapters: list[Path], artifacts: Path, release: bool) -> None:
    """Load each student, answer once, release it (or not); print peak RSS after each, in GB."""
    import resource

    from recxplain.config import LLMConfig, SamplingConfig
    from recxplain.llm import load_chat_model, release_models

    question = [{"role": "user", "content": "Name one movie about space."}]
    peaks = []
    for adapter in adapters:
        model = load_chat_model(LLMConfig(provider="local", model="smollm2", adapter=adapter, device="cpu"),
                                artifacts)
        model.generate([question], SamplingConfig(temperature=0.0, max_new_tokens=8))
        del model
        if release:
            release_models()
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9)
    print(json.dumps(peaks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=5)
    parser.add_argument("--child", choices=["release", "keep"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        adapters = sorted((args.work / "adapters").iterdir())
        child(adapters, args.work / "artifacts", release=args.child == "release")
        return

    from recxplain.models import resolve_model

    work = Path(tempfile.mkdtemp(prefix="bench-release-"))
    base = resolve_model("smollm2", work / "artifacts")  # converts the embedded GGUF once
    make_adapters(base, work / "adapters", args.students)
    results = {}
    for mode in ("release", "keep"):
        done = subprocess.run([sys.executable, __file__, "--child", mode, "--work", str(work)], cwd=ROOT,
                              check=True, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    for mode, peaks in results.items():
        print(f"{mode:8} peak RSS after student 1: {peaks[0]:.2f} GB, after student {len(peaks)}: {peaks[-1]:.2f} GB, "
              f"ratio {peaks[-1] / peaks[0]:.2f}")
    ratio = results["release"][-1] / results["release"][0]
    print(f"released one by one: {ratio:.2f}x one student's peak (goal <= {GOAL_RATIO}x)")


if __name__ == "__main__":
    main()
