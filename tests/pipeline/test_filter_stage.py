"""The filter stage end to end on a real run directory: the streaming path against the
whole-list selection it replaced, and the IFD pre-filter with the real embedded SmolLM2.

The judge is llm-katan in echo mode (a real OpenAI-compatible server): it answers with the
rating prompt itself, so each record's output ends with a planted ``{"score": X}`` that the
parser reads from the echoed prompt. That gives known, varied scores (ties, an unscored reply,
an out-of-range one) without a model: the rating model is not what these tests are about.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from backends.base import RequestOutcome
from filters.config import FilterConfig
from backends.config import ModelEndpoint
from pipeline.config import PipelineConfig
from core.records import iter_jsonl, write_jsonl
from core.rundir import RunDir
from filters.ifd import IFD_JOURNAL
from pipeline.session import run_stage_in
from filters.rate import apply_ratings
from filters.select import select_by_threshold, select_top_k

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
# Scores planted in the outputs: ties at 5 and 4.5, a reply with no score, one out of range.
PLANTED = [5, 4.5, 4, 3, 4.5, 2, 5, 4.5, None, 7, 1, 4]


def alpaca(count: int, start: int = 0) -> list[dict]:
    records = json.loads((SHARED_DATA / "alpaca_5000.json").read_text(encoding="utf-8"))
    return [{"id": f"r{i}", "instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}
            for i, r in enumerate(records[start:start + count])]


def planted(records: list[dict]) -> list[dict]:
    out = []
    for record, score in zip(records, PLANTED):
        marker = "" if score is None else "\n" + json.dumps({"score": score, "explanation": "planted"})
        out.append({**record, "output": record["output"] + marker})
    return out


def make_config(url: str, **filter_settings) -> PipelineConfig:
    judge = ModelEndpoint(backend="openai", model="echo", base_urls=[url], max_in_flight=4, max_retries=1)
    return PipelineConfig(name="filter-stage-test", seed_tasks=SHARED_DATA / "seed_tasks.jsonl", teacher=judge,
                          filter=FilterConfig(**filter_settings))


def run_filter(config: PipelineConfig, root: Path, records: list[dict] | None = None, **kwargs) -> tuple[RunDir, dict]:
    rundir = RunDir(root).create()
    if records is not None:
        write_jsonl(rundir.generated, records)
    summary = run_stage_in(rundir, config, "filter", skip_finished=False, **kwargs)
    return rundir, summary.to_json()


def lines(path: Path) -> list:
    return [value for _, value in iter_jsonl(path)]


def whole_list_outputs(records: list[dict], journal: Path, config: PipelineConfig) -> dict[str, list]:
    """What the stage wrote before it streamed: every outcome joined at once, selection over
    the whole rated list (filters.select), the same rejection entries."""
    ratings = apply_ratings(records, [RequestOutcome.from_journal(entry) for entry in lines(journal)])
    settings = config.filter
    if settings.selection == "top_k":
        kept, dropped = select_top_k(ratings["rated"], settings.top_k)
    else:
        kept, dropped = select_by_threshold(ratings["rated"], settings.threshold)
    strip = ("score", "explanation", "rating_problem", "judge_reply")
    selection_drops = [{"id": r.get("id"), "stage": "filter", "reason": r["reason"], "score": r.get("score"),
                        "judge_reply": r.get("judge_reply"),
                        "record": {k: v for k, v in r.items() if k not in (*strip, "reason")}} for r in dropped]
    return {"rated": ratings["rated"], "filtered": [{k: v for k, v in r.items() if k not in strip} for r in kept],
            "rejected": ratings["not_rated"] + selection_drops}


@pytest.mark.parametrize("selection", [{"selection": "threshold", "threshold": 4.5},
                                       {"selection": "top_k", "top_k": 4}], ids=["threshold", "top_k"])
def test_streaming_stage_writes_what_whole_list_selection_does(katan, tmp_path, selection):
    records = planted(alpaca(len(PLANTED)))
    # 3 requests a shard: 4 shards, so ratings and selection cross shard boundaries.
    config = make_config(katan(), requests_per_shard=3, **selection)
    rundir, summary = run_filter(config, tmp_path / "run", records)

    expected = whole_list_outputs(records, rundir.journal("rate"), config)
    assert lines(rundir.rated) == expected["rated"]
    assert lines(rundir.filtered) == expected["filtered"]
    assert lines(rundir.stage_rejections("filter")) == expected["rejected"]
    assert lines(rundir.rejected) == expected["rejected"]
    kept_ids = [r["id"] for r in expected["filtered"]]
    if selection["selection"] == "threshold":
        assert kept_ids == ["r0", "r1", "r4", "r6", "r7"]
    else:  # the 4 best: both 5s, then the earliest two 4.5s (ties go to input order)
        assert kept_ids == ["r0", "r1", "r4", "r6"]
    assert summary["kept"] == len(kept_ids) and summary["rated"] == len(PLANTED) - 2
    assert summary["counts"]["unscored:no_score"] == 1 and sum(summary["dropped"].values()) == len(PLANTED) - len(kept_ids)
    examples = json.loads((rundir.root / "score_examples.json").read_text(encoding="utf-8"))
    assert set(examples) == {"1", "2", "3", "4", "4.5", "5", "unscored"}
    assert summary["score_spread"] == {"scored": 10, "distinct_scores": 6, "most_common_score": 4.5,
                                       "most_common_count": 3, "most_common_share": 0.3, "informative": True}


def test_a_judge_that_gives_nearly_every_record_one_score_is_reported(katan, tmp_path):
    """11 of 12 records rated 4.5: the ratings barely rank them, which the stage's summary and
    the report both say (top K would keep a near-random subset)."""
    from pipeline.report import write_report

    records = [{**r, "output": r["output"] + "\n" + json.dumps({"score": 2 if i == 3 else 4.5})}
               for i, r in enumerate(alpaca(12, start=200))]
    rundir, summary = run_filter(make_config(katan(), selection="top_k", top_k=4), tmp_path / "run", records)
    assert summary["score_spread"] == {"scored": 12, "distinct_scores": 2, "most_common_score": 4.5,
                                       "most_common_count": 11, "most_common_share": 0.9167, "informative": False}
    report = write_report(rundir)
    assert report["filter"]["score_spread"]["informative"] is False
    warning = "the filter's judge barely ranks the records: it gave 11 of 12 scored records the score 4.5"
    assert warning in (rundir.root / "report.md").read_text()
    assert warning.replace("'", "&#x27;") in (rundir.root / "report.html").read_text()


def test_stage_errors_name_file_and_line_and_leave_outputs_alone(katan, tmp_path):
    config = make_config(katan())
    rundir, _ = run_filter(config, tmp_path / "run", planted(alpaca(4)))
    before = {p: p.read_bytes() for p in (rundir.rated, rundir.filtered, rundir.rejected)}
    with rundir.generated.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "bad", "instruction": "x", "output": 3}) + "\n")
    with pytest.raises(ValueError, match=r"generated.jsonl:5: field 'output' must be a string"):
        run_filter(config, tmp_path / "run")
    assert {p: p.read_bytes() for p in before} == before


IFD = {"enabled": True, "max_length": 48, "batch_size": 4, "threads": 1}


def test_ifd_before_judge_rates_only_what_ifd_keeps_and_a_rerun_recomputes_nothing(katan, tmp_path,
                                                                                  student_cache_dir):
    records = planted(alpaca(6, start=100))
    config = make_config(katan(), ifd={**IFD, "mode": "before_judge", "keep_fraction": 0.5})
    rundir, summary = run_filter(config, tmp_path / "run", records, cache_dir=student_cache_dir)

    assert summary["ifd"]["computed"] == 6 and summary["ifd"]["reused"] == 0
    cached = lines(rundir.work / IFD_JOURNAL)
    # A record whose prompt leaves no room for its answer within max_length has no IFD (None).
    assert len(cached) == 6 and all(entry["ifd"] is None or math.isfinite(entry["ifd"]) for entry in cached)
    ifd_drops = [r for r in lines(rundir.rejected) if r["reason"].startswith("ifd_")]
    rated_ids = [r["id"] for r in lines(rundir.rated)]
    # keep_fraction 0.5 of 6: the judge saw exactly 3 records, the other 3 are rejections with their IFD.
    assert len(rated_ids) == 3 and len(lines(rundir.journal("rate"))) == 3
    assert sorted(rated_ids + [r["id"] for r in ifd_drops]) == sorted(r["id"] for r in records)
    kept_ifd = {r["id"]: r["ifd"] for r in lines(rundir.rated)}
    for drop in ifd_drops:  # unscored, below the cut, or at/above 1 (misaligned): never above a kept one
        assert (drop["reason"] == "ifd_unscored") == (drop["ifd"] is None)
        assert drop["ifd"] is None or drop["ifd"] >= 1 or drop["ifd"] <= min(kept_ifd.values())
        assert drop["record"]["id"] == drop["id"] and "ifd" not in drop["record"]
    assert summary["ifd"]["kept"] == 3 and summary["ifd"]["unscored"] == sum(e["ifd"] is None for e in cached)
    assert sum(count for reason, count in summary["dropped"].items() if reason.startswith("ifd_")) == 3
    assert all("ifd" not in r for r in lines(rundir.filtered))
    outputs = {p: p.read_bytes() for p in (rundir.rated, rundir.filtered, rundir.rejected)}
    journal_size = (rundir.work / IFD_JOURNAL).stat().st_size

    _, again = run_filter(config, tmp_path / "run", cache_dir=student_cache_dir)
    assert again["ifd"]["computed"] == 0 and again["ifd"]["reused"] == 6  # the model was not even loaded
    assert (rundir.work / IFD_JOURNAL).stat().st_size == journal_size
    assert {p: p.read_bytes() for p in outputs} == outputs


def test_ifd_instead_of_judge_selects_by_ifd_alone(katan, tmp_path, student_cache_dir):
    import torch

    from filters.ifd import ifd_scores, load_ifd_model, select_by_ifd

    torch.set_num_threads(1)
    records = alpaca(6, start=200)
    config = make_config(katan(), ifd={**IFD, "mode": "instead_of_judge", "top_k": 2})
    rundir, summary = run_filter(config, tmp_path / "run", records, cache_dir=student_cache_dir)

    assert not rundir.journal("rate").exists() and summary["judge"] is None and summary["rated"] == 0
    # An independent scoring of the same records with the same model picks the same two.
    model, tokenizer = load_ifd_model("embedded", student_cache_dir)
    scores = ifd_scores(records, model, tokenizer, max_length=48, batch_size=4)
    expected_kept, _ = select_by_ifd(records, scores, top_k=2)
    assert lines(rundir.filtered) == expected_kept
    assert [r["ifd"] for r in lines(rundir.rated)] == pytest.approx([s.ifd for s in scores], rel=1e-4)
    assert summary["kept"] == 2 and summary["selection"] == "ifd" and summary["histogram"] is None
    rejected = lines(rundir.rejected)
    assert len(rejected) == 4 and dict(Counter(r["reason"] for r in rejected)) == summary["dropped"]


def test_records_past_the_budget_are_kept_out_as_not_rated(katan, tmp_path):
    from backends.config import BudgetConfig

    records = planted(alpaca(len(PLANTED)))
    config = make_config(katan(), requests_per_shard=3, threshold=4.5)
    # The first reply alone spends more than one token: only the requests already in flight
    # then (at most the judge's window of 4, from the first shards) are sent.
    config = config.model_copy(update={"budget": BudgetConfig(max_tokens=1)})
    rundir, summary = run_filter(config, tmp_path / "run", records)

    journaled = {entry["meta"]["id"] for entry in lines(rundir.journal("rate"))}
    assert {"r0", "r1", "r2"} <= journaled and len(journaled) <= 4  # the first shard starts whole
    assert [r["id"] for r in lines(rundir.rated)] == [r["id"] for r in records if r["id"] in journaled]
    not_rated = [r for r in lines(rundir.rejected) if r["reason"] == "not_rated:budget"]
    assert [r["id"] for r in not_rated] == [r["id"] for r in records if r["id"] not in journaled]
    assert summary["counts"]["not_rated:budget"] == len(PLANTED) - len(journaled) and summary["kept"] == 2


def test_ifd_settings_are_validated():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="keep_fraction or filter.ifd.top_k, not both"):
        FilterConfig(ifd={"enabled": True, "keep_fraction": 0.1, "top_k": 5})
    with pytest.raises(ValidationError, match="mode"):
        FilterConfig(ifd={"mode": "after_judge"})
    with pytest.raises(ValidationError, match="keep_fraction"):
        FilterConfig(ifd={"keep_fraction": 1.5})
    assert FilterConfig().ifd.enabled is False and FilterConfig().requests_per_shard == 256


def test_a_missing_ifd_model_directory_is_named(katan, tmp_path):
    from core.errors import StageInputError

    config = make_config(katan(), ifd={**IFD, "model": str(tmp_path / "no-such-model")})
    with pytest.raises(StageInputError, match=r"filter.ifd.model: .*no-such-model is not a model directory"):
        run_filter(config, tmp_path / "run", planted(alpaca(3)))
    assert not (tmp_path / "run" / "filtered.jsonl").exists() and not (tmp_path / "run" / "rejected.jsonl").exists()


def test_several_shards_in_flight_give_the_same_files(katan, tmp_path):
    """The windowed sender (what the flow uses on Dask) hands outcomes back shard by shard, in
    order, with several shards out at once; here its workers are threads of this process."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.requests import WindowedShardSender, send_detached

    records = planted(alpaca(len(PLANTED)))
    config = make_config(katan(), requests_per_shard=2, selection="top_k", top_k=5)
    plain, _ = run_filter(config, tmp_path / "plain", records)
    with ThreadPoolExecutor(max_workers=3) as pool:
        # Each shard gets its own copy of the backend, pickled as Dask ships it to a worker.
        sender = WindowedShardSender(lambda *args: pool.submit(send_detached, *pickle.loads(pickle.dumps(args))),
                                     window=3)
        windowed, summary = run_filter(config, tmp_path / "windowed", records, send=sender)

    def comparable(entry: dict) -> dict:  # an echo reply carries its time: compare all but the reply text
        return {k: v for k, v in entry.items() if k != "judge_reply"}

    for name in ("rated.jsonl", "filtered.jsonl", "rejected.jsonl"):
        assert [comparable(e) for e in lines(windowed.root / name)] == [comparable(e) for e in lines(plain.root / name)]
    assert len(lines(windowed.journal("rate"))) == len(PLANTED) and summary["kept"] == 5
