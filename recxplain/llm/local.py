"""`local` provider: a Hugging Face causal LM run in this process with transformers.

- The model folder comes from `recxplain.models.resolve_model` (`smollm2` is the embedded
  SmolLM2-135M-Instruct); an optional peft adapter is merged into the weights once at load time.
  Loaded models are kept per process, keyed by (folder, adapter content, dtype, device), so a
  stage that calls `generate` many times loads once.
- Jobs are sorted by prompt length (longest first: a batch that does not fit in memory fails
  on the first batch, not after an hour), prompts that share most of their start kept together
  (`batch_order`), and cut into batches of `llm.batch_size`, left-padded, and decoded by
  `generate_batch`: our own loop over the model's forward with a KV cache written in place
  (`GrowingCache`) and finished rows dropped from the batch as they end.
- Shared prefixes: a judge reads the same evidence before each pair of answers it compares
  (both orders; every pair of explainers in the tournament), and every prompt of a stage starts
  with the same instructions (and the teacher's with the same worked example). `generate_batch`
  reads the start common to the whole batch once, then each shared start once, copying KV cache
  rows to the prompts that share them (`shared_prefixes`), then the rest of every distinct prompt
  once: the samples of one prompt (best-of-n, pair candidates) copy its cache.
- Sampling: each row's next token is drawn with its own `torch.Generator` seeded with
  `sampling.seed + sample index`, so sample i of a prompt is the same whatever else is in the
  batch (up to the float noise padding brings) and across runs. `sample_tokens` applies
  temperature and nucleus (top-p) truncation itself: transformers' top-p warper sorts the whole
  vocabulary every step (~0.3 s for 64 rows x 49k tokens on 2 loaded cores), while a top-256
  partial sort covers the nucleus almost always (exact fallback to a full sort when not).
- Repetition controls (SamplingConfig): `repetition_penalty` and `no_repeat_ngram_size` are
  transformers' logits processors fed the tokens each row has generated (not its prompt, whose
  titles an answer may copy), applied before sampling; `stop_on_repeat` ends a row once a
  sentence it completed repeats an earlier one, checked only after tokens that hold '.', '!' or
  '?' (`sentence_end_ids`), and keeps the answer before the repeat.
- Token counts: prompt tokens are those of the rendered chat template; completion tokens run up
  to and including the first end-of-turn token, or all `max_new_tokens` (finish_reason `length`);
  an answer cut at a repeated sentence counts the tokens it generated, the repeat included.
- Thinking models (Qwen3): `llm.thinking` other than `default` is passed to the chat template as
  `enable_thinking` (templates that know no such variable ignore it); the tokens of an answer's
  `<think>...</think>` block are counted as its `thinking_tokens`, and `ChatModel` removes the
  block from the text.
"""

from __future__ import annotations

import gc
import hashlib
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

from recxplain.config import LLMConfig, SamplingConfig
from recxplain.llm.chat import Generation, Job, ProviderError, Run, Usage, split_thinking, thinking_identity
from recxplain.models import fast_bf16, resolve_model
from recxplain.text import cut_at_repeated_sentence

TOP_K_FAST = 256  # partial sort width before the exact full-vocabulary fallback
# Drop finished rows from the batch once this share of it has finished: each compaction copies
# the KV cache, so it pays once enough rows leave, not for every single one.
COMPACT_AT = 0.25
# Prompts share one prefill of their common start when it covers at least this share of the
# shorter prompt: every prompt of a stage shares the template's first sentences, which is not
# worth giving up the length order of the batches for.
SHARED_FRACTION = 0.5
# The samples of one prompt read it once (read at call time: benchmarks/bench_best_of.py turns it
# off to time every sample reading its own copy).
READ_SAMPLES_ONCE = True
# A start that every prompt of a batch shares (the system message, a worked example, the template's
# first words) is read once when it is at least this many tokens; read at call time
# (benchmarks/bench_batch_start.py sets it to inf to time the batch without it).
BATCH_START_TOKENS = 8

_MODELS: dict[tuple, tuple] = {}
_LOAD_LOCK = threading.Lock()
# One batch at a time per process: stages running in parallel threads would only fight over
# the same cores (and share model objects), so their batches take turns.
_GENERATE_LOCK = threading.Lock()
# Per tokenizer (by id, the tokenizer kept alive beside its set): ids that may end a sentence.
_SENTENCE_END_IDS: dict[int, tuple[object, frozenset[int]]] = {}


def adapter_hash(adapter: Path) -> str:
    """SHA-256 over the relative names and bytes of every file in a peft adapter folder."""
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").exists():
        raise ProviderError(f"adapter {adapter}: not a peft adapter folder (no adapter_config.json)")
    digest = hashlib.sha256()
    for path in sorted(p for p in adapter.rglob("*") if p.is_file()):
        digest.update(path.relative_to(adapter).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def local_dtype(cfg: LLMConfig) -> str:
    """The weights dtype `cfg.dtype` means on this machine (`auto`: see LLMConfig)."""
    if cfg.dtype != "auto":
        return cfg.dtype
    return "bfloat16" if fast_bf16(pick_device(cfg.device)) else "float32"


def identity(cfg: LLMConfig) -> dict:
    """What names this model's answers in the cache: model name, adapter content and dtype.

    The base model is named as configured (`smollm2` or a folder path), like an API model
    name; adapters are hashed by content because training writes new ones under old names.
    """
    names = {"provider": "local", "model": cfg.model, "dtype": local_dtype(cfg),
             "adapter": adapter_hash(cfg.adapter) if cfg.adapter is not None else None}
    return names | thinking_identity(cfg)


def template_options(cfg: LLMConfig) -> dict:
    """Extra variables for the chat template: Qwen3's `enable_thinking` when `llm.thinking` sets it."""
    return {} if cfg.thinking == "default" else {"enable_thinking": cfg.thinking == "on"}


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ProviderError("llm.device is 'cuda' but torch sees no CUDA device")
    return name


def load_local_model(folder: Path, adapter: Path | None, dtype: str, device: str):
    """(model, tokenizer), loaded once per process per (folder, adapter content, dtype, device)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = (str(Path(folder).resolve()), adapter_hash(adapter) if adapter is not None else None, dtype, device)
    with _LOAD_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        tokenizer = AutoTokenizer.from_pretrained(folder)
        if tokenizer.chat_template is None:
            raise ProviderError(f"model {folder}: the tokenizer has no chat template (chat_template.jinja)")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
        if adapter is not None:
            from peft import PeftModel

            # Merged once here: generation then runs at the base model's speed.
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        model.to(device).eval().requires_grad_(False)
        _MODELS[key] = (model, tokenizer)
        return model, tokenizer


def release_models() -> int:
    """Forget every model `load_local_model` cached in this process and collect the garbage, so
    a stage that is done with its model gives the memory back before the next loads its own
    (a RecLAIF run loads the base model, the students and the judge in turn). Returns how many
    were released; a model is reloaded from disk when asked for again."""
    with _LOAD_LOCK:
        count = len(_MODELS)
        _MODELS.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return count


def make_run(cfg: LLMConfig, artifacts_dir: Path) -> Run:
    def run(jobs: list[Job], sampling: SamplingConfig, usage: Usage) -> Iterator[tuple[int, Generation]]:
        device = pick_device(cfg.device)
        model, tokenizer = load_local_model(
            resolve_model(cfg.model, artifacts_dir), cfg.adapter, local_dtype(cfg), device
        )
        options = template_options(cfg)
        prompt_ids = [prompt_token_ids(tokenizer, job.messages, **options) for job in jobs]
        order = batch_order(prompt_ids)
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            with _GENERATE_LOCK:
                generations = generate_batch(model, tokenizer, [prompt_ids[j] for j in batch],
                                             [sampling.seed + jobs[j].index for j in batch], sampling, device)
            yield from zip(batch, [count_thinking(tokenizer, g) for g in generations])

    return run


def prompt_token_ids(tokenizer, messages: list[dict], **options) -> list[int]:
    """Token ids of the chat template rendered with the assistant turn opened; `options` are
    extra template variables (`template_options`)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **options)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def count_thinking(tokenizer, generation: Generation) -> Generation:
    """`generation` with the tokens of its `<think>` block as `thinking_tokens` (the block itself
    stays: `ChatModel` removes it from every provider's answers alike)."""
    _, thinking = split_thinking(generation.text)
    if not thinking:
        return generation
    return replace(generation, thinking_tokens=len(tokenizer(thinking, add_special_tokens=False)["input_ids"]))


def _common_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def shared_prefixes(prompts: list[list[int]], fraction: float | None = None) -> tuple[list[int], list[int]]:
    """Group prompts by a shared start: (group of each prompt, prefix length of each group).

    In lexicographic order, a prompt joins the group before it while the group's common start
    stays at least `fraction` of the shorter of its shortest prompt and the newcomer. A prefix
    stops before the last token of its shortest prompt (that token's logits start the answer),
    so a group of one prompt has all of it but the last token. `fraction`: SHARED_FRACTION when
    None (read at call time: benchmarks/bench_shared_prefix.py sets it to inf to share nothing).
    """
    fraction = SHARED_FRACTION if fraction is None else fraction
    order = sorted(range(len(prompts)), key=lambda r: prompts[r])
    group, common, shortest, first = [0] * len(prompts), [], [], 0
    for r in order:
        ids = prompts[r]
        if common:
            shared = min(common[-1], _common_length(prompts[first], ids))
            if shared >= fraction * min(shortest[-1], len(ids)):
                group[r], common[-1], shortest[-1] = len(common) - 1, shared, min(shortest[-1], len(ids))
                continue
        group[r], first = len(common), r
        common.append(len(ids))
        shortest.append(len(ids))
    return group, [min(c, low - 1) for c, low in zip(common, shortest)]


def batch_order(prompts: list[list[int]]) -> list[int]:
    """Prompt indices longest first, with the prompts that share a start (`shared_prefixes`)
    next to each other so that a batch holds them together."""
    group, _ = shared_prefixes(prompts)
    longest: dict[int, int] = {}
    for r, g in enumerate(group):
        longest[g] = max(longest.get(g, 0), len(prompts[r]))
    return sorted(range(len(prompts)), key=lambda r: (-longest[group[r]], group[r], -len(prompts[r])))


def sentence_end_ids(tokenizer) -> frozenset[int]:
    """Token ids whose text contains '.', '!' or '?': only after one of them can a sentence end
    (`stop_on_repeat` checks the answer then). Computed once per tokenizer."""
    entry = _SENTENCE_END_IDS.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        entry = _SENTENCE_END_IDS[id(tokenizer)] = (
            tokenizer, frozenset(i for i, piece in enumerate(pieces) if any(c in piece for c in ".!?")))
    return entry[1]


def generate_batch(model, tokenizer, prompts: list[list[int]], seeds: list[int], sampling: SamplingConfig,
                   device: str) -> list[Generation]:
    """Answer one batch of tokenised prompts (left-padded); one seed per row.

    Our own decode loop around the model's forward rather than `model.generate`, for savings
    measured in benchmarks/bench_generate.py: keys and values are written into buffers allocated
    once (`GrowingCache`), rows that reached end-of-turn leave the batch (`COMPACT_AT`), so one
    long answer does not drag the finished ones through every remaining step, and prompts that
    share a start read it once (`shared_prefixes`). The samples of one prompt (identical rows)
    are read once and their cache copied after the prompt is read.
    """
    start = time.perf_counter()
    rows = len(prompts)
    same, unique = list(range(rows)), prompts  # row -> its distinct prompt; the distinct prompts
    if READ_SAMPLES_ONCE:
        distinct: dict[tuple[int, ...], int] = {}
        same = [distinct.setdefault(tuple(ids), len(distinct)) for ids in prompts]
        unique = [list(ids) for ids in distinct]
    # Two reads: the distinct shared starts (one row per group), then the rest of every prompt,
    # attending to a copy of its group's cache rows. Both reads are left-padded: row r's tokens
    # sit at [lead - cut, lead) and [width - rest, width). The second read is `tail` wide (the
    # longest rest after a shared start), so each group moves into it what fits: padding costs
    # as much as tokens, and a shorter first read is cheaper.
    group, prefix = shared_prefixes(unique)
    tail = max(len(ids) - prefix[group[r]] for r, ids in enumerate(unique))
    groups = len(prefix)
    cut, member = [0] * groups, {}  # member: group -> a row of it (whose start the first read takes)
    for r, ids in enumerate(unique):
        cut[group[r]] = max(cut[group[r]], len(ids) - tail)
        member.setdefault(group[r], r)
    lead = max(cut)
    width = lead + tail
    # The start every prompt of the batch shares, read once (one row) before the group heads.
    common = min(cut)
    for g, r in member.items():
        common = min(common, _common_length(unique[member[0]], unique[r][:cut[g]]))
    if common < BATCH_START_TOKENS or groups == 1:
        common = 0
    capacity = width + sampling.max_new_tokens
    pad = tokenizer.pad_token_id
    head_ids = torch.full((groups, lead), pad, dtype=torch.long)
    head_mask = torch.zeros((groups, lead), dtype=torch.long)
    input_ids = torch.full((len(unique), tail), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(unique), capacity), dtype=torch.long)
    for g, r in member.items():
        # [common start][padding][rest of the group's start]: padding sits after the common start
        head_ids[g, :common] = torch.tensor(unique[r][:common], dtype=torch.long)
        head_mask[g, :common] = 1
        if cut[g] > common:
            head_ids[g, lead - cut[g] + common:] = torch.tensor(unique[r][common:cut[g]])
            head_mask[g, lead - cut[g] + common:] = 1
    for r, ids in enumerate(unique):
        own = ids[cut[group[r]]:]
        input_ids[r, tail - len(own):] = torch.tensor(own)
        attention_mask[r, :lead] = head_mask[group[r]]
        attention_mask[r, width - len(own):width] = 1
    stop_ids = model.generation_config.eos_token_id
    stop_ids = set(
        stop_ids if isinstance(stop_ids, list) else [stop_ids if stop_ids is not None else tokenizer.eos_token_id]
    )
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    answers: list[list[int]] = [[] for _ in prompts]
    finished = [False] * rows
    # Repetition controls (SamplingConfig). The token-level ones see the answer's tokens only, never
    # the prompt's: `generated` (batch position x step) follows the batch through compactions.
    processors = ([RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty)]
                  if sampling.repetition_penalty != 1.0 else [])
    if sampling.no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(sampling.no_repeat_ngram_size))
    generated = torch.empty((rows, sampling.max_new_tokens), dtype=torch.long) if processors else None
    ends = sentence_end_ids(tokenizer) if sampling.stop_on_repeat else frozenset()
    repeated: dict[int, str] = {}  # row -> its answer cut before a repeated sentence (stop_on_repeat)
    live = torch.arange(rows)  # batch position -> row of `prompts`
    cache = GrowingCache(model.config.num_hidden_layers, capacity)
    starts = torch.tensor([cut[g] for g in group])
    positions = (starts[:, None] + attention_mask[:, lead:width].cumsum(-1) - 1).clamp(min=0)

    def next_token_logits(ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                     cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float().cpu()

    with torch.inference_mode():
        if common:
            next_token_logits(head_ids[:1, :common], torch.arange(common)[None], head_mask[:1, :common])
            cache.batch_select_indices(torch.zeros(groups, dtype=torch.long).to(device))
        if lead > common:
            next_token_logits(head_ids[:, common:], (head_mask.cumsum(-1) - 1).clamp(min=0)[:, common:], head_mask)
        if lead:
            cache.batch_select_indices(torch.tensor(group).to(device))
        logits = next_token_logits(input_ids, positions, attention_mask[:, :width])
        if len(unique) < rows:  # every sample starts from its prompt's cache and logits
            index = torch.tensor(same)
            cache.batch_select_indices(index.to(device))
            logits, positions, attention_mask = logits[index], positions[index], attention_mask[index]
        length = width
        for step in range(sampling.max_new_tokens):
            for processor in processors if step else ():
                logits = processor(generated[:, :step], logits)
            if sampling.temperature > 0:
                uniforms = torch.cat([torch.rand(1, generator=generators[row]) for row in live.tolist()])
                tokens = sample_tokens(logits, sampling.temperature, sampling.top_p, uniforms)
            else:
                tokens = logits.argmax(-1)
            if processors:
                generated[:, step] = tokens
            for row, token in zip(live.tolist(), tokens.tolist()):
                if not finished[row]:  # a finished row stays in the batch until the next compaction
                    answer = answers[row]
                    answer.append(token)
                    finished[row] = token in stop_ids
                    # A sentence ends at whitespace after a terminator: this token or the last has one.
                    if ends and not finished[row] and (token in ends or len(answer) > 1 and answer[-2] in ends):
                        kept = _text_before_repeat(tokenizer, answer)
                        if kept is not None:
                            repeated[row], finished[row] = kept, True
            done = torch.tensor([finished[row] for row in live.tolist()])
            if done.all() or step == sampling.max_new_tokens - 1:
                break
            attention_mask[:, length] = 1
            step_ids, positions, length = tokens[:, None], positions[:, -1:] + 1, length + 1
            if done.sum() >= COMPACT_AT * len(live):
                keep = (~done).nonzero().squeeze(1)
                live, step_ids, positions, attention_mask = (
                    live[keep], step_ids[keep], positions[keep], attention_mask[keep]
                )
                cache.batch_select_indices(keep.to(device))
                if processors:
                    generated = generated[keep]
            logits = next_token_logits(step_ids, positions, attention_mask[:, :length])
    latency = time.perf_counter() - start
    generations = []
    for row, (ids, answer, ended) in enumerate(zip(prompts, answers, finished)):
        text = repeated.get(row)
        if text is None:
            text = tokenizer.decode(answer[:-1] if ended else answer, skip_special_tokens=True).strip()
            if sampling.stop_on_repeat:  # a repeat that ends the answer (end-of-turn, budget) is cut too
                kept = cut_at_repeated_sentence(text)
                ended, text = ended or kept != text, kept
        # completion_tokens: every token generated, a cut-off repeat included
        generations.append(Generation(text, prompt_tokens=len(ids), completion_tokens=len(answer), latency_s=latency,
                                      finish_reason="stop" if ended else "length"))
    return generations


def _text_before_repeat(tokenizer, answer: list[int]) -> str | None:
    """The answer so far up to a sentence that repeats an earlier one (`stop_on_repeat`); None when
    none does. Its last piece is not compared yet: a sentence is complete once whitespace follows."""
    text = tokenizer.decode(answer, skip_special_tokens=True).lstrip()
    kept = cut_at_repeated_sentence(text, finished=False)
    return kept if kept != text else None


class GrowingLayer(DynamicLayer):
    """One layer of `GrowingCache`: keys and values are views of buffers allocated at the first
    update and written in place. transformers' DynamicLayer concatenates the whole cache at
    every step instead (~40% of a decode step at batch 64 on 2 CPU cores)."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        shape = list(key_states.shape)
        shape[-2] = self.capacity
        self.key_buffer = key_states.new_empty(shape)
        self.value_buffer = value_states.new_empty(shape[:-1] + [value_states.shape[-1]])
        self.keys, self.values = self.key_buffer[:, :, :0], self.value_buffer[:, :, :0]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        self.key_buffer[:, :, start:end] = key_states
        self.value_buffer[:, :, start:end] = value_states
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            end = self.keys.shape[-2]
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]


class GrowingCache(DynamicCache):
    """A DynamicCache of `GrowingLayer`s: room for `capacity` positions per row, no concatenation."""

    def __init__(self, num_layers: int, capacity: int):
        Cache.__init__(self, layers=[GrowingLayer(capacity) for _ in range(num_layers)])


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor,
                  top_k: int = TOP_K_FAST) -> torch.Tensor:
    """Nucleus sampling by inverse CDF: row r takes the token where its cumulative probability
    (over the top-p nucleus, renormalised, most probable first) first exceeds `uniforms[r]`.

    The nucleus keeps the most probable tokens until their mass reaches `top_p` (the token that
    crosses it included). Rows whose top `top_k` tokens hold less than `top_p` are redone over
    the full vocabulary, so the result is exact.
    """
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p >= 1.0:  # no nucleus: the inverse CDF over the vocabulary in its own order needs no sort
        return _inverse_cdf(probs, None, 1.0, uniforms)
    k = min(top_k, probs.shape[-1])
    top, ids = probs.topk(k, dim=-1)  # sorted, most probable first
    short = top.sum(-1) < top_p
    tokens = _inverse_cdf(top, ids, top_p, uniforms)
    if k < probs.shape[-1] and short.any():
        full, full_ids = probs[short].sort(dim=-1, descending=True)
        tokens[short] = _inverse_cdf(full, full_ids, top_p, uniforms[short])
    return tokens


def _inverse_cdf(probs: torch.Tensor, ids: torch.Tensor | None, top_p: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Token ids drawn from `probs` rows (sorted most probable first when top_p < 1; `ids` maps
    positions to token ids, None: positions are the ids)."""
    if top_p < 1.0:
        before = probs.cumsum(-1) - probs  # mass of the more probable tokens
        probs = probs * (before < top_p)
    cdf = probs.cumsum(-1)
    targets = (uniforms * cdf[:, -1])[:, None]
    index = torch.searchsorted(cdf, targets, right=True).clamp(max=cdf.shape[-1] - 1)
    return (index if ids is None else ids.gather(1, index)).squeeze(1)
