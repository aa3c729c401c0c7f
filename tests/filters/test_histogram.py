"""Tests for filters.histogram."""

from __future__ import annotations

import math
import random
import stat

import pytest

from filters.histogram import (
    UNSCORED,
    per_score_examples,
    score_bin,
    score_bin_counts,
    score_histogram_png,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = ["0", "0.5", "1", "1.5", "2", "2.5", "3", "3.5", "4", "4.5", "5", UNSCORED]


def assert_valid_png(path):
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (800, 450)


def test_score_bins():
    cases = {0: "0", 0.2: "0", 0.25: "0.5", 4: "4", 4.24: "4", 4.25: "4.5", 4.5: "4.5",
             4.74: "4.5", 4.75: "5", 5: "5", 7: "5", -1: "0", None: UNSCORED, math.nan: UNSCORED,
             "4": UNSCORED, True: UNSCORED}
    for score, label in cases.items():
        assert score_bin(score) == label, score


def test_bin_counts_list_every_bin_in_order():
    counts = score_bin_counts([5, 4.5, 4.5, None, 3, 0, float("nan")])
    assert list(counts) == LABELS
    assert counts["5"] == 1 and counts["4.5"] == 2 and counts["3"] == 1 and counts["0"] == 1
    assert counts[UNSCORED] == 2 and sum(counts.values()) == 7
    assert set(score_bin_counts([]).values()) == {0}


@pytest.mark.parametrize(
    "scores, threshold",
    [([5, 4.5, 4.5, 4, 3, None, 2.5, 0, 1], 4.5), ([], None), ([None, None], 4.5), ([5] * 1000, 0)],
)
def test_png_is_written_atomically(tmp_path, scores, threshold):
    target = tmp_path / "reports" / "scores.png"  # the folder is created
    assert score_histogram_png(scores, target, threshold=threshold) == target
    assert_valid_png(target)
    assert [p.name for p in target.parent.iterdir()] == ["scores.png"]  # no temporary file left
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_png_replaces_an_existing_file(tmp_path):
    target = tmp_path / "scores.png"
    target.write_bytes(b"old")
    score_histogram_png([4, 5], target, threshold=4.5, title="Rerun")
    assert_valid_png(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.png"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    target = tmp_path / "scores.png"
    target.write_bytes(b"old chart")

    def broken_savefig(self, *args, **kwargs):
        args[0].write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        score_histogram_png([4, 5], target)
    assert target.read_bytes() == b"old chart"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.png"]


def rated_records(count: int = 60) -> list[dict]:
    values = [None, 0, 1, 2, 3, 3.5, 4, 4.5, 5, 4.3]
    return [{"id": i, "instruction": f"task {i}", "output": f"answer {i}", "score": values[i % len(values)]}
            for i in range(count)]


def test_examples_per_score():
    records = rated_records()
    examples = per_score_examples(records, per_bin=2)
    assert list(examples) == ["0", "1", "2", "3", "3.5", "4", "4.5", "5", UNSCORED]
    assert all(len(chosen) == 2 for chosen in examples.values())
    for label, chosen in examples.items():
        assert all(score_bin(record["score"]) == label for record in chosen)
        assert all(any(record is r for r in records) for record in chosen)  # the input dicts
        positions = [records.index(record) for record in chosen]
        assert positions == sorted(positions)  # listed in input order
    # 4.5 and 4.3 share a bin; 12 records are in it, 6 of each.
    assert {r["score"] for r in per_score_examples(records, per_bin=12)["4.5"]} == {4.5, 4.3}


def test_examples_do_not_depend_on_input_order():
    records = rated_records()
    shuffled = records[:]
    random.Random(5).shuffle(shuffled)
    first = per_score_examples(records, per_bin=3)
    second = per_score_examples(shuffled, per_bin=3)
    assert first.keys() == second.keys()
    for label in first:
        assert sorted(r["id"] for r in first[label]) == sorted(r["id"] for r in second[label])
    # ... and are not simply the first records of each bin.
    assert any([r["id"] for r in chosen] != [r["id"] for r in records if score_bin(r["score"]) == label][:3]
               for label, chosen in first.items())


def test_examples_edge_cases():
    assert per_score_examples([]) == {}
    assert per_score_examples(rated_records(), per_bin=0)["5"] == []
    same = [{"instruction": "x", "score": 5}, {"instruction": "x", "score": 5}]
    assert per_score_examples(same, per_bin=1)["5"][0] is same[0]  # equal records: input order
    with pytest.raises(ValueError):
        per_score_examples([], per_bin=-1)
