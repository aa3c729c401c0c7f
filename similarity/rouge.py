"""Exact, fast greedy ROUGE-L near-duplicate filtering (Self-Instruct / Stanford Alpaca style).

Definition (identical to Alpaca's ``generate_instruction.py``)
----------------------------------------------------------------
Instructions are processed in input order.  An instruction is **dropped** if and only if
its ROUGE-L F-measure -- exactly as computed by the ``rouge_score`` package with
``RougeScorer(["rougeL"], use_stemmer=False)`` -- against ANY seed instruction or ANY
earlier *kept* instruction is strictly greater than ``threshold`` (default 0.7).
Otherwise it is kept and joins the pool.  An F-measure exactly equal to the threshold
keeps the instruction.

How it is fast while staying exact
----------------------------------
* Tokens are rouge_score's default tokens (lower-case, maximal runs of ``[a-z0-9]``),
  integer-encoded; each token sequence is stored as a ``str`` with one code point per
  token id, so the LCS is computed by rapidfuzz's compiled bit-parallel
  ``LCSseq.similarity`` instead of rouge_score's pure-Python dynamic programme.
* With ``L`` the LCS length and ``la``, ``lb`` the token counts, rouge_score's F is
  (mathematically) ``2L / (la + lb)``.  ``L`` is at most the multiset token overlap, so a
  pool item can only exceed the threshold ``t`` if it shares at least ``alpha(la, lb)``
  token occurrences with the query, ``alpha`` being the least integer with
  ``2 * alpha > t * (la + lb)``; since ``alpha <= min(la, lb)`` this also bounds the
  length ratio (length filter).
* Prefix filtering (PPJoin-style, exact): token occurrences -- ``(token, k-th
  occurrence)``, so multiset overlap becomes set overlap -- are sorted by one global
  order, rarest first.  If two sequences share >= alpha elements, their first two shared
  elements lie within the first ``l - alpha + 2`` elements of each, and each of them
  leaves room for the rest: ``alpha - 1 <= min(la - i, lb - j)`` at positions i, j.
  Every pool item indexes only its ``pi(l) = l - alpha_min(l) + 2`` rarest elements
  (``alpha_min`` over all admissible partner lengths); a query probes its ``pi`` rarest
  elements, keeps the postings that pass the length/position test (postings are kept
  sorted by length, so the admissible lengths are sliced out; the rest is vectorised
  with numpy) and computes the LCS only for pool items met at least twice (or once, when
  ``alpha < 2``, i.e. for very short texts).  Frequent tokens ("the", "a", ...) are at the
  end of the order and are almost never probed.  Near-duplicates are usually caught
  even earlier: the pool items in one short posting list of the query's rarest
  elements are scored first.
* The global order is the document frequency of each element.  :func:`rouge_l_dedup`,
  which sees all instructions up front, fixes it from the whole input; the incremental
  :class:`RougeLDeduplicator` re-derives it from the pool and rebuilds the index each time
  the pool doubles (amortised linear).  Any fixed order gives exact results; frequency
  order only makes it fast.  Tokens a query has that no pool item has rank first (they
  can only shorten the useful part of the prefix).
* All filters use ``t - 1e-9`` instead of ``t`` (the float error of the F formula is
  ~1e-15), so they never discard a pair that rouge_score would score above ``t``.  The
  keep/drop decision itself uses the same float expression as rouge_score
  (``p = lcs / len(prediction)``, ``r = lcs / len(target)``, ``f = 2 * p * r / (p + r)``,
  dropped iff ``f > t``), so boundary cases decide identically -- F exactly equal to the
  threshold is kept, and e.g. lengths 8 and 12 with LCS 7, which is "exactly" 0.7 in
  rationals but 0.7000000000000001 in rouge_score's floats, is dropped, as in Alpaca.
  (This expression is exactly symmetric in its arguments in IEEE arithmetic: ``2 * p``
  is exact and ``+``/``*`` commute.)
"""

from __future__ import annotations

import gc
import math
import re
from dataclasses import dataclass
from itertools import chain
from typing import Iterable

import numpy as np
from rapidfuzz.distance import LCSseq

__all__ = ["rouge_tokenize", "rouge_l_fmeasure", "DedupDecision", "RougeLDeduplicator", "rouge_l_dedup"]

# rouge_score.tokenize: text.lower(); re.sub(r"[^a-z0-9]+", " "); re.split(r"\s+");
# keep tokens matching r"^[a-z0-9]+$".  After the substitution only [a-z0-9] and spaces
# remain, so the kept tokens are exactly the maximal runs of [a-z0-9] of the lower-cased
# text.
_TOKEN_RE = re.compile(r"[a-z0-9]+")

_MARGIN = 1e-9  # filters use threshold - _MARGIN; float error of the F formula is ~1e-15
_OCC_STRIDE = 1 << 21  # element key = token_id + k * _OCC_STRIDE for the k-th repeat (ids < 2**21)
_UNKNOWN_CHAR = "\x00"  # token id 0: a token absent from the pool (never stored in the pool)
_MAX_CHAR_ID = 0x10FFFF - 0x800  # token ids encodable as one code point (surrogates skipped)
_FIRST_REBUILD = 256
_MAX_INDEXED_LEN = 1 << 15  # posting codes hold the length in 15 bits (and pool ids in 32)
_QUICK_MAX = 16  # quick near-duplicate check: postings of a rare element up to this size
_ELL = 2  # l-prefix filter: a similar pair shares >= min(2, alpha) prefix elements


def rouge_tokenize(text: str) -> list[str]:
    """rouge_score's default tokenization without stemming.

    Lower-cases ``text`` (Python ``str.lower``, so e.g. ``"\u212a"`` (Kelvin sign) becomes
    ``"k"``), then returns the maximal runs of ASCII ``[a-z0-9]``; everything else
    (punctuation, whitespace, non-ASCII letters, ``_``) separates tokens and is dropped.
    """
    return _TOKEN_RE.findall(text.lower())


def _fmeasure(lcs: int, len_target: int, len_prediction: int) -> float:
    """rouge_score.rouge_scorer._score_lcs + scoring.fmeasure, same float operations."""
    if not len_target or not len_prediction:
        return 0.0
    precision = lcs / len_prediction
    recall = lcs / len_target
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def rouge_l_fmeasure(a: str, b: str) -> float:
    """ROUGE-L F-measure of two texts, equal to
    ``RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure`` (and symmetric)."""
    ta, tb = rouge_tokenize(a), rouge_tokenize(b)
    if not ta or not tb:
        return 0.0
    vocab: dict[str, str] = {}
    sa = "".join(vocab.setdefault(tok, _id_char(len(vocab) + 1)) for tok in ta)
    sb = "".join(vocab.setdefault(tok, _id_char(len(vocab) + 1)) for tok in tb)
    return _fmeasure(LCSseq.similarity(sa, sb), len(ta), len(tb))


def _id_char(token_id: int) -> str:
    # Skip the surrogate block so every id maps to a valid, distinct code point.
    return chr(token_id if token_id < 0xD800 else token_id + 0x800)


def _validate_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    t = float(threshold)
    if math.isnan(t) or not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (ROUGE-L F-measure), got {threshold!r}")
    return t


@dataclass(frozen=True, slots=True)
class DedupDecision:
    """Outcome for one instruction.

    kept:    True if the instruction was kept (no pool item scores strictly above the
             threshold).
    score:   when dropped, the ROUGE-L F against ``nearest`` (> threshold).  When kept,
             the highest ROUGE-L F among the pool items that survived the exact filters
             and were scored -- a lower bound of the true maximum over the pool that is
             always <= threshold (0.0 if no pool item could come near the threshold).
    nearest: when dropped, the pool instruction that caused the drop (the first one found
             above the threshold, not necessarily the most similar); None when kept.
    """

    kept: bool
    score: float
    nearest: str | None = None


class _Order(dict):
    """element -> sort key ``frequency << 36 | element`` (frequency when the order was
    fixed): the global prefix order, rarest first.  Elements unseen at that time rank first
    (frequency 0), ties are broken by the element key (< 2**36 for the indexed lengths), so
    the order is total and fixed until the next rebuild."""

    def __missing__(self, e: int) -> int:
        return e

    @classmethod
    def from_counts(cls, counts) -> "_Order":
        return cls({e: (f << 36) | e for e, f in counts.items()})


class _Postings:
    """The postings of one element, as int64 codes ``lp << 48 | (lp - j) << 32 | pid``
    (pool id, the pool item's length lp and the element's position j in its prefix).

    ``buf[:n_main]`` is sorted -- hence grouped by length, ``offs[lp]`` being the number of
    codes with length < lp -- so a query slices out just the lengths it can use;
    ``buf[n_main:n]`` is an unsorted tail of new codes, sorted into the main part when it
    outgrows 1/8 of it (amortised O(log n) sorting work per posting)."""

    __slots__ = ("buf", "n_main", "n", "offs")

    def __init__(self, codes: list[int]) -> None:
        self.buf = np.empty(max(16, 2 * len(codes)), np.int64)
        self.n = self.n_main = len(codes)
        if len(codes) == 1:  # the common case while indexing: stay cheap
            self.buf[0] = codes[0]
            self.n_main, self.offs = 0, [0]
        else:
            self.buf[: self.n] = codes
            self._sort()

    def _sort(self) -> None:
        main = self.buf[: self.n]
        main.sort()
        self.n_main = self.n
        self.offs = np.searchsorted(main >> 48, np.arange(int(main[-1] >> 48) + 2)).tolist()

    def append(self, code: int) -> None:
        n = self.n
        if n - self.n_main >= max(16, self.n_main >> 3):
            self._sort()
        if n == self.buf.size:
            self.buf = np.concatenate([self.buf, np.empty(n, np.int64)])
        self.buf[n] = code
        self.n = n + 1


class _QueryTables:
    """Filter tables for one query length lq.  need[lp] (numpy, lp = 0..cap) is
    alpha(lq, lp) - (ELL - 1) for admissible partner lengths (alpha <= min(lq, lp)), huge
    otherwise; lo is the least admissible length and hi[i] the largest one still useful
    at query prefix position i (need[lp] <= lq - i; < lo if none); some_single tells
    whether some admissible lp has alpha < ELL."""

    __slots__ = ("cap", "need", "lo", "hi", "some_single")

    def __init__(self, cap: int, need, lo: int, hi: list[int], some_single: bool) -> None:
        self.cap = cap
        self.need = need
        self.lo = lo
        self.hi = hi
        self.some_single = some_single


class RougeLDeduplicator:
    """Incremental greedy ROUGE-L dedup: seeds are always in the pool; kept instructions join it.

    Exact: decisions equal rouge_score's (see the module docstring).  Supports up to about
    1.1 million distinct tokens (OverflowError beyond); texts of 32,768 tokens or more
    are not indexed but compared directly.

    >>> d = RougeLDeduplicator(0.7)
    >>> d.add_seed("Give three tips for staying healthy.")
    >>> d.add("Give three tips for staying healthy!").kept
    False
    >>> d.add("Name the capital of France.").kept
    True
    >>> len(d)
    2
    """

    def __init__(self, threshold: float = 0.7) -> None:
        self.threshold = _validate_threshold(threshold)
        self._teff = self.threshold - _MARGIN  # filter bound, strictly looser than the threshold
        self._vocab: dict[str, int] = {}  # token -> id >= 1 (id 0 = token absent from the pool)
        self._chars: list[str] = [_UNKNOWN_CHAR]  # id -> code point
        self._texts: list[str] = []
        self._seqs: list[str] = []  # token sequences, one code point per token
        self._long: list[int] = []  # pool ids too long for the index (checked directly)
        self._max_len = 0  # longest indexed pool item
        self._df: dict[int, int] | None = {}  # element -> pool items containing it (None: batch mode)
        self._order: _Order = _Order()
        self._index: dict[int, _Postings] = {}  # element -> pool items with it in their prefix
        self._prefix_len: dict[int, int] = {}
        self._tables: dict[int, _QueryTables] = {}
        self._next_rebuild: float = _FIRST_REBUILD
        self.n_candidates = 0  # pool items whose LCS was computed (diagnostics)
        self.n_rebuilds = 0

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return len(self._texts)

    def add_seed(self, instruction: str) -> None:
        """Put ``instruction`` in the pool unconditionally."""
        seq, ranked, _, elems = self._prepare(rouge_tokenize(instruction), assign=True)
        self._insert(instruction, seq, ranked, elems)

    def check(self, instruction: str) -> DedupDecision:
        """Decide ``instruction`` against the current pool without modifying the pool."""
        seq, ranked, n_unknown, _ = self._prepare(rouge_tokenize(instruction), assign=False)
        return self._query(seq, ranked, n_unknown)

    def add(self, instruction: str) -> DedupDecision:
        """Decide ``instruction`` and, if kept, add it to the pool."""
        tokens = rouge_tokenize(instruction)
        seq, ranked, n_unknown, elems = self._prepare(tokens, assign=False)
        decision = self._query(seq, ranked, n_unknown)
        if decision.kept:
            if n_unknown:  # tokens new to the pool: give them ids first
                seq, ranked, _, elems = self._prepare(tokens, assign=True)
            self._insert(instruction, seq, ranked, elems)
        return decision

    @property
    def pool(self) -> tuple[str, ...]:
        """The pool (seeds and kept instructions) in insertion order."""
        return tuple(self._texts)

    # ------------------------------------------------------------------ length algebra
    def _alpha(self, a: int, b: int) -> int:
        """Least overlap x >= 1 with 2x > teff * (a + b): the least LCS (and so the least
        token overlap) that could give F > threshold for token counts a, b."""
        return int(self._teff * (a + b) * 0.5) + 1  # int() == floor() here (or 0 -> 1)

    def _lo(self, n: int) -> int:
        """Shortest admissible partner length for length n (alpha(n, m) <= m)."""
        m = 1
        te = self._teff
        if te > 0.0:
            m = max(1, int(te * n / (2.0 - te)) - 1)
        while self._alpha(n, m) > m:  # m - alpha(n, m) is non-decreasing in m
            m += 1
        return m

    def _prefix_length(self, n: int) -> int:
        """pi(n) = min(n, n - alpha_min(n) + ELL), alpha_min(n) being the least alpha over
        admissible partners (at the shortest one).  Pool items index their first pi
        elements, queries probe their first pi elements (ELL-prefix filter)."""
        pi = self._prefix_len.get(n)
        if pi is None:
            pi = self._prefix_len[n] = min(n, n - self._alpha(n, self._lo(n)) + _ELL)
        return pi

    def _query_tables(self, lq: int) -> _QueryTables:
        """Filter table for query length lq (see _QueryTables).

        Take a similar pair: overlap >= alpha = alpha(lq, lp) (> 0).  Its first
        r = min(ELL, alpha) shared elements in the global order sit at query positions
        i < lq - alpha + r <= pi(lq) and pool-item positions j < lp - alpha + r <= pi(lp),
        so each is met while probing.  For the k-th of them (k <= r) at least alpha - k
        shared elements follow on both sides: alpha - k <= min(lq - 1 - i, lp - 1 - j),
        hence alpha - (ELL - 1) <= min(lq - i, lp - j), which is the test applied to
        each posting (``need[lp] <= min(lq - i, lp - j)``).  So r postings of the pair pass,
        and the pair is a candidate when r >= ELL, or when some alpha < ELL
        (``some_single``: then every pool item passing once is a candidate)."""
        tab = self._tables.get(lq)
        if tab is not None and tab.cap >= self._max_len:
            return tab
        # Indexed lengths are <= max_len; tabulate up to twice that so that the tables
        # get rebuilt only O(log) times.
        cap = max(2 * self._max_len, 64)
        need = np.full(cap + 1, 1 << 30, np.int32)
        lo = self._lo(lq)
        some_single = False
        admissible = []  # (lp, need[lp]) with need non-decreasing
        for lp in range(lo, cap + 1):
            a = self._alpha(lq, lp)
            if a > lq:
                break  # alpha is non-decreasing in lp: no admissible lp beyond
            if a <= lp:
                need[lp] = a - (_ELL - 1)
                admissible.append((lp, a - (_ELL - 1)))
                some_single = some_single or a < _ELL
        hi = []
        for i in range(self._prefix_length(lq)):
            h = lo - 1
            for lp, nd in admissible:
                if nd > lq - i:
                    break
                h = lp
            hi.append(h)
        tab = _QueryTables(cap, need, lo, hi, some_single)
        self._tables[lq] = tab
        return tab

    # ------------------------------------------------------------------ internals
    def _ids(self, tokens: list[str], assign: bool) -> list[int]:
        vocab = self._vocab
        if not assign:
            return [vocab.get(tok, 0) for tok in tokens]
        ids = []
        for tok in tokens:
            tid = vocab.get(tok)
            if tid is None:
                tid = len(self._chars)
                if tid > _MAX_CHAR_ID:
                    raise OverflowError("more distinct tokens than the code-point encoding supports")
                vocab[tok] = tid
                self._chars.append(_id_char(tid))
            ids.append(tid)
        return ids

    @staticmethod
    def _elements(ids: list[int]) -> list[int]:
        """Multiset -> set: the k-th repeat of token id becomes id + k * _OCC_STRIDE."""
        if len(set(ids)) == len(ids):
            return ids
        seen: dict[int, int] = {}
        out = []
        for tid in ids:
            k = seen.get(tid, 0)
            seen[tid] = k + 1
            out.append(tid + k * _OCC_STRIDE if k else tid)
        return out

    def _prepare(self, tokens: list[str], assign: bool) -> tuple[str, list[int], int, list[int]]:
        """Incremental mode: (token sequence as str, elements sorted by the current order,
        number of tokens unknown to the pool, elements).  Unknown tokens (only possible
        with ``assign=False``) become id 0, which matches nothing in the pool."""
        ids = self._ids(tokens, assign)
        n_unknown = 0 if assign else ids.count(0)
        elems = self._elements([i for i in ids if i] if n_unknown else ids)
        ranked = sorted(elems, key=self._order.__getitem__)
        chars = self._chars
        return "".join([chars[i] for i in ids]), ranked, n_unknown, elems

    def _candidates(self, ranked: list[int], n_unknown: int, n_probe: int, lq: int) -> list[int]:
        """Pool ids passing the length, prefix and positional filters, in ascending order.

        A posting met at query position i passes iff need[lp] <= min(lq - i, lp - j)
        (see _query_tables).  ``need[lp] <= lq - i`` holds exactly for the lengths
        lo..hi[i], which are sliced out of the sorted part of the postings; for the small
        unsorted tails it is not checked -- letting extra postings through only adds LCS
        checks, it never changes a decision."""
        index = self._index
        tab = self._query_tables(lq)
        lo, his = tab.lo, tab.hi
        parts = []
        for i, e in enumerate(ranked[:n_probe], n_unknown):
            post = index.get(e)
            if post is None:
                continue
            hi = his[i]
            if hi < lo:
                break  # hi[i] is non-increasing in i: nothing further can be similar
            offs = post.offs
            top = len(offs) - 1  # offs[top] == n_main
            a = offs[lo if lo < top else top]
            b = offs[hi + 1 if hi < top else top]
            n_main = post.n_main
            if b == n_main:  # the window reaches the end of the sorted part: one slice
                if post.n > a:
                    parts.append(post.buf[a : post.n])
            else:
                if b > a:
                    parts.append(post.buf[a:b])
                if post.n > n_main:
                    parts.append(post.buf[n_main : post.n])
        if not parts:
            return []
        codes = np.concatenate(parts) if len(parts) > 1 else parts[0]
        hits = codes[tab.need[codes >> 48] <= ((codes >> 32) & 0xFFFF)] & 0xFFFFFFFF
        if tab.some_single:
            return list(dict.fromkeys(np.sort(hits).tolist()))  # every hit is a candidate
        if hits.size < _ELL:
            return []
        hits.sort()
        k = _ELL - 1  # pool ids occurring >= _ELL times in the sorted hits:
        return list(dict.fromkeys(hits[k:][hits[k:] == hits[:-k]].tolist()))

    def _query(self, sq: str, ranked: list[int], n_unknown: int) -> DedupDecision:
        """Decision for the token sequence ``sq`` whose known elements, sorted by the
        global order, start with ``ranked`` (at least its prefix)."""
        lq = len(sq)
        if lq == 0:
            return DedupDecision(True, 0.0, None)  # F = 0 against everything
        best = (0, 1)  # best (LCS, length sum) among the pool items scored
        checked: list[int] = []
        if lq >= _MAX_INDEXED_LEN:  # absurdly long query: no filtering, check everything
            cands = list(range(len(self._texts)))
        else:
            # Tokens absent from the pool rank before every pool element (they are in no
            # pool item, so their place in the order is free): they use up the first
            # prefix slots.  If they fill the whole prefix, nothing can be similar.
            n_probe = self._prefix_length(lq) - n_unknown
            if n_probe <= 0:
                cands = []
            else:
                # Quick path for near-duplicates, which nearly always share the query's
                # rarest elements: score the pool items in one short posting list of
                # them first, and skip the full candidate search if one exceeds t.
                index = self._index
                post = index.get(ranked[0])
                if n_probe > 1 and (post is None or post.n > _QUICK_MAX):
                    post = index.get(ranked[1])
                if post is not None and post.n <= _QUICK_MAX:
                    tab = self._query_tables(lq)
                    lo, hi = tab.lo, tab.hi[0]
                    checked = [c & 0xFFFFFFFF for c in post.buf[: post.n].tolist() if lo <= c >> 48 <= hi]
                    decision, best = self._verify(sq, checked, best)
                    if decision is not None:
                        return decision
                cands = self._candidates(ranked, n_unknown, n_probe, lq)
                if checked:
                    cands = [pid for pid in cands if pid not in checked]
            if self._long:
                cands += self._long
        if cands:
            decision, best = self._verify(sq, cands, best)
            if decision is not None:
                return decision
        best_lcs, best_den = best
        return DedupDecision(True, _fmeasure(best_lcs, lq, best_den - lq) if best_lcs else 0.0, None)

    def _verify(
        self, sq: str, pids: list[int], best: tuple[int, int]
    ) -> tuple[DedupDecision | None, tuple[int, int]]:
        """Score ``pids`` exactly: the drop decision for the first one above the threshold
        (or None), and the best (LCS, length sum) seen, starting from ``best``."""
        seqs = self._seqs
        lq = len(sq)
        te = self._teff
        lcs_fn = LCSseq.similarity
        best_lcs, best_den = best
        self.n_candidates += len(pids)
        for pid in pids:
            sp = seqs[pid]
            lp = len(sp)
            lcs = lcs_fn(sq, sp)
            if 2 * lcs > te * (lq + lp):
                f = _fmeasure(lcs, lq, lp)
                if f > self.threshold:
                    return DedupDecision(False, f, self._texts[pid]), best
            if lcs * best_den > best_lcs * (lq + lp):
                best_lcs, best_den = lcs, lq + lp
        return None, (best_lcs, best_den)

    def _insert(self, text: str, seq: str, ranked: list[int], elems: list[int] | None = None) -> None:
        """Append to the pool.  ``seq`` has no unknown tokens; ``ranked`` holds (at least
        the prefix of) its elements in the current order; ``elems`` all its elements
        (needed in incremental mode, for the frequencies)."""
        n = len(seq)
        pid = len(self._texts)
        self._texts.append(text)
        self._seqs.append(seq)
        df = self._df
        if df is not None and n < _MAX_INDEXED_LEN:
            for e in elems:
                df[e] = df.get(e, 0) + 1
        if n >= _MAX_INDEXED_LEN:
            self._long.append(pid)  # absurdly long: verified directly by every query
        elif n:
            if n > self._max_len:
                self._max_len = n
            index = self._index
            code = (n << 48) | (n << 32) | pid
            for j, e in enumerate(ranked[: self._prefix_length(n)]):
                post = index.get(e)
                if post is None:
                    index[e] = _Postings([code - (j << 32)])
                else:
                    post.append(code - (j << 32))
        if len(self._texts) >= self._next_rebuild:
            self._rebuild()

    def _reindex(self, order: _Order) -> None:
        self._order = order
        sort_key = order.__getitem__
        codes: dict[int, list[int]] = {}
        for pid, seq in enumerate(self._seqs):
            n = len(seq)
            if 0 < n < _MAX_INDEXED_LEN:
                ids = [c if c < 0xD800 else c - 0x800 for c in map(ord, seq)]
                code = (n << 48) | (n << 32) | pid
                for j, e in enumerate(sorted(self._elements(ids), key=sort_key)[: self._prefix_length(n)]):
                    if e in codes:
                        codes[e].append(code - (j << 32))
                    else:
                        codes[e] = [code - (j << 32)]
        self._index = {e: _Postings(c) for e, c in codes.items()}

    def _rebuild(self) -> None:
        """Re-derive the prefix order from the pool's frequencies and re-index the pool."""
        self._reindex(_Order.from_counts(self._df))
        self._next_rebuild = 2 * len(self._texts)
        self.n_rebuilds += 1

    def _prepare_batch(self, token_lists: list[list[str]]) -> list[tuple[str, list[int]]]:
        """Batch mode (used by :func:`rouge_l_dedup`): fix the global order from the
        element frequencies of the whole workload and return, per token list, its token
        sequence (str) and the prefix of its elements sorted by that order -- as dense
        ranks, which from then on are the element keys (no per-query order lookups or
        sorting).  Only a speed matter: any fixed order gives exact results.  The instance
        must then only be fed through ``_query(seq, ranked, 0)`` / ``_insert``."""
        vocab_get, chars = self._vocab.get, self._chars
        seqs, elems = [], []
        for tokens in token_lists:
            ids = [vocab_get(tok) for tok in tokens]
            if None in ids:
                ids = self._ids(tokens, assign=True)
            seqs.append("".join([chars[i] for i in ids]))
            elems.append(self._elements(ids))
        sizes = np.fromiter(map(len, elems), np.int64, len(elems))
        flat = np.fromiter(chain.from_iterable(elems), np.int64, int(sizes.sum()))
        del elems
        uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        rank = np.empty(uniq.size, np.int64)
        rank[np.lexsort((uniq, counts))] = np.arange(uniq.size)  # rarest first, ties by key
        owner = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
        ranked = (np.sort(owner * uniq.size + rank[inverse]) - owner * uniq.size).tolist()
        del flat, inverse, owner
        shared = list(range(uniq.size))  # one int object per rank (less memory)
        out = []
        start = 0
        for seq in seqs:
            n = len(seq)
            out.append((seq, [shared[r] for r in ranked[start : start + min(n, self._prefix_length(n))]]))
            start += n
        self._order = None  # element keys are ranks from here on
        self._index = {}
        self._df = None
        self._next_rebuild = math.inf
        return out


def rouge_l_dedup(
    instructions: Iterable[str], seeds: Iterable[str] = (), threshold: float = 0.7
) -> list[DedupDecision]:
    """One decision per input instruction, in input order.

    Greedy: ``seeds`` start the pool; each instruction is dropped iff its ROUGE-L F against
    some pool item is > ``threshold``, and is added to the pool otherwise.  Same decisions
    as feeding :class:`RougeLDeduplicator` one by one, but faster (the whole input fixes
    the token order up front).  Python's cyclic garbage collector is paused during the
    call (the structures built are acyclic) and restored afterwards.
    """
    dedup = RougeLDeduplicator(threshold)
    instructions = list(instructions)
    seeds = list(seeds)
    # The pass allocates many long-lived, acyclic objects; the cyclic garbage collector
    # would repeatedly rescan them for nothing, so pause it (restored afterwards).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        prepared = dedup._prepare_batch([rouge_tokenize(s) for s in seeds] + [rouge_tokenize(s) for s in instructions])
        for text, (seq, ranked) in zip(seeds, prepared):
            dedup._insert(text, seq, ranked)
        out = []
        for text, (seq, ranked) in zip(instructions, prepared[len(seeds) :]):
            decision = dedup._query(seq, ranked, 0)
            if decision.kept:
                dedup._insert(text, seq, ranked)
            out.append(decision)
    finally:
        if gc_was_enabled:
            gc.enable()
    return out
