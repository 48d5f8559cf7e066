"""What a run started from the command line prints: one line per stage as it starts and ends,
and none of the libraries' noise unless `runtime.verbose` is true.

    [7/19] judge_pairs_r1 ...
    [7/19] judge_pairs_r1 ... 74 s

Quiet (the default) hides datasets' "Map" / "Tokenizing" bars, transformers' loading bars,
Python warnings (transformers FutureWarnings, trl's notes) and every Prefect log line on the
console; Prefect's API handler still records all of them, so a failed stage keeps its full
traceback in the UI. Our own packages' warnings and errors still print.
"""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from dataclasses import dataclass

from recxplain.config import Config
from recxplain.explainers import explainer_names

# Loggers that print on the console even when quiet: the project's own.
OWN_PACKAGES = {"recxplain", "tasks", "flows", "arena", "__main__"}
LIBRARY_LOGGERS = ("transformers", "trl", "peft", "accelerate", "datasets", "sentence_transformers")


@dataclass
class StageConsole:
    """Prints `[k/N] label ...` when a stage starts and `[k/N] label ... 74 s` (or `cached`,
    `failed after 3 s`) when it ends. N is the number of stages the run plans (None: unknown)."""

    total: int | None = None
    started_count: int = 0

    def started(self, label: str) -> int:
        self.started_count += 1
        self.write(f"{self.counter(self.started_count)} {label} ...")
        return self.started_count

    def finished(self, number: int, label: str, state: str, seconds: float) -> None:
        if state == "Cached":
            outcome = "cached"
        elif state in ("Completed", "Running"):
            outcome = f"{seconds:.0f} s"
        else:
            outcome = f"{state.lower()} after {seconds:.0f} s"
        self.write(f"{self.counter(number)} {label} ... {outcome}")

    def counter(self, number: int) -> str:
        return f"[{number}/{self.total}]" if self.total and number <= self.total else f"[{number}]"

    @staticmethod
    def write(line: str) -> None:
        # Not print(): flows run with log_prints, which turns print() into a Prefect INFO log.
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


# The console of the run this process started from the command line (flows/cli.py sets it);
# None in runs started otherwise (tests, a worker), which print no stage lines.
CONSOLE: StageConsole | None = None


def planned_stages(cfg: Config, flow_name: str) -> int | None:
    """How many stages a run of `flow_name` goes through with `cfg` (the N of `[k/N]`).

    Mirrors the stage calls of flows/pipeline.py, flows/reclaif.py, flows/retrain.py and
    flows/evaluate_only.py; tests/test_console.py checks it against runs."""
    rounds = cfg.training.rounds
    evidence = 3  # prepare_data, train_recommender, mine_paths
    if cfg.task == "recommend":
        # candidates, teacher, SFT, (sample, judge, DPO) per round, recommend, evaluate, report
        learned = 3 + 3 * rounds + 3
    else:
        # cases, teacher, teacher pairs, judge, SFT, ORPO, (sample, judge, DPO) per round,
        # explanations (per explainer and shard, merged), evaluate, report, arena; the teacher and
        # the pair sampling per shard of training cases and merged (the teacher's pairs only when
        # they are sampled)
        train = sharded_tasks(cfg, cfg.cases.train_users)
        pairs = 1 if cfg.pairs.source == "teacher_samples" else train
        learned = 1 + train + pairs + 1 + 2 + (train + 2) * rounds + explanation_tasks(cfg) + 3
    discriminator = int(cfg.task == "explain" and cfg.judge.kind == "discriminator")  # train_discriminator
    if flow_name == "recxplain-pipeline":
        return evidence + learned + discriminator
    if flow_name == "recxplain-retrain":
        return evidence if cfg.retrain.evidence_only else evidence + learned + discriminator
    if flow_name == "recxplain-evaluate":
        return evidence + 1 + explanation_tasks(cfg) + 3 + discriminator
    return None


def shard_count(cfg: Config, cases: int) -> int:
    """Shards of `runtime.shard_cases` that `cases` cases (one per user, as build_cases plans) make."""
    return -(-cases // cfg.runtime.shard_cases) if cfg.runtime.shard_cases else 1


def sharded_tasks(cfg: Config, cases: int) -> int:
    """Tasks of a stage run per shard: the shards and their merge, or one task."""
    shards = shard_count(cfg, cases)
    return shards + 1 if shards > 1 else 1


def explanation_tasks(cfg: Config) -> int:
    """generate_explanations' tasks: one per explainer and shard of held-out cases, and the merge."""
    return len(explainer_names(cfg.evaluation, cfg.training)) * shard_count(cfg, cfg.cases.eval_users) + 1


class OwnRecordsOnly(logging.Filter):
    """Lets through the project's own log records only (drops Prefect's and the libraries')."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] in OWN_PACKAGES


def console_handlers() -> list[logging.Handler]:
    """The handlers that write to the terminal: Prefect's console handlers on the root logger
    and on the loggers Prefect configures (its API handlers are left alone)."""
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in ("uvicorn", "fastapi")]
    return [
        handler for logger in loggers for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
    ]


def set_library_output(verbose: bool) -> None:
    """Quiet (default) or verbose console output of the libraries, for this process."""
    import datasets
    import transformers
    import transformers.modeling_gguf_pytorch_utils as gguf_conversion
    from tqdm.auto import tqdm

    level = logging.INFO if verbose else logging.ERROR
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
    if verbose:
        datasets.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
        transformers.utils.logging.set_verbosity_info()
        logging.getLogger("prefect").setLevel(logging.INFO)
        warnings.simplefilter("default")
    else:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        warnings.simplefilter("ignore")
    # The one-time GGUF conversion of the embedded model draws a bar of its own (plain tqdm).
    gguf_conversion.tqdm = functools.partial(tqdm, disable=not verbose)
    for handler in console_handlers():
        for existing in [f for f in handler.filters if isinstance(f, OwnRecordsOnly)]:
            handler.removeFilter(existing)
        if not verbose:
            handler.addFilter(OwnRecordsOnly())


def note(line: str) -> None:
    """A line for the person watching the run: on the console of a command-line run, and in the
    run's Prefect log (flows run with log_prints, so print() is an INFO line on its UI page)."""
    print(line)
    if CONSOLE is not None:
        CONSOLE.write(line)
