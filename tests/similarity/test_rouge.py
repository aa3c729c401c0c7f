"""Exactness tests for similarity.rouge against rouge_score itself.

The reference below is the plain greedy definition (Stanford Alpaca's filter): an
instruction is dropped iff rouge_score's ROUGE-L F against some pool item (seeds + earlier
kept instructions) is > threshold.  Real data comes from ../shared/data (override with
SELFINSTRUCT_DATA_DIR).
"""

from __future__ import annotations

import json
import math
import os
import random
from fractions import Fraction
from pathlib import Path

import pytest

from similarity.rouge import (
    DedupDecision,
    RougeLDeduplicator,
    rouge_l_dedup,
    rouge_l_fmeasure,
    rouge_tokenize,
)

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

DATA_DIR = Path(os.environ.get("SELFINSTRUCT_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
N_REAL = 600  # real Alpaca records in the main workload


# --------------------------------------------------------------------------- reference
@pytest.fixture(scope="module")
def scorer():
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


class ReferenceScores:
    """rouge_score's ROUGE-L F, computed the way Stanford Alpaca does it (rouge_score's
    tokenizer once per text, then ``rouge_scorer._score_lcs``), memoised per unordered pair
    so the greedy reference can be re-run for several thresholds in reasonable time.
    test_fmeasure_matches_rouge_score checks the public ``scorer.score`` gives the same."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.tokens: dict[str, list[str]] = {}
        self.cache: dict[tuple[str, str], float] = {}

    def _tok(self, text: str) -> list[str]:
        toks = self.tokens.get(text)
        if toks is None:
            toks = self.tokens[text] = self.scorer._tokenizer.tokenize(text)
        return toks

    def __call__(self, new: str, pool_item: str) -> float:
        key = (new, pool_item) if new <= pool_item else (pool_item, new)
        f = self.cache.get(key)
        if f is None:
            f = self.cache[key] = rouge_scorer._score_lcs(self._tok(new), self._tok(pool_item)).fmeasure
        return f


def reference_dedup(instructions, seeds, threshold, score) -> list[bool]:
    """Straightforward greedy filter: kept flags, in input order."""
    pool = list(seeds)
    kept = []
    for inst in instructions:
        dropped = any(score(inst, p) > threshold for p in pool)
        kept.append(not dropped)
        if not dropped:
            pool.append(inst)
    return kept


@pytest.fixture(scope="module")
def ref_scores(scorer):
    return ReferenceScores(scorer)


# --------------------------------------------------------------------------- workload
def _load_real():
    alpaca = DATA_DIR / "alpaca_5000.json"
    seeds = DATA_DIR / "seed_tasks.jsonl"
    if not alpaca.exists() or not seeds.exists():
        pytest.skip(f"real data not found under {DATA_DIR}")
    records = json.loads(alpaca.read_text())
    seed_insts = [json.loads(line)["instruction"] for line in seeds.read_text().splitlines() if line.strip()]
    return [r["instruction"] for r in records], seed_insts


def _edit(text: str, rng: random.Random, vocab: list[str]) -> str:
    """A near-duplicate (or not so near) edit of ``text``."""
    w = text.split()
    op = rng.randrange(11)
    if op == 0 and len(w) >= 2:  # swap two adjacent words
        i = rng.randrange(len(w) - 1)
        w[i], w[i + 1] = w[i + 1], w[i]
    elif op == 1:  # punctuation / case only
        s = text.upper() if rng.random() < 0.5 else text.lower()
        return s.replace(" ", rng.choice([" , ", " - ", "  ", "; "]), rng.randint(0, 2)).rstrip(".?!") + rng.choice(["", "!", "?!", "..."])
    elif op == 2 and len(w) >= 3:  # drop one word
        del w[rng.randrange(len(w))]
    elif op == 3 and len(w) >= 5:  # drop several words
        for _ in range(rng.randint(2, 3)):
            del w[rng.randrange(len(w))]
    elif op == 4:  # append words
        w += rng.sample(vocab, rng.randint(1, 4))
    elif op == 5:  # replace words
        for _ in range(rng.randint(1, 3)):
            w[rng.randrange(len(w))] = rng.choice(vocab)
    elif op == 6:  # repeat a word (multiset matters)
        i = rng.randrange(len(w))
        w.insert(i, w[i])
    elif op == 7:  # reversed word order: big overlap, small LCS
        w.reverse()
    elif op == 8:  # shuffled
        rng.shuffle(w)
    elif op == 9:  # prefix words
        w = rng.sample(vocab, rng.randint(1, 3)) + w
    else:  # swap two random words
        i, j = rng.randrange(len(w)), rng.randrange(len(w))
        w[i], w[j] = w[j], w[i]
    return " ".join(w)


def _boundary_pairs(rng: random.Random) -> list[tuple[str, str]]:
    """Pairs (a, b) built so that LCS(a, b) = L exactly and 2L/(la+lb) is exactly 0.5, 0.7
    or 0.9 in rational arithmetic -- plus neighbours one token away.  In rouge_score's
    float arithmetic some of them come out == threshold (kept), some just above (dropped)."""
    pairs = []
    counter = [0]

    def fresh() -> str:
        counter[0] += 1
        return f"zq{counter[0]}x"

    specs = []
    for ratio in (Fraction(7, 20), Fraction(1, 4), Fraction(9, 20)):
        for la in range(1, 25):
            for lb in range(1, 25):
                for lcs in range(1, min(la, lb) + 1):
                    if Fraction(lcs, la + lb) == ratio:
                        specs.append((la, lb, lcs))
    rng.shuffle(specs)
    for la, lb, lcs in specs[:60] + [(10, 10, 8), (10, 10, 6), (8, 12, 6), (9, 11, 8)]:
        a = [fresh() for _ in range(la)]
        keep = sorted(rng.sample(range(la), lcs))
        b = [a[k] for k in keep] + [fresh() for _ in range(lb - lcs)]
        pairs.append((" ".join(a).capitalize() + ".", " ".join(b) + "?"))
    return pairs


@pytest.fixture(scope="module")
def workload():
    real, seeds = _load_real()
    rng = random.Random(1234)
    base = real[:N_REAL]
    vocab = sorted({t for s in real[N_REAL : N_REAL + 1500] for t in s.split() if t.isalpha()})
    items = list(base)
    # edited copies of earlier real instructions and of seeds, inserted later on
    for _ in range(260):
        k = rng.randrange(len(base))
        items.insert(rng.randint(min(k + 1, len(items)), len(items)), _edit(base[k], rng, vocab))
    for _ in range(60):
        items.insert(rng.randrange(len(items) + 1), _edit(rng.choice(seeds), rng, vocab))
    # some copies placed BEFORE their original (the original is then the duplicate)
    for _ in range(30):
        k = rng.randrange(len(base))
        pos = items.index(base[k])
        items.insert(rng.randint(0, pos), _edit(base[k], rng, vocab))
    for a, b in _boundary_pairs(rng):
        pos = rng.randrange(len(items) + 1)
        items[pos:pos] = [a, b]
    items += ["", "   ", "?!...", "Ünïcödé ÉÈ", "123 456", "123 456"]
    return items, seeds


# --------------------------------------------------------------------------- tokenizer
TOKENIZER_CASES = [
    "",
    " ",
    "\t\n\r\x0b\x0c",
    "...!!!???",
    "--- *** ___ ''' \"\"\"",
    "Hello, World!",
    "don't stop-believing",
    "snake_case and CamelCase",
    "Ünïcödé façade naïve café",
    "日本語のテキスト and English",
    "Привет мир",
    "İstanbul",  # lower() gives 'i' + combining dot
    "\u212a elvin",  # KELVIN SIGN lower-cases to ASCII 'k'
    "Straße ß ǅ ǈ ﬁne",
    "ΣΊΣΥΦΟΣ σίσυφος",
    "１２３ full-width digits",
    "x² ½ ٣ ໓",
    "3.14159, 1,000,000 and 42nd",
    "a1b2c3 A1B2C3",
    "e\u0301 (combining) zero\u200bwidth",
    "emoji 😀 in 🧪 text",
    "ALL CAPS SENTENCE.",
    "   leading and trailing   ",
    "x",
    "0",
]


@pytest.mark.parametrize("text", TOKENIZER_CASES)
def test_tokenize_matches_rouge_score(scorer, text):
    assert rouge_tokenize(text) == scorer._tokenizer.tokenize(text)


def test_tokenize_random_unicode_matches_rouge_score(scorer):
    rng = random.Random(7)
    alphabet = (
        [chr(c) for c in range(32, 127)]
        + list("\t\n ")
        + [chr(rng.randrange(0xA0, 0x3000)) for _ in range(200)]
        + list("\u0130\u212a\u0131\u017f\ufb01\u1e9e")  # İ, Kelvin, dotless i, long s, fi, ẞ
    )
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert rouge_tokenize(text) == scorer._tokenizer.tokenize(text), repr(text)


def test_tokenize_edge_cases():
    assert rouge_tokenize("") == []
    assert rouge_tokenize("?!... ---") == []
    assert rouge_tokenize("Héllo wörld") == ["h", "llo", "w", "rld"]
    assert rouge_tokenize("Top-10 LISTS, 2024!") == ["top", "10", "lists", "2024"]


# --------------------------------------------------------------------------- F-measure
def test_fmeasure_matches_rouge_score(scorer, workload):
    items, seeds = workload
    rng = random.Random(11)
    texts = items + seeds
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(3000)]
    pairs += list(zip(items, items[1:]))
    for a, b in pairs:
        expected = scorer.score(a, b)["rougeL"].fmeasure
        assert rouge_l_fmeasure(a, b) == expected, (a, b)
        assert rouge_l_fmeasure(b, a) == expected, (b, a)  # exact float symmetry


def test_boundary_pairs_really_hit_the_threshold(scorer):
    """The constructed boundary pairs include F == threshold exactly (must be kept) and
    pairs that are 'exactly' the threshold in rationals but a hair above in floats."""
    fs = {scorer.score(a, b)["rougeL"].fmeasure for a, b in _boundary_pairs(random.Random(1))}
    assert {0.5, 0.7, 0.9} <= fs
    assert any(0.7 < f < 0.7 + 1e-12 for f in fs)


# --------------------------------------------------------------------------- decisions
def _check_decisions(decisions, instructions, seeds, threshold, expected_kept, scorer):
    assert len(decisions) == len(instructions)
    assert [d.kept for d in decisions] == expected_kept
    pool = list(seeds)
    for inst, d in zip(instructions, decisions):
        assert isinstance(d, DedupDecision)
        if d.kept:
            assert d.nearest is None
            assert 0.0 <= d.score <= threshold
            pool.append(inst)
        else:
            assert d.nearest in pool
            assert d.score > threshold
            assert d.score == scorer.score(inst, d.nearest)["rougeL"].fmeasure


@pytest.mark.parametrize("threshold", [0.7, 0.5, 0.9])
def test_decisions_match_reference(workload, scorer, ref_scores, threshold):
    items, seeds = workload
    expected = reference_dedup(items, seeds, threshold, ref_scores)
    assert expected.count(False) >= 100, "the workload should exercise many drops"
    decisions = rouge_l_dedup(items, seeds, threshold=threshold)
    _check_decisions(decisions, items, seeds, threshold, expected, scorer)


def test_incremental_api_matches_batch(workload, scorer, ref_scores):
    """add()/add_seed() (vocabulary growing, index rebuilt as the pool doubles) gives the
    same decisions as rouge_l_dedup; check() never changes the pool."""
    items, seeds = workload
    expected = reference_dedup(items, seeds, 0.7, ref_scores)
    dedup = RougeLDeduplicator()
    for s in seeds:
        dedup.add_seed(s)
    assert len(dedup) == len(seeds)
    decisions = []
    for inst in items:
        before = len(dedup)
        probe = dedup.check(inst)
        assert len(dedup) == before
        d = dedup.add(inst)
        assert d == probe
        assert len(dedup) == before + d.kept
        decisions.append(d)
    assert dedup.n_rebuilds >= 2
    _check_decisions(decisions, items, seeds, 0.7, expected, scorer)
    assert len(dedup) == len(seeds) + sum(expected)
    assert list(dedup.pool) == seeds + [i for i, k in zip(items, expected) if k]


@pytest.mark.parametrize("threshold", [0.0, 0.3, 1.0])
def test_extreme_thresholds_match_reference(workload, ref_scores, threshold):
    items, seeds = workload
    items = items[:250] + items[-6:]  # includes empty / punctuation-only / duplicates
    seeds = seeds[:40]
    expected = reference_dedup(items, seeds, threshold, ref_scores)
    assert [d.kept for d in rouge_l_dedup(items, seeds, threshold)] == expected
    inc = RougeLDeduplicator(threshold)
    for s in seeds:
        inc.add_seed(s)
    assert [inc.add(i).kept for i in items] == expected


def test_small_examples():
    seeds = ["Give three tips for staying healthy."]
    out = rouge_l_dedup(
        [
            "Give three tips for staying healthy!",  # same tokens -> F = 1
            "GIVE 3 TIPS FOR STAYING HEALTHY",  # 5/6 tokens -> F = 5/6 > 0.7
            "Name the capital of France.",
            "name the capital of france",  # duplicate of a kept instruction
            "",  # no tokens: F = 0 with everything, always kept
            "",
            "What is the capital city of France?",  # LCS 4, 7 and 5 tokens: F = 8/12 <= 0.7
        ],
        seeds,
    )
    assert [d.kept for d in out] == [False, False, True, False, True, True, True]
    assert out[0] == DedupDecision(False, 1.0, seeds[0])
    assert out[1].nearest == seeds[0] and out[1].score == pytest.approx(10 / 12)
    assert out[3].nearest == "Name the capital of France."
    assert out[4] == DedupDecision(True, 0.0, None)
    assert out[6].kept and 0.0 <= out[6].score <= 0.7  # best F among scored candidates


def test_exact_threshold_is_kept():
    # la = lb = 10, LCS = 7: rouge_score's F is exactly 0.7 -> not > 0.7 -> kept
    a = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10"
    b = "w1 w2 w3 w4 w5 w6 w7 x8 x9 x10"
    assert rouge_l_fmeasure(a, b) == 0.7
    assert [d.kept for d in rouge_l_dedup([a, b])] == [True, True]
    # la = 8, lb = 12, LCS = 7: 2*7/20 is 0.7 in rationals but rouge_score's floats give
    # 0.7000000000000001 > 0.7 -> dropped, exactly like Alpaca's filter
    c = "v1 v2 v3 v4 v5 v6 v7 v8"
    d = "v1 v2 v3 v4 v5 v6 v7 y1 y2 y3 y4 y5"
    assert rouge_l_fmeasure(c, d) > 0.7
    assert [x.kept for x in rouge_l_dedup([c, d])] == [True, False]


def test_repeated_tokens_and_order():
    # same multiset, reversed order: overlap 6, LCS 1 -> F = 1/6, kept
    assert rouge_l_dedup(["a b c d e f", "f e d c b a"])[1].kept
    # repeated tokens count as many times as they occur (LCS over sequences)
    assert not rouge_l_dedup(["the cat the cat the cat", "the cat the cat the dog"])[1].kept
    # la = 4, lb = 1, LCS = 1: F = 2/5
    assert not rouge_l_dedup(["the the the the", "the"], threshold=0.3)[1].kept
    assert rouge_l_dedup(["the the the the", "the"], threshold=0.4)[1].kept


def test_check_does_not_modify_pool():
    d = RougeLDeduplicator()
    d.add_seed("Write a poem about the sea.")
    assert d.check("Write a poem about the ocean waves at night.").kept
    assert not d.check("write a poem about the sea").kept
    assert len(d) == 1
    assert d.add("A totally unseen zebra quantum sentence.").kept
    assert len(d) == 2
    assert not d.check("a totally unseen zebra quantum sentence").kept


# --------------------------------------------------------------------------- larger scale
def _bruteforce_dedup(instructions, seeds, threshold) -> list[bool]:
    """Exhaustive greedy filter with compiled LCS (rapidfuzz) and rouge_score's float
    formula, vectorised with numpy (IEEE-identical to Python floats).  Its F-measure is
    checked against rouge_score in test_fmeasure_matches_rouge_score; being exhaustive,
    it can check far larger workloads than the pure-Python reference."""
    np = pytest.importorskip("numpy")
    from rapidfuzz import process
    from rapidfuzz.distance import LCSseq

    vocab: dict[str, str] = {}

    def enc(text: str) -> str:
        return "".join(vocab.setdefault(t, chr(0x4E00 + len(vocab))) for t in rouge_tokenize(text))

    pool = [enc(s) for s in seeds]
    pool_len = [len(p) for p in pool]
    kept = []
    for inst in instructions:
        q = enc(inst)
        dropped = False
        if q and pool:
            lcs = process.cdist([q], pool, scorer=LCSseq.similarity, dtype=np.int64)[0].astype(np.float64)
            lp = np.asarray(pool_len, np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                p = lcs / lp  # precision: prediction = pool item (symmetric anyway)
                r = lcs / len(q)
                f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
            f[lp == 0] = 0.0
            dropped = bool((f > threshold).any())
        kept.append(not dropped)
        if not dropped:
            pool.append(q)
            pool_len.append(len(q))
    return kept


@pytest.fixture(scope="module")
def big_workload():
    """~4,000 instructions: real ones, bench-style edited variants, long texts (beyond the
    initial length tables) and heavy token repetition."""
    real, seeds = _load_real()
    rng = random.Random(99)
    vocab = sorted({t for s in real for t in s.split() if t.isalpha()})
    items = list(real[:1500])
    for _ in range(2200):
        items.append(_edit(rng.choice(items), rng, vocab))
    for _ in range(40):  # long instructions and near-duplicates of them
        long_text = " ".join(rng.choice(vocab) for _ in range(rng.randint(60, 300)))
        items.append(long_text)
        items.append(_edit(long_text, rng, vocab))
    for _ in range(60):  # repeated tokens
        w = rng.sample(vocab, 3)
        items.append(" ".join(rng.choice(w) for _ in range(rng.randint(2, 40))))
    rng.shuffle(items)
    return items, seeds


@pytest.mark.parametrize("threshold", [0.7, 0.55, 0.85])
def test_large_workload_matches_bruteforce(big_workload, threshold):
    items, seeds = big_workload
    expected = _bruteforce_dedup(items, seeds, threshold)
    assert 300 <= expected.count(False) <= len(items) - 1000
    assert [d.kept for d in rouge_l_dedup(items, seeds, threshold)] == expected
    inc = RougeLDeduplicator(threshold)
    for s in seeds:
        inc.add_seed(s)
    assert [inc.add(i).kept for i in items] == expected


def test_huge_instruction():
    """Texts beyond the index's length limit are still handled exactly."""
    rng = random.Random(5)
    words = [f"w{k}" for k in range(5000)]
    huge = " ".join(rng.choice(words) for _ in range(33_000))
    near = huge + " and one more"
    other = " ".join(rng.choice(words) for _ in range(33_000))
    out = rouge_l_dedup(["Name three colors.", huge, near, other, "name three colours"], ["List three colors."])
    assert [d.kept for d in out] == [
        rouge_l_fmeasure("Name three colors.", "List three colors.") <= 0.7,
        True,
        False,
        rouge_l_fmeasure(other, huge) <= 0.7,
        True,
    ]
    d = RougeLDeduplicator()
    d.add_seed(huge)
    assert not d.check(near).kept and d.check("name three colors").kept


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize("bad", [-0.01, 1.01, 2, -1, math.nan, math.inf, -math.inf, "0.7", None, True])
def test_threshold_validation(bad):
    with pytest.raises(ValueError, match="threshold"):
        RougeLDeduplicator(bad)
    with pytest.raises(ValueError, match="threshold"):
        rouge_l_dedup(["a"], threshold=bad)


@pytest.mark.parametrize("ok", [0, 0.0, 0.7, 1, 1.0])
def test_threshold_accepts_unit_interval(ok):
    assert RougeLDeduplicator(ok).threshold == float(ok)
