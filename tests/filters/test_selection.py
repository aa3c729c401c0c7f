"""Selection at a fixed budget K beyond AlpaGasus (filters/selection.py), on real Alpaca records:
longest-K, random-K and the DEITA-style complexity x quality score, as filter steps on their own
and through the real filter stage (whose judge, where one is asked, is llm-katan in echo mode
with planted scores, as in tests/pipeline/test_filter_stage.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.records import iter_jsonl, write_jsonl
from core.rundir import RunDir
from filters.base import FilterContext
from filters.config import FilterConfig
from filters.registry import enabled_filters
from filters.selection import (
    ComplexityQualityFilter,
    LongestKFilter,
    RandomKFilter,
    instruction_words,
    output_words,
    percentile_scale,
)

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def alpaca(count: int, start: int = 0) -> list[dict]:
    records = json.loads((SHARED_DATA / "alpaca_5000.json").read_text(encoding="utf-8"))
    return [{"id": f"r{start + i}", "instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}
            for i, r in enumerate(records[start:start + count])]


def apply(step, records: list[dict], tmp_path: Path, **settings) -> tuple[list[dict], list[dict], dict]:
    rejected: list[dict] = []
    context = FilterContext(settings=FilterConfig(**settings), work_dir=tmp_path, out_dir=tmp_path,
                            rated_path=tmp_path / "rated.jsonl", cache_dir=None, reject=rejected.append)
    kept = list(step.apply(records, context))
    return kept, rejected, context.summary


def ids(records) -> list[str]:
    return [record["id"] for record in records]


def test_longest_k_keeps_the_k_longest_outputs_in_input_order(tmp_path):
    records = alpaca(300)
    kept, rejected, summary = apply(LongestKFilter(), records, tmp_path, selection="longest_k", top_k=25)

    assert len(kept) == 25 and len(rejected) == 275
    assert ids(kept) == [r["id"] for r in records if r["id"] in set(ids(kept))]  # input order
    shortest_kept = min(output_words(r) for r in kept)
    assert all(drop["output_words"] <= shortest_kept for drop in rejected)
    # The same 25 as sorting by length (ties to the earlier record), independently computed.
    by_length = sorted(range(len(records)), key=lambda i: (-output_words(records[i]), i))[:25]
    assert set(ids(kept)) == {records[i]["id"] for i in by_length}
    drop = rejected[0]
    assert drop["reason"] == "below_longest_k" and drop["k"] == 25 and drop["cutoff_score"] == shortest_kept
    assert drop["record"] == next(r for r in records if r["id"] == drop["id"]) and drop["rank"] > 25
    assert summary["selected"]["pool"] == 300 and summary["selected"]["selection"] == "longest_k"


def test_longest_k_keeps_everything_when_the_pool_is_smaller_than_k(tmp_path):
    records = alpaca(5)
    kept, rejected, _ = apply(LongestKFilter(), records, tmp_path, selection="longest_k", top_k=10)
    assert kept == records and rejected == []


def test_random_k_is_a_seeded_draw(tmp_path):
    records = alpaca(200, start=1000)
    first, rejected, _ = apply(RandomKFilter(), records, tmp_path, selection="random_k", top_k=20)
    again, _, _ = apply(RandomKFilter(), records, tmp_path, selection="random_k", top_k=20)
    other, _, _ = apply(RandomKFilter(), records, tmp_path, selection="random_k", top_k=20, selection_seed=7)

    assert len(first) == 20 and first == again and ids(first) != ids(other)
    assert ids(first) == [r["id"] for r in records if r["id"] in set(ids(first))]  # input order
    assert sorted(ids(first) + ids(rejected)) == sorted(ids(records))
    assert {r["reason"] for r in rejected} == {"not_drawn_random_k"} and rejected[0]["seed"] == 0
    # Not the longest, not the first: a draw over the whole pool.
    assert ids(first) != ids(records[:20])
    assert max(int(i[1:]) for i in ids(first)) - min(int(i[1:]) for i in ids(first)) > 100


def test_percentile_scale_maps_ranks_onto_one_to_six():
    from array import array

    scaled = percentile_scale(array("d", [10, 30, 20, 20, float("nan")]))
    assert list(scaled)[:4] == [1.0, 6.0, 3.5, 3.5] and scaled[4] != scaled[4]
    assert list(percentile_scale(array("d", [4.0]))) == [6.0]


def test_complexity_quality_ranks_by_the_product_of_ranked_complexity_and_score(tmp_path):
    records = alpaca(120, start=2000)
    scores = [(i * 7) % 6 for i in range(len(records))]  # 0..5, as the judge rates
    rated = [{**record, "score": float(score), "explanation": ""} for record, score in zip(records, scores)]
    kept, rejected, summary = apply(ComplexityQualityFilter(), rated, tmp_path, selection="complexity_quality",
                                    top_k=15)

    # Independently: complexity = 1 + 5 x mid-rank place of the instruction's words in the pool.
    words = [instruction_words(r) for r in records]
    ordered = sorted(words)

    def complexity(value: int) -> float:
        below = sum(1 for w in ordered if w < value)
        equal = sum(1 for w in ordered if w == value)
        return 1 + 5 * (below + (equal - 1) / 2) / (len(ordered) - 1)

    product = [complexity(w) * s for w, s in zip(words, scores)]
    best = sorted(range(len(records)), key=lambda i: (-product[i], i))[:15]
    assert set(ids(kept)) == {records[i]["id"] for i in best} and len(kept) == 15
    assert all(r["score"] is not None for r in kept)  # the judge's fields go on (the stage strips them)
    cut = min(product[i] for i in best)
    assert all(drop["complexity_quality"] <= round(cut, 4) + 1e-9 for drop in rejected)
    drop = rejected[0]
    assert drop["reason"] == "below_complexity_quality_k" and 1 <= drop["complexity"] <= 6
    assert "score" not in drop["record"] and drop["score"] == scores[int(drop["id"][1:]) - 2000]
    # A high score on a trivial instruction loses to a good score on a complex one.
    assert summary["selected"]["measure"].startswith("complexity (words")


def test_selection_settings_choose_the_steps_and_the_judge_only_where_a_score_is_needed():
    def names(**settings) -> list[str]:
        return [step.name for step in enabled_filters(FilterConfig(**settings))]

    first = ["decontaminate"]  # on by default, before everything else (filters.decontaminate)
    assert names() == first + ["judge"]
    assert names(selection="top_k", top_k=4) == first + ["judge"]
    assert names(selection="longest_k", top_k=4) == first + ["longest_k"]
    assert names(selection="random_k", top_k=4) == first + ["random_k"]
    assert names(selection="complexity_quality", top_k=4) == first + ["judge", "complexity_quality"]
    assert names(selection="longest_k", top_k=4, minhash_dedup=True) == first + ["minhash_dedup", "longest_k"]
    with pytest.raises(ValidationError, match="selection longest_k needs filter.top_k"):
        FilterConfig(selection="longest_k")
    with pytest.raises(ValidationError, match="complexity_quality needs the judge's scores"):
        FilterConfig(selection="complexity_quality", top_k=3, ifd={"enabled": True, "mode": "instead_of_judge"})
    with pytest.raises(ValidationError, match="filter.complexity ifd needs filter.ifd.enabled"):
        FilterConfig(selection="complexity_quality", top_k=3, complexity="ifd")
    with pytest.raises(ValidationError, match="selection"):
        FilterConfig(selection="longest", top_k=3)


def stage_config(judge_url: str, **filter_settings):
    from backends.config import ModelEndpoint
    from pipeline.config import PipelineConfig

    judge = ModelEndpoint(backend="openai", model="echo", base_urls=[judge_url], max_in_flight=4, max_retries=0)
    return PipelineConfig(name="selection-test", seed_tasks=SHARED_DATA / "seed_tasks.jsonl", teacher=judge,
                          filter=FilterConfig(**filter_settings))


def run_filter(config, root: Path, records: list[dict]) -> tuple[RunDir, dict]:
    from pipeline.session import run_stage_in

    rundir = RunDir(root).create()
    write_jsonl(rundir.generated, records)
    return rundir, run_stage_in(rundir, config, "filter", skip_finished=False).to_json()


def lines(path: Path) -> list[dict]:
    return [value for _, value in iter_jsonl(path)]


@pytest.mark.parametrize("selection", ["longest_k", "random_k"])
def test_judge_free_selections_ask_no_judge_through_the_stage(tmp_path, selection):
    """The judge endpoint is a closed port: a rating request would fail, and none is made."""
    from core.net import free_port

    records = alpaca(40, start=3000)
    config = stage_config(f"http://127.0.0.1:{free_port()}/v1", selection=selection, top_k=6)
    rundir, summary = run_filter(config, tmp_path / "run", records)

    assert not rundir.journal("rate").exists() and summary["judge"] is None and summary["rated"] == 0
    assert summary["prompt_tokens"] == 0 and summary["filters"] == ["decontaminate", selection]
    filtered = lines(rundir.filtered)
    assert len(filtered) == 6 and summary["kept"] == 6 and summary["selection"] == selection
    assert all(set(r) == {"id", "instruction", "input", "output"} for r in filtered)
    rejected = lines(rundir.rejected)
    assert len(rejected) == 34 and sum(summary["dropped"].values()) == 34
    assert summary["selected"]["k"] == 6 and summary["selected"]["pool"] == 40
    if selection == "longest_k":
        assert min(output_words(r) for r in filtered) >= max(output_words(r["record"]) for r in rejected)


def test_complexity_quality_through_the_stage_with_a_real_judge_server(katan, tmp_path):
    """llm-katan echoes the rating prompt, so the planted score at the end of each output is
    what the judge "says": the stage rates every record once, then ranks complexity x score."""
    records = alpaca(12, start=4000)
    planted = [5, 4, 3, 5, 2, None, 4, 1, 5, 3, 4, 0]
    for record, score in zip(records, planted):
        if score is not None:
            record["output"] += "\n" + json.dumps({"score": score, "explanation": "planted"})
    config = stage_config(katan(), selection="complexity_quality", top_k=4, requests_per_shard=5)
    rundir, summary = run_filter(config, tmp_path / "run", records)

    assert len(lines(rundir.journal("rate"))) == 12 and summary["rated"] == 11
    assert summary["filters"] == ["decontaminate", "judge", "complexity_quality"]
    rated = lines(rundir.rated)
    scored = [r for r in rated if r["score"] is not None]
    assert [r["score"] for r in scored] == [s for s in planted if s is not None]
    kept, _, _ = apply(ComplexityQualityFilter(), scored, tmp_path, selection="complexity_quality", top_k=4)
    assert lines(rundir.filtered) == [{k: v for k, v in r.items() if k in ("id", "instruction", "input", "output")}
                                      for r in kept]
    reasons = {r["reason"] for r in lines(rundir.rejected)}
    assert reasons == {"unscored:no_score", "below_complexity_quality_k"}
    assert summary["kept"] == 4 and summary["selection"] == "complexity_quality"
