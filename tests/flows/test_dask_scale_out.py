"""Request shards on a real Dask cluster give exactly the records of a single-process run.

The teacher and judge are the real embedded llama.cpp server (SmolLM2-135M) at temperature 0:
greedy decoding, one request at a time in llama-cpp-python's server, so every reply is the
same on both runs and any difference would come from the orchestration (lost, duplicated or
reordered shards). Both runs go through the same flow, `distill_pipeline`, once on Prefect's
default runner and once on a `distributed.LocalCluster` of two worker processes.
"""

import json
from pathlib import Path

import pytest

from core.records import iter_jsonl
from flows.pipeline import distill_pipeline

REPO = Path(__file__).resolve().parents[2]
SMALL = ["generate.strategy=self_instruct", "generate.temperature=0", "generate.max_requests=4", "generate.requests_per_shard=1",
         "generate.max_tokens=96", "generate.target_records=1000", "teacher.max_in_flight=1",
         "filter.max_tokens=48", "filter.minhash_dedup=false", "filter.top_k=4"]


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _journal(run_dir: Path, name: str) -> dict[str, dict]:
    entries = [value for _, value in iter_jsonl(run_dir / "work" / f"{name}_requests.jsonl")]
    keys = [entry["key"] for entry in entries]
    assert len(keys) == len(set(keys)), f"{name}: a request journaled twice"
    return {entry["key"]: entry for entry in entries}


def _detached_shard_runs() -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(like_="request-shard-detached")))
    return sum(1 for run in runs if run.state and run.state.is_completed())


@pytest.mark.server
def test_dask_cluster_run_equals_single_process_run(tmp_path):
    config = str(REPO / "configs" / "demo.yaml")
    stages = ["generate", "filter"]
    single = tmp_path / "single"
    distill_pipeline(config, str(single), SMALL, stages=stages)
    on_dask = tmp_path / "dask"
    distill_pipeline(config, str(on_dask), SMALL + ["orchestration.task_runner=dask", "orchestration.dask_workers=2"],
                     stages=stages)

    # Every request once, with the same reply, on both runs.
    for name in ("generate", "rate"):
        one, many = _journal(single, name), _journal(on_dask, name)
        assert sorted(one) == sorted(many)
        assert [one[k]["text"] for k in sorted(one)] == [many[k]["text"] for k in sorted(many)]
    assert len(_journal(single, "generate")) == 4
    # Shards really went through the Dask runner: 4 generation shards and at least one rating shard.
    assert _detached_shard_runs() >= 4 + 1
    # The same records kept, dropped, rated and selected, in the same order.
    for name in ("generated.jsonl", "rejected.jsonl", "rated.jsonl", "filtered.jsonl"):
        assert _lines(single / name) == _lines(on_dask / name), name
    assert _lines(single / "generated.jsonl"), "the teacher kept nothing: the comparison would be empty"
    for stage in stages:
        one = json.loads((single / "stages" / f"{stage}.json").read_text())
        many = json.loads((on_dask / "stages" / f"{stage}.json").read_text())
        for key in ("requests", "kept", "dropped", "rated", "stop_reason", "prompt_tokens", "completion_tokens"):
            assert one.get(key) == many.get(key), (stage, key)
    # Nothing later than the asked-for stages ran.
    assert not (on_dask / "stages" / "finetune.json").exists()
