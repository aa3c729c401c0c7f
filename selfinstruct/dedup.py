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
  integer-encoded, and each token sequence is stored as a ``str`` with one code point per
  token id so that the LCS is computed by rapidfuzz's compiled bit-parallel
  ``LCSseq.similarity``.
* With ``L`` the LCS length and ``la``, ``lb`` the token counts, rouge_score's F is
  (mathematically) ``2L / (la + lb)``.  Since ``L <= min(la, lb)`` and ``L`` is at most the
  multiset overlap ``|A n B|``, a pool item can only exceed the threshold if

  - its length lies in a window around the query's length (length filter), and
  - it shares at least ``alpha(la, lb)`` token occurrences with the query, where
    ``alpha`` is the least integer with ``2 * alpha / (la + lb) > t``.

* Prefix filtering: token occurrences (``(token, k-th occurrence)``, so that multiset
  overlap becomes set overlap) are sorted by a global order (rarest first).  If two
  multisets share at least ``alpha`` elements, then the first ``la - alpha + 1`` elements
  of one and the first ``lb - alpha + 1`` of the other must share an element.  Taking the
  smallest ``alpha`` over the admissible lengths gives, per length, a prefix length
  ``pi(l)``; every pool item indexes only its ``pi`` rarest elements in an inverted index
  and a query probes only its ``pi`` rarest elements.  Very frequent tokens ("the",
  "a", ...) therefore almost never get probed.
* The global order is the document frequency of each element.  The incremental
  deduplicator re-derives it from the pool and rebuilds the index whenever the pool has
  doubled (amortised linear); :func:`rouge_l_dedup`, which sees all instructions up front,
  fixes the order once from the whole input.  Any fixed order is correct, the frequency
  order only makes it fast.
* Filters use a safety margin of ``1e-9`` below the threshold (floating point error of the
  F formula is ~1e-15), so they never discard a pair that rouge_score would score above
  the threshold.  The final keep/drop decision for each surviving candidate uses the very
  same float expression as ``rouge_score`` (``p = lcs / len(prediction)``,
  ``r = lcs / len(target)``, ``f = 2 * p * r / (p + r)``), so boundary cases such as an F
  of exactly the threshold decide identically.  (This expression is exactly symmetric in
  its two arguments in IEEE arithmetic: ``2 * p`` is exact and ``+``/``*`` commute.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

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
_ELL = 2  # l-prefix filter: similar pairs share >= min(_ELL, alpha) elements of the prefixes


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


@dataclass(frozen=True)
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
    """element -> (frequency when the order was fixed, element): the global prefix order.
    Elements unseen at that time rank first (frequency 0), ties broken by element key, so
    the order is total and fixed until the next rebuild."""

    def __missing__(self, e: int) -> tuple[int, int]:
        return (0, e)


class RougeLDeduplicator:
    """Incremental greedy ROUGE-L dedup: seeds are always in the pool; kept instructions join it.

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
        self._lens: list[int] = []
        self._elems: list[list[int]] = []  # element keys of each pool item (for rebuilds)
        self._max_len = 0
        self._df: dict[int, int] | None = {}  # element -> pool items containing it (None: fixed order)
        self._order: _Order = _Order()
        # element -> pool item length -> bucket [pids, cuts]: the ids of the pool items of
        # that length whose prefix holds the element, sorted by the element's position j
        # in that prefix; cuts[k] = number of them with j < k (last entry = len(pids)).
        self._index: dict[int, dict[int, list[list[int]]]] = {}
        self._prefix_len: dict[int, int] = {}
        self._plans: dict[int, tuple[float, tuple[dict[int, int], ...]]] = {}
        self._next_rebuild: float = _FIRST_REBUILD
        self.n_candidates = 0  # pool items whose LCS was computed (diagnostics)
        self.n_rebuilds = 0

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return len(self._texts)

    def add_seed(self, instruction: str) -> None:
        """Put ``instruction`` in the pool unconditionally."""
        self._insert(instruction, self._ids(rouge_tokenize(instruction), assign=True))

    def check(self, instruction: str) -> DedupDecision:
        """Decide ``instruction`` against the current pool without modifying the pool."""
        return self._decide(self._ids(rouge_tokenize(instruction), assign=False))[0]

    def add(self, instruction: str) -> DedupDecision:
        """Decide ``instruction`` and, if kept, add it to the pool."""
        tokens = rouge_tokenize(instruction)
        ids = self._ids(tokens, assign=False)
        decision, ranked = self._decide(ids)
        if decision.kept:
            if 0 in ids:  # tokens new to the pool: give them ids, rank again
                ids, ranked = self._ids(tokens, assign=True), None
            self._insert(instruction, ids, ranked)
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

    def _hi(self, n: int) -> float:
        """Longest admissible partner length for length n (alpha(n, m) <= n), or inf."""
        te = self._teff
        if te <= 0.0:
            return math.inf
        m = max(n, int(2.0 * n / te - n) + 2)
        while self._alpha(n, m) > n:
            m -= 1
        return m

    def _prefix_length(self, n: int) -> int:
        """pi(n) = min(n, n - alpha_min(n) + ELL), alpha_min(n) being the least alpha over
        admissible partners (at the shortest one).  Pool items index their first pi
        elements, queries probe their first pi elements (ELL-prefix filter)."""
        pi = self._prefix_len.get(n)
        if pi is None:
            pi = self._prefix_len[n] = min(n, n - self._alpha(n, self._lo(n)) + _ELL)
        return pi

    def _plan(self, lq: int) -> tuple[dict[int, tuple[int, int]], ...]:
        """For each query prefix position i: {partner length lp: (number of partner
        prefix positions j to scan, required number of shared prefix elements)}.

        For a similar pair (overlap >= alpha = alpha(lq, lp)) the first r = min(ELL, alpha)
        shared elements in the global order lie at positions i < lq - alpha + r and
        j < lp - alpha + r, and the k-th of them satisfies alpha <= k + min(lq-1-i,
        lp-1-j) (at least alpha - k shared elements follow it on both sides), so it is
        met at a (i, lp, j) listed here; r such meetings make the pair a candidate."""
        cached = self._plans.get(lq)
        if cached is not None and cached[0] >= self._max_len:
            return cached[1]
        # Lengths beyond the longest pool item are useless; plan up to twice that (capped
        # by the true maximum), so plans get rebuilt only O(log) times.
        hi = self._hi(lq)
        cap = min(hi, max(2 * self._max_len, 64))
        lo = self._lo(lq)
        plan = []
        for i in range(self._prefix_length(lq)):
            row = {}
            lp = lo
            while lp <= cap:
                a = self._alpha(lq, lp)
                if a > lq or a > _ELL + lq - 1 - i:
                    break  # alpha is non-decreasing in lp
                if a <= lp:
                    row[lp] = (lp - a + _ELL, min(_ELL, a))
                lp += 1
            plan.append(row)
        plan = tuple(plan)
        self._plans[lq] = (cap if cap < hi else math.inf, plan)
        return plan

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

    def _decide(self, ids: list[int]) -> tuple[DedupDecision, list[int] | None]:
        """Decision for a token-id sequence (0 = token absent from the pool), plus the
        ranked element list when it can be reused for indexing."""
        lq = len(ids)
        if lq == 0:
            return DedupDecision(True, 0.0, None), None  # F = 0 against everything
        n_unknown = ids.count(0)
        # Tokens absent from the pool rank before every pool element (they are in no pool
        # item, so their place in the order is free): they use up the first prefix
        # slots.  If they fill the whole prefix, nothing in the pool can be similar.
        n_probe = self._prefix_length(lq) - n_unknown
        if n_probe <= 0:
            return DedupDecision(True, 0.0, None), None
        ranked = sorted(self._elements([i for i in ids if i] if n_unknown else ids), key=self._order.__getitem__)
        chars = self._chars
        sq = "".join([chars[i] for i in ids])
        plan = self._plan(lq)

        index, seqs = self._index, self._seqs
        te = self._teff
        lcs_fn = LCSseq.similarity
        counts: dict[int, int] = {}
        best_lcs, best_den = 0, 1
        n_cand = 0
        # Scan the query prefix in the global order; count, per pool item, the shared
        # elements met at plan-admissible (i, lp, j); an item becomes a candidate (LCS
        # computed) when its count reaches the plan's requirement -- see _plan.
        for i, e in enumerate(ranked[:n_probe], n_unknown):
            by_len = index.get(e)
            if by_len is None:
                continue
            row = plan[i]
            if len(by_len) <= len(row):
                buckets = [(lp, row[lp], b) for lp, b in by_len.items() if lp in row]
            else:
                buckets = [(lp, r, by_len[lp]) for lp, r in row.items() if lp in by_len]
            for lp, (n_pos, req), (pids, cuts) in buckets:
                if n_pos + 1 < len(cuts):
                    pids = pids[: cuts[n_pos]]
                for pid in pids:
                    k = counts.get(pid, 0) + 1
                    counts[pid] = k
                    if k != req:
                        continue
                    lcs = lcs_fn(sq, seqs[pid])
                    n_cand += 1
                    if 2 * lcs > te * (lq + lp):
                        f = _fmeasure(lcs, lq, lp)
                        if f > self.threshold:
                            self.n_candidates += n_cand
                            return DedupDecision(False, f, self._texts[pid]), None
                    if lcs * best_den > best_lcs * (lq + lp):
                        best_lcs, best_den = lcs, lq + lp
        self.n_candidates += n_cand
        best = _fmeasure(best_lcs, lq, best_den - lq) if best_lcs else 0.0
        return DedupDecision(True, best, None), (None if n_unknown else ranked)

    def _insert(self, text: str, ids: list[int], ranked: list[int] | None = None) -> None:
        """Append to the pool.  ``ids`` must be assigned ids (no 0); ``ranked`` is the
        element list already sorted by the current order, if the caller has it."""
        n = len(ids)
        pid = len(self._texts)
        chars = self._chars
        self._texts.append(text)
        self._seqs.append("".join([chars[i] for i in ids]))
        self._lens.append(n)
        if n > self._max_len:
            self._max_len = n
        df = self._df
        if df is not None:
            elems = self._elements(ids)
            self._elems.append(elems)
            for e in elems:
                df[e] = df.get(e, 0) + 1
        if n:
            if ranked is None:
                ranked = sorted(self._elements(ids), key=self._order.__getitem__)
            self._index_item(pid, n, ranked)
        if len(self._texts) >= self._next_rebuild:
            self._rebuild()

    def _index_item(self, pid: int, n: int, ranked: list[int]) -> None:
        index = self._index
        for j, e in enumerate(ranked[: self._prefix_length(n)]):
            by_len = index.get(e)
            if by_len is None:
                index[e] = {n: [[pid], [0] * (j + 1) + [1]]}
                continue
            bucket = by_len.get(n)
            if bucket is None:
                by_len[n] = [[pid], [0] * (j + 1) + [1]]
                continue
            pids, cuts = bucket
            while len(cuts) < j + 2:
                cuts.append(len(pids))
            pids.insert(cuts[j + 1], pid)
            for k in range(j + 1, len(cuts)):
                cuts[k] += 1

    def _reindex(self, order: _Order) -> None:
        self._order = order
        self._index = {}
        key = order.__getitem__
        for pid, n in enumerate(self._lens):
            if n:
                ranked = sorted(self._elements([ord(c) - (0x800 if ord(c) > 0xD800 else 0) for c in self._seqs[pid]]), key=key)
                self._index_item(pid, n, ranked)

    def _rebuild(self) -> None:
        """Re-derive the prefix order from the pool's frequencies and re-index the pool."""
        self._reindex(_Order({e: (f, e) for e, f in self._df.items()}))
        self._next_rebuild = 2 * len(self._texts)
        self.n_rebuilds += 1

    def _fix_order(self, token_lists: list[list[str]]) -> list[list[int]]:
        """Fix the prefix order from the frequencies of a known workload (e.g. all seeds and
        instructions), stop automatic rebuilds, and return the workload's id sequences.
        Only a speed matter: any fixed order gives exact results."""
        freq: dict[int, int] = {}
        all_ids = []
        for tokens in token_lists:
            ids = self._ids(tokens, assign=True)
            all_ids.append(ids)
            for e in self._elements(ids):
                freq[e] = freq.get(e, 0) + 1
        self._reindex(_Order({e: (f, e) for e, f in freq.items()}))
        self._df = None
        self._elems = []
        self._next_rebuild = math.inf
        return all_ids


def rouge_l_dedup(
    instructions: Iterable[str], seeds: Iterable[str] = (), threshold: float = 0.7
) -> list[DedupDecision]:
    """One decision per input instruction, in input order.

    Greedy: ``seeds`` start the pool; each instruction is dropped iff its ROUGE-L F against
    some pool item is > ``threshold``, and is added to the pool otherwise.
    """
    dedup = RougeLDeduplicator(threshold)
    instructions = list(instructions)
    seeds = list(seeds)
    tokens = [rouge_tokenize(s) for s in seeds] + [rouge_tokenize(s) for s in instructions]
    all_ids = dedup._fix_order(tokens)
    for text, ids in zip(seeds, all_ids):
        dedup._insert(text, ids)
    out = []
    for text, ids in zip(instructions, all_ids[len(seeds):]):
        decision, ranked = dedup._decide(ids)
        if decision.kept:
            dedup._insert(text, ids, ranked)
        out.append(decision)
    return out
