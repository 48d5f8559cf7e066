"""Train the student: SFT on the teacher's answers, ORPO and iterative DPO on judged pairs.

Three stage functions, each writing into its artifact folder `out`:

- `adapter/`: the peft adapter; its `adapter_config.json` names the resolved base model folder,
  and the tokenizer (with its chat template) is saved alongside, so the folder alone loads with
  `peft.AutoPeftModelForCausalLM` and serves with vLLM's `--lora-modules name=<out>/adapter`.
- `merged/` (when `training.merge`, or always with full fine-tuning): a full safetensors model
  with tokenizer and chat template, for `vllm serve <out>/merged` or plain `transformers`.
- `training.json`: loss curve (train loss, held-out validation loss, DPO/ORPO reward accuracy per
  logging step), steps, base model, method, device; `run.json` beside it (not part of the
  content): tokens/s, wall time, peak memory.

The trainers themselves (input checks, CPU trainers, the training loop and export, peak memory,
curves, `merge_adapter`) are in `recxplain.training`; DPO keeps the previous student's adapter as
its reference (see there).

Resume: Trainer checkpoints go to `out/checkpoints/`; calling a stage again with the same `out`
resumes from the last one (the pipeline wrapper reuses `out` after a crash or kill). They are
deleted once the adapter is exported, so a finished artifact holds only what is listed above.
"""

from __future__ import annotations

import json
from pathlib import Path

from recxplain.config import TrainingConfig
from recxplain.models import resolve_model
from recxplain.stage import reads
from recxplain.training import (
    answer_nll_orpo_trainer,
    check_lengths,
    common_args,
    fit_and_export,
    load_tokenizer,
    load_training_model,
    peft_lora_config,
    plain_loss_sft_trainer,
    preference_row,
    read_dpo_prompts_once,
    read_jsonl_rows,
    score_completion_tokens_only,
    sft_row,
    to_dataset,
    training_device,
    validation_split,
)

# Every trainer reads the shared fields and its own section: a DPO setting never reruns SFT.
TRAINER_FIELDS = ("base_model", "thinking", "lora", "batch_size", "gpu_batch_size", "gradient_accumulation_steps",
                "gradient_checkpointing", "precision", "max_length", "valid_fraction", "valid_min_cases",
                "logging_steps", "eval_steps", "save_steps", "merge", "seed")


@reads(training=(*TRAINER_FIELDS, "sft"))
def train_sft(out: Path, *, training: TrainingConfig, sft: Path, artifacts_dir: Path) -> None:
    """Supervised fine-tuning on the teacher's answers (`sft/sft.jsonl`), loss on the answer only.

    Each row's messages are split into a conversational prompt (everything before the last
    message) and completion (the last, assistant message); trl's SFTTrainer then masks the
    prompt tokens out of the loss, which works with any chat template (no {% generation %}
    markers needed).
    """
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    out = Path(out)
    path = Path(sft) / "sft.jsonl"
    rows = [sft_row(row, path, line) for line, row in read_jsonl_rows(path)]
    base = resolve_model(training.base_model, artifacts_dir)
    tokenizer = load_tokenizer(base)
    check_lengths(tokenizer, rows, "completion", training.max_length, path)
    train_rows, valid_rows = validation_split(rows, training.valid_fraction, training.seed, training.valid_min_cases)

    device = training_device(training)
    args = SFTConfig(
        **common_args(training, out, device, training.sft.epochs, training.sft.max_steps, bool(valid_rows)),
        learning_rate=training.sft.learning_rate,
        max_length=training.max_length,
        completion_only_loss=True,
        packing=False,  # no gain measured on CPU, and packing would cross case boundaries
    )
    model = load_training_model(base, device)
    # trl's chunked LM-head loss is ~1.5x slower than the plain cross-entropy on CPU (README,
    # benchmarks/bench_train.py); on a GPU it saves memory, so keep it there.
    set_seed(training.seed)  # the adapter is initialised in the trainer's constructor, unseeded
    trainer_class = plain_loss_sft_trainer() if device["name"] == "cpu" else SFTTrainer
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=to_dataset(train_rows),
        eval_dataset=to_dataset(valid_rows) if valid_rows else None,
        processing_class=tokenizer,
        peft_config=peft_lora_config(training),
    )
    fit_and_export(trainer, out, training, base=base, method="sft", device=device, rows=len(rows))


@reads(training=(*TRAINER_FIELDS, "orpo"))
def train_orpo(out: Path, *, training: TrainingConfig, preferences: Path, artifacts_dir: Path) -> None:
    """ORPO (reference-free) from the base student on `preferences/preferences.jsonl`."""
    from transformers import set_seed
    from trl.experimental.orpo import ORPOConfig

    out = Path(out)
    path = Path(preferences) / "preferences.jsonl"
    rows = [preference_row(row, path, line) for line, row in read_jsonl_rows(path)]
    base = resolve_model(training.base_model, artifacts_dir)
    tokenizer = load_tokenizer(base)
    check_lengths(tokenizer, rows, "chosen", training.max_length, path)
    check_lengths(tokenizer, rows, "rejected", training.max_length, path)
    train_rows, valid_rows = validation_split(rows, training.valid_fraction, training.seed, training.valid_min_cases)

    device = training_device(training)
    args = ORPOConfig(
        **common_args(training, out, device, training.orpo.epochs, training.orpo.max_steps, bool(valid_rows)),
        learning_rate=training.orpo.learning_rate,
        max_length=training.max_length,
        beta=training.orpo.beta,
    )
    set_seed(training.seed)  # the adapter is initialised in the trainer's constructor, unseeded
    trainer = answer_nll_orpo_trainer()(
        model=load_training_model(base, device),
        args=args,
        train_dataset=to_dataset(train_rows),
        eval_dataset=to_dataset(valid_rows) if valid_rows else None,
        processing_class=tokenizer,
        peft_config=peft_lora_config(training),
    )
    fit_and_export(trainer, out, training, base=base, method="orpo", device=device, rows=len(rows))


@reads(training=(*TRAINER_FIELDS, "dpo"))
def train_dpo(
    out: Path, *, training: TrainingConfig, preferences: Path, init: Path, artifacts_dir: Path,
    validation: Path | None = None,
) -> None:
    """One DPO round on `preferences/preferences.jsonl`, starting from the student in `init`.

    `validation`: a judged-pairs folder whose held-out cases (`validation_split`, the rows ORPO
    validates on when it is the teacher's judged pairs) are the validation set; every pair of
    `preferences` then trains (`training.dpo.validate_on: teacher_pairs`). None: cases of the
    round's own pairs are held out (at most a third).

    `init` is the folder of the previous student (SFT, or DPO round r-1). Its adapter is loaded
    trainable and trl keeps a frozen copy of it (adapter "ref") as the reference, so the
    reference is the previous student (RecLAIF Algorithm 1), not the base model, and the result
    is still base + ONE adapter; the adapter's own LoRA settings are kept (`training.lora`
    applies when it is created, in SFT). With full fine-tuning (`training.lora.enabled` false,
    `init` holds `merged/` only) the reference is a second frozen copy of the init model, or
    nothing in memory with `training.dpo.precompute_ref_log_probs`.
    """
    from peft import PeftModel
    from transformers import set_seed
    from trl import DPOConfig, DPOTrainer

    out, init = Path(out), Path(init)
    init_adapter, init_merged = init / "adapter", init / "merged"
    if training.lora.enabled:
        if not (init_adapter / "adapter_config.json").exists():
            raise FileNotFoundError(f"{init}: no adapter/ to continue (training.lora.enabled is true)")
        base = Path(json.loads((init_adapter / "adapter_config.json").read_text())["base_model_name_or_path"])
        tokenizer = load_tokenizer(init_adapter)
    else:
        if not (init_merged / "config.json").exists():
            raise FileNotFoundError(f"{init}: no merged/ model to continue (training.lora.enabled is false)")
        base = init_merged
        tokenizer = load_tokenizer(init_merged)
    rows = _preference_rows(Path(preferences), tokenizer, training.max_length)
    split = dict(valid_fraction=training.valid_fraction, seed=training.seed, min_cases=training.valid_min_cases)
    if validation is None:
        train_rows, valid_rows = validation_split(rows, **split)
    else:
        held_rows = _preference_rows(Path(validation), tokenizer, training.max_length)
        train_rows, valid_rows = rows, validation_split(held_rows, **split)[1]

    device = training_device(training)
    if device["name"] == "cpu":
        score_completion_tokens_only()
    # No validation before the first step: the policy starts as its reference, the loss is log 2.
    args = DPOConfig(
        **common_args(training, out, device, training.dpo.epochs, training.dpo.max_steps, bool(valid_rows),
                       eval_on_start=False),
        learning_rate=training.dpo.learning_rate,
        max_length=training.max_length,
        beta=training.dpo.beta,
        precompute_ref_log_probs=training.dpo.precompute_ref_log_probs,
        **({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, training.dpo.sft_weight]}
           if training.dpo.sft_weight else {}),
    )
    model, ref_model = load_training_model(base, device), None
    if training.lora.enabled:
        # Trainable "default" adapter = the previous student; trl adds the frozen "ref" copy.
        model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    elif not training.dpo.precompute_ref_log_probs:
        ref_model = load_training_model(base, device)
    set_seed(training.seed)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=to_dataset(train_rows),
        eval_dataset=to_dataset(valid_rows) if valid_rows else None,
        processing_class=tokenizer,
    )
    if device["name"] == "cpu":  # on a GPU trl's fused LM head keeps memory flat; the packed rows' logits do not
        read_dpo_prompts_once(trainer)
    fit_and_export(trainer, out, training, base=base, method="dpo", device=device, rows=len(rows), init=init,
                   valid_from=validation)


def _preference_rows(folder: Path, tokenizer, max_length: int) -> list[dict]:
    """The judged pairs of `folder/preferences.jsonl`; a malformed or too long row fails naming its line."""
    path = folder / "preferences.jsonl"
    rows = [preference_row(row, path, line) for line, row in read_jsonl_rows(path)]
    check_lengths(tokenizer, rows, "chosen", max_length, path)
    check_lengths(tokenizer, rows, "rejected", max_length, path)
    return rows
