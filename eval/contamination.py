"""Records against evaluation sets: which copy an evaluation prompt (the rule is
similarity.decontaminate's). Used by `distill decontaminate`, by the filter stage (which
hands the prompts to the decontamination filter step) and by the evaluate stage (how much
of the training data copies the prompts being evaluated on)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from eval.sets import EVAL_SETS, HELDOUT, is_named_set, load_eval_set
from similarity.decontaminate import MIN_WORDS, NGRAM, ROUGE_THRESHOLD, Decontaminator


def prompts_by_set(names: Iterable[str], skip_heldout: bool = True) -> dict[str, list[dict]]:
    """The prompts of each set (a shipped set's name or a JSONL file), by the set's name in
    reports (a file's stem). `heldout` has no prompts of its own before fine-tuning: it is
    skipped, or refused with `skip_heldout` off."""
    by_set: dict[str, list[dict]] = {}
    for name in names:
        if name == HELDOUT:
            if skip_heldout:
                continue
            raise ValueError("'heldout' is a split of a run's own records, not a set to check against; name a "
                             "shipped set (vicuna_80, self_instruct_252) or a JSONL file")
        if not is_named_set(name) and not Path(name).is_file():
            raise ValueError(f"{name}: not a known evaluation set ({', '.join(EVAL_SETS)}) and no such file")
        prompts = load_eval_set(name, Path(HELDOUT))
        if prompts:
            by_set.setdefault(prompts[0]["set"], []).extend(prompts)
    return by_set


def decontaminator(by_set: dict[str, list[dict]], ngram: int = NGRAM, min_words: int = MIN_WORDS,
                   rouge_threshold: float = ROUGE_THRESHOLD) -> Decontaminator:
    """The prompts of every set, indexed for checking records."""
    return Decontaminator([prompt for prompts in by_set.values() for prompt in prompts], ngram=ngram,
                          rouge_threshold=rouge_threshold, min_words=min_words)


def split_contaminated(records: Iterable[dict], checker: Decontaminator) -> tuple[list[dict], list[dict], dict]:
    """(kept records unchanged, in input order; dropped records, each with the evaluation prompt
    it matched; drops per set)."""
    kept, dropped = [], []
    per_set = {prompt["set"]: 0 for prompt in checker.prompts}
    for record in records:
        match = checker.check(record["instruction"], record.get("input", "") or "")
        if match is None:
            kept.append(record)
        else:
            dropped.append({**record, **match.to_json()})
            per_set[match.set] += 1
    return kept, dropped, per_set
