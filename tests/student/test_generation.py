"""Batched student answers on the real embedded student (SmolLM2-135M dequantized from the GGUF)."""

import pytest
import torch

from eval.sets import load_eval_set
from student.generation import answer_prompts, left_pad, length_sorted_batches, load_student, until_stop


def test_left_pad_and_stop():
    ids, masks = left_pad([[5, 6, 7], [8]], pad_id=0, multiple=4)
    assert ids == [[0, 5, 6, 7], [0, 0, 0, 8]] and masks == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert until_stop([3, 4, 2, 2, 2], {2}) == [3, 4, 2] and until_stop([3, 4], {2}) == [3, 4]
    assert length_sorted_batches([1, 9, 5, 9], 2) == [[1, 3], [2, 0]]


@pytest.fixture(scope="module")
def embedded_student(student_cache_dir):
    from student.embedded import ensure_plain_student

    torch.set_num_threads(1)
    return load_student(ensure_plain_student(student_cache_dir), None)


@pytest.mark.parametrize("prompt_format", ["alpaca", "chat"])
def test_batched_greedy_answers_equal_one_at_a_time(embedded_student, tmp_path, prompt_format):
    model, tokenizer = embedded_student
    # Prompts of different lengths, so the batch really is padded on the left.
    items = load_eval_set("vicuna_80", tmp_path / "none")[:3] + load_eval_set("self_instruct_252", tmp_path / "none")[:2]
    single = answer_prompts(model, tokenizer, items, prompt_format, max_new_tokens=20, batch_size=1)
    batched = answer_prompts(model, tokenizer, items, prompt_format, max_new_tokens=20, batch_size=5)
    # A static KV cache shared by the batches; the last batch (1 prompt) is filled up to 2.
    static = answer_prompts(model, tokenizer, items, prompt_format, max_new_tokens=20, batch_size=2,
                            static_cache=True)
    assert [a["answer"] for a in static] == [a["answer"] for a in single]
    assert [a["id"] for a in batched] == [item["id"] for item in items]
    assert [a["answer"] for a in batched] == [a["answer"] for a in single]
    assert [a["completion_tokens"] for a in batched] == [a["completion_tokens"] for a in single]
    assert all(a["answer"] for a in batched)
    for answer in batched:
        assert 0 < answer["ttft_s"] <= answer["latency_s"]
        assert 1 <= answer["completion_tokens"] <= 20


def test_continuous_batching_gives_the_same_greedy_answers(embedded_student, tmp_path):
    """transformers' continuous batching (`evaluate.continuous_batching`): paged KV cache, prompts of
    different lengths decoding together, fewer requests at once than prompts so that finished ones
    are replaced; float32 on the CPU, so the answers are exactly the padded path's."""
    model, tokenizer = embedded_student
    items = load_eval_set("vicuna_80", tmp_path / "none")[:3] + load_eval_set("self_instruct_252", tmp_path / "none")[:2]
    padded = answer_prompts(model, tokenizer, items, "alpaca", max_new_tokens=12, batch_size=5)
    continuous = answer_prompts(model, tokenizer, items, "alpaca", max_new_tokens=12, batch_size=2, continuous=True)
    assert [a["id"] for a in continuous] == [item["id"] for item in items]
    assert [a["answer"] for a in continuous] == [a["answer"] for a in padded]
    assert [a["completion_tokens"] for a in continuous] == [a["completion_tokens"] for a in padded]
    for answer in continuous:
        assert 0 < answer["ttft_s"] <= answer["latency_s"]


def test_a_filled_static_cache_reads_only_the_filled_part_and_answers_the_same(embedded_student, tmp_path,
                                                                               monkeypatch):
    """`evaluate.static_cache_bucket`: each forward pass's attention reads the static cache only as far
    as the batch has filled it (rounded up to the bucket), and the greedy answers are those of the
    plain static cache, which reads all of it every step."""
    from student import generation

    model, tokenizer = embedded_student
    items = load_eval_set("vicuna_80", tmp_path / "none")[:3] + load_eval_set("self_instruct_252", tmp_path / "none")[:2]
    static = answer_prompts(model, tokenizer, items, "alpaca", max_new_tokens=20, batch_size=2, static_cache=True)
    reads: list[tuple[int, int, int]] = []  # (positions filled, read length, cache length) per forward pass
    counted = generation.FilledStaticCache.get_mask_sizes

    def recording(cache, query_length, layer_idx):
        sizes = counted(cache, query_length, layer_idx)
        if layer_idx == cache.counted_layer:
            reads.append((cache.filled, sizes[0], cache.capacity))
        return sizes

    monkeypatch.setattr(generation.FilledStaticCache, "get_mask_sizes", recording)
    filled = answer_prompts(model, tokenizer, items, "alpaca", max_new_tokens=20, batch_size=2, static_cache=True,
                            cache_bucket=8)
    assert [a["answer"] for a in filled] == [a["answer"] for a in static]
    assert [a["completion_tokens"] for a in filled] == [a["completion_tokens"] for a in static]
    assert all(read == min(capacity, -(-done // 8) * 8) for done, read, capacity in reads)
    # The batches of shorter prompts read well short of the cache, which is sized for the longest.
    capacity = reads[0][2]
    assert min(read for _, read, _ in reads) < capacity // 2
    assert sum(read for _, read, _ in reads) < 0.8 * capacity * len(reads)


def test_a_filled_static_cache_compiles_one_graph_for_every_read_length(embedded_student, tmp_path):
    """The compiled decoding step (what a GPU runs, forced onto the CPU here): torch.compile
    specialises on the first read length, then compiles one graph with the length symbolic and one
    for a read of the whole cache, whatever the number of lengths; the answers match the plain
    static cache's under the same compilation. A 2-layer random model with the embedded student's
    tokenizer keeps the compilation short."""
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.generation.configuration_utils import CompileConfig

    _, tokenizer = embedded_student
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=len(tokenizer))).eval()
    compile_config = CompileConfig()
    compile_config._compile_all_devices = True  # transformers compiles the decoding step on GPUs only
    model.generation_config.compile_config = compile_config
    items = load_eval_set("vicuna_80", tmp_path / "none")[:3] + load_eval_set("self_instruct_252", tmp_path / "none")[:3]
    try:
        torch._dynamo.reset()
        static = answer_prompts(model, tokenizer, items, "alpaca", max_new_tokens=24, batch_size=2,
                                static_cache=True)
        torch._dynamo.reset()
        counters.clear()
        filled = answer_prompts(model, tokenizer, items, "alpaca", max_new_tokens=24, batch_size=2,
                                static_cache=True, cache_bucket=8)
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert [a["answer"] for a in filled] == [a["answer"] for a in static]
    assert 1 <= graphs <= 3


@pytest.mark.parametrize("cache_bucket", [0, 8])
def test_prefilling_by_rows_answers_the_same(embedded_student, tmp_path, cache_bucket):
    """`evaluate.static_cache_prefill_rows`: the prompts go into the static cache a few rows at a time,
    each group padded to its own longest prompt, and the answers are the whole-batch prefill's."""
    model, tokenizer = embedded_student
    items = load_eval_set("vicuna_80", tmp_path / "none")[:3] + load_eval_set("self_instruct_252", tmp_path / "none")[:3]
    whole = answer_prompts(model, tokenizer, items, "alpaca", max_new_tokens=16, batch_size=6, static_cache=True,
                           cache_bucket=cache_bucket)
    by_rows = answer_prompts(model, tokenizer, items, "alpaca", max_new_tokens=16, batch_size=6, static_cache=True,
                             cache_bucket=cache_bucket, prefill_rows=2)
    assert [a["answer"] for a in by_rows] == [a["answer"] for a in whole]
    assert [a["completion_tokens"] for a in by_rows] == [a["completion_tokens"] for a in whole]
