"""Near-duplicate removal with MinHash LSH (datasketch), for corpora too large for pairwise work.

Each text becomes a set of word shingles: the text is lower-cased, split into words
(maximal runs of Unicode word characters), and every run of ``shingle_size`` consecutive
words is one shingle. A text with fewer words than that is one shingle of all its words; a
text with no words at all is the single empty shingle, so empty texts are duplicates of
each other and of nothing else.

Two texts are near duplicates when the Jaccard similarity of their shingle sets, as
estimated by ``num_perm``-permutation MinHash sketches, is strictly greater than
``threshold``. The decision is greedy in input order, like ``filters.semantic_dedup``:
a text is compared only with the texts kept before it, and the first of a group survives.

Only texts kept so far are inserted into the LSH index, and a text is compared only with
the kept texts the index returns for it (those sharing at least one LSH band), so the work
per text does not grow with the corpus. The index is probabilistic: a pair above the
threshold is occasionally not returned (a missed duplicate), and candidates below it are
filtered out by the estimated Jaccard. Since a false candidate costs one sketch comparison
but a miss lets a duplicate through, the bands are tuned by default to weigh misses nine
times as much as false candidates (datasketch's own default weighs them equally, which
misses about 30% of pairs at Jaccard 0.85 for a threshold of 0.8). With the defaults
(threshold 0.8, 128 permutations: 14 bands of 9 rows) a pair at Jaccard 0.85 is missed
with probability about 2.5%, one at 0.9 about 0.1%. Everything is seeded (``seed`` fixes
the permutations; the shingles are hashed with SHA-1), so a run gives the same result on
any machine and in any process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from datasketch import MinHash, MinHashLSH

from filters.base import keep_or_reject

if TYPE_CHECKING:
    from filters.base import FilterContext, Records
    from filters.config import FilterConfig

__all__ = ["MinHashDedupResult", "word_shingles", "minhash_dedup"]

_WORD_RE = re.compile(r"\w+")

# The datasketch 2.x default, named so that a future default change cannot alter results.
_SCHEME = "affine32"


@dataclass(frozen=True)
class MinHashDedupResult:
    """The decision for one input text.

    Attributes:
        index: position of the text in the input.
        kept: False when the text is a near duplicate of an earlier kept text.
        nearest_index: input position of the kept text with the highest estimated Jaccard
            among the candidates the LSH index returned (the lowest position on ties), or
            None when it returned none. For a kept text this is only a hint: kept texts
            that share no LSH band with it are never looked at.
        jaccard: the estimated Jaccard similarity with ``nearest_index`` (a multiple of
            ``1 / num_perm``), or None together with it.
    """

    index: int
    kept: bool
    nearest_index: int | None
    jaccard: float | None


def word_shingles(text: str, shingle_size: int = 3) -> set[str]:
    """The set of word shingles of ``text`` (see the module docstring for the rules)."""
    if shingle_size < 1:
        raise ValueError(f"shingle_size must be at least 1, got {shingle_size}")
    words = _WORD_RE.findall(text.lower())
    if len(words) <= shingle_size:
        return {" ".join(words)}
    return {" ".join(words[i:i + shingle_size]) for i in range(len(words) - shingle_size + 1)}


def _sketches(texts: Sequence[str], num_perm: int, seed: int, shingle_size: int) -> Iterator[MinHash]:
    """One MinHash per text, lazily, all sharing the same seeded permutations."""
    template = MinHash(num_perm=num_perm, seed=seed, scheme=_SCHEME)
    for text in texts:
        sketch = template.copy()
        # Sorted so the update order, too, is fixed (the minimum does not depend on it).
        sketch.update_batch([shingle.encode("utf-8") for shingle in sorted(word_shingles(text, shingle_size))])
        yield sketch


def minhash_dedup(
    texts: Sequence[str],
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle_size: int = 3,
    seed: int = 1,
    *,
    lsh_weights: tuple[float, float] = (0.1, 0.9),
) -> list[MinHashDedupResult]:
    """Greedy MinHash-LSH near-duplicate removal in input order; one result per text.

    Args:
        texts: the texts, in the order that decides which copy survives.
        threshold: estimated Jaccard similarity of the shingle sets above which a text is
            a near duplicate; strictly between 0 and 1. It also tunes the LSH bands.
        num_perm: permutations per MinHash sketch; more means a finer estimate, more
            memory (4 bytes each per kept text) and more time.
        shingle_size: words per shingle. Smaller values are more tolerant of reworded
            texts; 1 compares bags of words.
        seed: seed of the permutations. Results are reproducible for a given seed.
        lsh_weights: (false candidate, missed pair) weights that datasketch uses to pick
            the LSH bands; they must sum to 1. More weight on misses means fewer missed
            duplicates and more candidates to compare.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold}")
    if num_perm < 2:
        raise ValueError(f"num_perm must be at least 2, got {num_perm}")
    if shingle_size < 1:
        raise ValueError(f"shingle_size must be at least 1, got {shingle_size}")

    index = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=lsh_weights)
    kept_sketches: dict[int, MinHash] = {}
    results: list[MinHashDedupResult] = []

    for position, sketch in enumerate(_sketches(texts, num_perm, seed, shingle_size)):
        nearest, best = None, None
        for candidate in sorted(index.query(sketch)):  # ascending: the earliest wins ties
            estimate = sketch.jaccard(kept_sketches[candidate])
            if best is None or estimate > best:
                nearest, best = candidate, estimate
        kept = best is None or not best > threshold
        if kept:
            index.insert(position, sketch)
            kept_sketches[position] = sketch
        results.append(MinHashDedupResult(position, kept, nearest, best))

    return results


class MinHashDedupFilter:
    """`filter.minhash_dedup`: MinHash-LSH near-duplicates of instruction + input dropped, before
    anything is paid for (for corpora too large for pairwise work)."""

    name = "minhash_dedup"
    description = "MinHash LSH over word shingles: near-duplicate instructions dropped before rating"
    removes_duplicates = True

    def enabled(self, settings: "FilterConfig") -> bool:
        return settings.minhash_dedup

    def apply(self, records: "Records", context: "FilterContext") -> list[dict]:
        records = list(records)  # dedup compares records with each other, so it holds them
        settings = context.settings
        texts = [f"{r['instruction']}\n{r.get('input', '')}" for r in records]
        results = minhash_dedup(texts, settings.minhash_threshold, settings.minhash_num_perm,
                                settings.minhash_shingle_size)
        return keep_or_reject(records, results, context, "minhash_duplicate", lambda decision: {
            "nearest": records[decision.nearest_index].get("id"), "jaccard": decision.jaccard})
