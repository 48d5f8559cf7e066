"""Best-of-n sampling in the `local` provider: each prompt read once for its n samples vs each
sample reading its own copy (`recxplain.llm.local.READ_SAMPLES_ONCE`), side by side in one process.

The teacher's best-of-n (teacher_generate and the evaluation's `teacher` explainer) and the pair
candidates sample one prompt several times; the samples differ only in their seeds, so the
prompt's KV cache can be computed once and copied. Prompts: `--prompts` explanation prompts
shaped like the pipeline's cases (bench_generate.py's), `--n` samples each at the teacher's
decoding (temperature 0.7, top-p 0.9, stop_on_repeat). Prints both times, their ratio, and whether the
texts are the same (they must be: same seeds, same numbers up to float noise).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_best_of.py [--prompts 32] [--n 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_generate import explanation_prompts  # noqa: E402

from recxplain.config import LLMConfig, SamplingConfig  # noqa: E402
from recxplain.llm import load_chat_model, local  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    args = parser.parse_args()
    prompts = explanation_prompts(args.prompts, 0)
    sampling = SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens, stop_on_repeat=True)
    model = load_chat_model(LLMConfig(), args.artifacts)
    model.generate(prompts[:2], sampling, n=1)  # load and warm up outside the timings
    print(f"{args.prompts} prompts x {args.n} samples, {args.max_new_tokens} new tokens at most; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    seconds, texts = {}, {}
    for once in (False, True):
        local.READ_SAMPLES_ONCE = once
        start = time.perf_counter()
        outputs = model.generate(prompts, sampling, n=args.n)
        seconds[once] = time.perf_counter() - start
        texts[once] = [g.text for samples in outputs for g in samples]
        print(f"{'prompt read once' if once else 'read per sample':18} {seconds[once]:7.1f} s", flush=True)
    same = sum(a == b for a, b in zip(texts[False], texts[True]))
    print(f"ratio {seconds[True] / seconds[False]:.2f} (read once / per sample); "
          f"identical texts {same} of {len(texts[True])}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
