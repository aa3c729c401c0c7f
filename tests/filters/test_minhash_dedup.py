"""Tests for filters.minhash_dedup."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from filters.minhash_dedup import MinHashDedupResult, minhash_dedup, word_shingles
from filters.semantic_dedup import record_text

REPO = Path(__file__).resolve().parents[2]
ALPACA = REPO.parent / "shared" / "data" / "alpaca_5000.json"

LONG = (
    "Photosynthesis is the process by which green plants and some other organisms use sunlight "
    "to synthesize foods from carbon dioxide and water. It generally involves the green pigment "
    "chlorophyll and generates oxygen as a byproduct, which is released into the atmosphere."
)
OTHER = (
    "The French Revolution was a period of political and societal change in France that began "
    "with the Estates General of 1789 and ended with the coup of 18 Brumaire in November 1799."
)


def exact_jaccard(a: str, b: str, shingle_size: int = 3) -> float:
    first, second = word_shingles(a, shingle_size), word_shingles(b, shingle_size)
    return len(first & second) / len(first | second)


def test_word_shingles():
    assert word_shingles("The cat sat on the mat.", 3) == {"the cat sat", "cat sat on", "sat on the", "on the mat"}
    assert word_shingles("the CAT, sat!", 3) == {"the cat sat"}
    assert word_shingles("Hello world", 3) == {"hello world"}
    assert word_shingles("a b a b", 1) == {"a", "b"}
    assert word_shingles("", 3) == word_shingles("  ?! ", 3) == {""}
    with pytest.raises(ValueError):
        word_shingles("text", 0)


def test_duplicates_are_dropped_and_unrelated_texts_kept():
    appended = LONG + " Plants need it."
    texts = [LONG, OTHER, LONG, appended, "Name three primary colors."]
    results = minhash_dedup(texts)
    assert [r.kept for r in results] == [True, True, False, False, True]
    assert results[0] == MinHashDedupResult(0, True, None, None)
    assert results[2].nearest_index == 0 and results[2].jaccard == 1.0
    assert results[3].nearest_index == 0 and results[3].jaccard > 0.8
    assert exact_jaccard(LONG, appended) > 0.9


def test_jaccard_threshold_and_shingle_size_matter():
    # One word changed in a 45-word text: 3 of 43 shingles change, an exact Jaccard of 40/46.
    edited = LONG.replace("sunlight", "light")
    assert 0.8 < exact_jaccard(LONG, edited) < 0.9
    assert [r.kept for r in minhash_dedup([LONG, edited], threshold=0.7)] == [True, False]
    assert [r.kept for r in minhash_dedup([LONG, edited], threshold=0.95)] == [True, True]
    # Longer shingles are stricter: with 8-word shingles the same edit changes 8 of them.
    assert exact_jaccard(LONG, edited, 8) < 0.7
    assert [r.kept for r in minhash_dedup([LONG, edited], threshold=0.7, shingle_size=8)] == [True, True]


def test_estimate_is_close_to_the_exact_jaccard():
    words = LONG.split()
    variants = [" ".join(words[:cut]) for cut in (45, 40, 35, 30)]
    for variant in variants[1:]:
        result = minhash_dedup([variants[0], variant], threshold=0.3, num_perm=256)[1]
        assert result.nearest_index == 0
        assert abs(result.jaccard - exact_jaccard(variants[0], variant)) < 0.1
        assert result.jaccard * 256 == int(result.jaccard * 256)


def test_only_kept_texts_are_compared_against():
    # b is a near copy of a (dropped); c is near b but not near a. c must be kept: b is gone.
    base = " ".join(f"word{i}" for i in range(40))
    a = base
    b = base + " " + " ".join(f"extra{i}" for i in range(6))
    c = base[: base.index("word8 ")] + " ".join(f"extra{i}" for i in range(12)) + " " + base[base.index("word8 "):]
    assert exact_jaccard(a, b) > 0.8 and exact_jaccard(a, c) < 0.7
    results = minhash_dedup([a, b, c], threshold=0.8)
    assert [r.kept for r in results] == [True, False, True]
    assert all(r.nearest_index in (None, 0) for r in results)


def test_empty_texts_are_duplicates_of_each_other_only():
    results = minhash_dedup(["", LONG, "  ", OTHER, "?"])
    assert [r.kept for r in results] == [True, True, False, True, False]
    assert results[2].nearest_index == 0 and results[4].nearest_index == 0


def test_results_are_reproducible_across_processes():
    texts = [LONG, OTHER, LONG.replace("green", "red"), OTHER + " Indeed.", "short text", "short text!"]
    here = [(r.kept, r.nearest_index, r.jaccard) for r in minhash_dedup(texts, threshold=0.5, seed=3)]
    assert here == [(r.kept, r.nearest_index, r.jaccard) for r in minhash_dedup(texts, threshold=0.5, seed=3)]
    script = (
        "import json, sys\n"
        "from filters.minhash_dedup import minhash_dedup\n"
        "texts = json.loads(sys.stdin.read())\n"
        "print(json.dumps([[r.kept, r.nearest_index, r.jaccard] for r in minhash_dedup(texts, threshold=0.5, seed=3)]))\n"
    )
    # A different str hash seed: nothing may depend on Python's hash().
    output = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(texts), capture_output=True, text=True,
        check=True, cwd=REPO, env={"PYTHONHASHSEED": "12345", "PATH": ""},
    ).stdout
    assert [tuple(row) for row in json.loads(output)] == here


def test_validation():
    for bad in ({"threshold": 0.0}, {"threshold": 1.0}, {"num_perm": 1}, {"shingle_size": 0}):
        with pytest.raises(ValueError):
            minhash_dedup(["a"], **bad)
    assert minhash_dedup([]) == []


def edit_one_word(text: str) -> str:
    """Change the word in the middle of a text (a long text stays a near duplicate)."""
    words = text.split(" ")
    middle = len(words) // 2
    words[middle] = words[middle] + "s"
    return " ".join(words)


def test_edited_copies_of_alpaca_records_are_dropped():
    if not ALPACA.is_file():
        pytest.skip(f"{ALPACA} is not there")
    records = json.loads(ALPACA.read_text(encoding="utf-8"))[:2000]
    texts = [record_text(r, ("instruction", "input", "output")) for r in records]
    # Copies of the long records, where one edited word leaves the Jaccard above 0.8.
    originals = [i for i, text in enumerate(texts) if len(text.split()) >= 80][:50]
    assert len(originals) == 50
    copies = [edit_one_word(texts[i]) for i in originals]
    results = minhash_dedup(texts + copies)

    kept_originals = [i for i in originals if results[i].kept]
    assert len(kept_originals) == len(originals)
    for n, original in enumerate(originals):
        result = results[len(texts) + n]
        assert not result.kept and result.nearest_index == original, result
        assert result.jaccard > 0.8
    # Every drop points at a text that was kept.
    assert all(results[r.nearest_index].kept for r in results if not r.kept)
    # Greedy in input order: the copies change nothing about the records before them.
    alone = minhash_dedup(texts)
    assert [(r.kept, r.nearest_index) for r in alone] == [(r.kept, r.nearest_index) for r in results[: len(texts)]]
