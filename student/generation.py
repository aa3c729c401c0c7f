"""Answers from a local transformers student (base, or base + LoRA adapter), in batches.

Prompts are sorted by length and answered `batch_size` at a time with left padding and
greedy decoding, so a batch holds prompts of similar length and little compute goes to
padding; the answers come back in the items' order. Each generation step is timestamped,
so every answer carries the time its first token and its last token appeared: the latency
a user of that batch would have seen.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer
from transformers.generation.streamers import BaseStreamer

from student.prompt_format import render_student_prompt

log = logging.getLogger(__name__)


def load_student(base_model_dir: Path, adapter_dir: Path | None, trust_remote_code: bool = False):
    """The base model, with the adapter applied when one is given; and its tokenizer.

    On a CUDA machine the model goes to the GPU in bfloat16; on the CPU it stays float32.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, trust_remote_code=trust_remote_code,
                                                 use_safetensors=True)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    if torch.cuda.is_available():
        model = model.to("cuda", dtype=torch.bfloat16)
    model.eval()
    return model, tokenizer


class StepClock(BaseStreamer):
    """A streamer that only notes when each generation step's tokens arrive.

    `generate` hands a streamer the prompt first, then the new tokens of every step.
    """

    def __init__(self):
        self.step_times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.step_times.append(time.perf_counter())

    def end(self) -> None:
        """Nothing to flush: the clock keeps only times."""


def left_pad(sequences: list[list[int]], pad_id: int, multiple: int | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids padded on the left to one length (rounded up to `multiple`), and their attention masks."""
    width = max(len(s) for s in sequences)
    if multiple:
        width = -(-width // multiple) * multiple
    ids = [[pad_id] * (width - len(s)) + list(s) for s in sequences]
    masks = [[0] * (width - len(s)) + [1] * len(s) for s in sequences]
    return ids, masks


def until_stop(tokens: list[int], stop_ids: set[int]) -> list[int]:
    """The generated tokens up to and including the first stop token (padding after it dropped)."""
    for position, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[: position + 1]
    return tokens


def stop_token_ids(model, tokenizer) -> set[int]:
    """Every token id that ends an answer for this model."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = set(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {i for i in ids if i is not None}


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Item indices grouped into batches of similar prompt length, longest first (an
    out-of-memory batch then shows at once, not at the end)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def encode_prompts(tokenizer, items: list[dict], prompt_format: str) -> list[list[int]]:
    """The token ids of each item's student prompt (the chat template brings its own special tokens)."""
    prompts = [render_student_prompt(item["instruction"], item.get("input", ""), prompt_format, tokenizer)
               for item in items]
    return [tokenizer(prompt, add_special_tokens=prompt_format != "chat")["input_ids"] for prompt in prompts]


def answer_record(item: dict, tokenizer, tokens: list[int], latency_s: float, ttft_s: float | None) -> dict:
    """One answer in the shape every answering path returns."""
    return {"id": item["id"], "answer": tokenizer.decode(tokens, skip_special_tokens=True).strip(),
            "completion_tokens": len(tokens), "latency_s": round(latency_s, 4),
            "ttft_s": None if ttft_s is None else round(ttft_s, 4)}


class _FilledLayer(StaticLayer):
    """A full-attention static cache layer whose attention reads only its first `read_length`
    positions (set by `FilledStaticCache` before each forward pass)."""

    def __init__(self, max_cache_len: int, **kwargs):
        super().__init__(max_cache_len=max_cache_len, **kwargs)
        self.read_length = max_cache_len

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        return keys[:, :, : self.read_length], values[:, :, : self.read_length]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.read_length, 0


class FilledStaticCache(StaticCache):
    """A static KV cache (one shape, fixed addresses: the decoding step compiles into CUDA graphs)
    whose attention reads only the part the batch has filled, rounded up to `bucket` tokens.

    A plain static cache is sized for the longest prompt plus the answer, and every decoding step
    of every batch reads all of it, for every row: at a batch of 256 on a 7B model that is most of
    the bytes a step moves. Here the read length follows the fill (the batch's padded prompt width,
    then one more position per step), so a batch of short prompts reads a short cache and a step
    early in an answer reads less than one late in it. The positions skipped are ones the mask
    hides anyway, so the answers are the same. The read length is a plain number known before each
    forward pass: transformers builds the attention mask outside the compiled step, asking the cache
    for the mask's size (`get_mask_sizes`) once per forward pass, with that pass's query length;
    the fill is counted there. torch.compile first specialises on the read length, then compiles
    one graph with it symbolic (plus one for a read of the whole cache), and CUDA graphs are
    recorded per length: rounding to `bucket` bounds how many.
    """

    def __init__(self, config, max_cache_len: int, bucket: int):
        if bucket < 1:
            raise ValueError(f"cache bucket must be a positive number of tokens, got {bucket}")
        super().__init__(config=config, max_cache_len=max_cache_len)
        self.layers = [_FilledLayer(max_cache_len) if type(layer) is StaticLayer else layer for layer in self.layers]
        self.capacity, self.bucket = max_cache_len, bucket
        self.filled = 0
        # The full-attention layer whose mask transformers builds (the first one): one call a pass.
        self.counted_layer = next((i for i, layer in enumerate(self.layers) if isinstance(layer, _FilledLayer)), None)

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        if layer_idx == self.counted_layer:
            self.filled += query_length
            read = min(self.capacity, -(-self.filled // self.bucket) * self.bucket)
            for layer in self.layers:
                if isinstance(layer, _FilledLayer):
                    layer.read_length = read
        return super().get_mask_sizes(query_length, layer_idx)

    def reset(self) -> None:
        super().reset()
        self.filled = 0


def prefill_by_rows(model, cache: StaticCache, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    rows_at_once: int) -> None:
    """Put every prompt token but the last into `cache`, `rows_at_once` rows at a time; `generate`
    then starts from the filled cache with the last prompt token.

    A batch is left-padded to its longest prompt, and prefilling it whole computes every padding
    position of every row; when one long prompt shares a batch with short ones, most of that work
    is padding. A group of consecutive rows (the batch is sorted by length) is padded only to its
    own longest prompt, run through the model into a cache of its own, and its keys and values are
    copied into the static cache at the positions the whole batch's padding puts them; positions
    count from each row's first real token either way. Only caches of full-attention static layers
    are filled this way (a sliding-window layer keeps another layout); others are left to `generate`.
    """
    from transformers import DynamicCache

    if not all(isinstance(layer, StaticLayer) and not layer.is_sliding for layer in cache.layers):
        return
    batch, width = input_ids.shape
    end = width - 1  # the last prompt token goes through generate
    lengths = attention_mask[:, :end].sum(-1).tolist()
    for start in range(0, batch, rows_at_once):
        stop = min(batch, start + rows_at_once)
        span = max(lengths[start:stop])
        if not span:
            continue
        mask = attention_mask[start:stop, end - span:end]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        group = DynamicCache()
        model(input_ids=input_ids[start:stop, end - span:end], attention_mask=mask, position_ids=positions,
              cache=group, use_cache=True, logits_to_keep=1)
        for layer, part in zip(cache.layers, group.layers):
            if not layer.is_initialized:
                shape = (batch, *part.keys.shape[1:2], 1, part.keys.shape[-1])
                layer.lazy_initialization(part.keys.new_empty(shape), part.values.new_empty(shape))
            layer.keys[start:stop, :, end - span:end] = part.keys
            layer.values[start:stop, :, end - span:end] = part.values
    for layer in cache.layers:
        layer.cumulative_length.fill_(end)
    if isinstance(cache, FilledStaticCache):
        cache.filled = end


@torch.inference_mode()
def answer_prompts(model, tokenizer, items: list[dict], prompt_format: str, max_new_tokens: int,
                   batch_size: int = 1, static_cache: bool = False, pad_to_multiple_of: int | None = None,
                   continuous: bool = False, cache_bucket: int = 0, prefill_rows: int = 0) -> list[dict]:
    """Greedy answers, one dict per item in the items' order: id, answer, completion_tokens,
    latency_s (batch start to the answer's last token) and ttft_s (to its first token).

    `static_cache` preallocates the KV cache; on CUDA, transformers then compiles the
    decoding step (CUDA graphs). `cache_bucket` (with `static_cache`; 0: off) has each step's
    attention read that cache only as far as the batch has filled it, rounded up to a multiple of
    `cache_bucket` tokens (`FilledStaticCache`); `prefill_rows` (with `static_cache`; 0: off) fills
    it `prefill_rows` prompts at a time, each group padded only to its own longest prompt
    (`prefill_by_rows`). `pad_to_multiple_of` bounds how many prompt shapes occur.
    `continuous` answers through transformers' continuous batching instead (see
    `answer_prompts_continuous`); `batch_size` then bounds the requests decoded together.
    """
    if continuous:
        return answer_prompts_continuous(model, tokenizer, items, prompt_format, max_new_tokens, batch_size)
    encoded = encode_prompts(tokenizer, items, prompt_format)
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)
    device = next(model.parameters()).device
    cache = None
    if static_cache:
        # One KV cache for every batch, sized for the longest prompt: one shape and fixed
        # addresses, so the compiled decoding step (a CUDA graph on a GPU) is built once.
        longest = len(left_pad([max(encoded, key=len)], pad_id, pad_to_multiple_of)[0][0])
        cache = (FilledStaticCache(model.config, longest + max_new_tokens, cache_bucket) if cache_bucket
                 else StaticCache(config=model.config, max_cache_len=longest + max_new_tokens))
    answers: list[dict | None] = [None] * len(items)
    for rows in length_sorted_batches([len(ids) for ids in encoded], batch_size):
        # With a static cache the last, smaller batch is filled up with repeats of its last
        # prompt (their answers are dropped), so its shape is that of every other batch.
        filled = rows + [rows[-1]] * (batch_size - len(rows)) if cache is not None else rows
        ids, masks = left_pad([encoded[i] for i in filled], pad_id, pad_to_multiple_of)
        input_ids, attention_mask = torch.tensor(ids, device=device), torch.tensor(masks, device=device)
        if cache is not None:
            cache.reset()
        clock = StepClock()
        started = time.perf_counter()
        if cache is not None and prefill_rows:
            prefill_by_rows(model, cache, input_ids, attention_mask, prefill_rows)
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=pad_id, streamer=clock,
            **({"cache": cache} if cache is not None else {}),
        )
        finished = time.perf_counter()
        new_tokens = output[:, input_ids.shape[1]:].tolist()
        steps = clock.step_times or [finished]
        for row, index in enumerate(rows):
            tokens = until_stop(new_tokens[row], stop_ids)
            last_step = steps[min(len(tokens), len(steps)) - 1] if tokens else finished
            answers[index] = answer_record(items[index], tokenizer, tokens, last_step - started, steps[0] - started)
        log.info("answered %d of %d prompts (batch of %d in %.1f s)",
                 sum(a is not None for a in answers), len(items), len(rows), finished - started)
    return answers


@torch.inference_mode()
def answer_prompts_continuous(model, tokenizer, items: list[dict], prompt_format: str, max_new_tokens: int,
                              max_requests: int = 256, persistent: bool = False) -> list[dict]:
    """Greedy answers through transformers' continuous batching (`generate_batch`): a paged KV
    cache whose attention reads only the tokens each request has, prompts prefilled in chunks
    beside the decoding ones, and a finished request's place taken by the next at once, up to
    `max_requests` decoding together. Same answer shape as `answer_prompts`; latency and time
    to the first token from the per-token timestamps, counted from the call's start. On a GPU the
    decoding and prefill graphs are captured first (CUDA graphs); `persistent` keeps them, with the
    engine, for the next call (`model.destroy_cached_continuous_batching_manager()` ends it)."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    encoded = encode_prompts(tokenizer, items, prompt_format)
    stop_ids = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stop_ids)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=sorted(stop_ids),
                              pad_token_id=pad_id)
    started = time.perf_counter()
    outputs = model.generate_batch(encoded, generation_config=config, record_timestamps=True, progress_bar=False,
                                   warmup=model.device.type == "cuda", persistent_manager=persistent,
                                   continuous_batching_config=ContinuousBatchingConfig(
                                       max_requests_per_batch=max_requests))
    finished = time.perf_counter()
    # generate_batch logs failed or lost requests instead of raising: count what came back.
    ordered = list(outputs.values())
    failed = [output for output in ordered if output.error]
    if len(ordered) != len(items) or failed:
        reason = failed[0].error if failed else f"{len(ordered)} of {len(items)} requests came back"
        raise RuntimeError(f"continuous batching failed: {reason}")
    answers = []
    for item, output in zip(items, ordered):
        tokens = until_stop(list(output.generated_tokens), stop_ids)
        stamps = output.timestamps or []
        last = stamps[min(len(tokens), len(stamps)) - 1] if tokens and stamps else finished
        answers.append(answer_record(item, tokenizer, tokens, last - started, stamps[0] - started if stamps else None))
    log.info("answered %d prompts by continuous batching in %.1f s", len(items), finished - started)
    return answers
