"""A token or money budget is never exceeded by more than the requests already in flight.

The real `distill generate` command against llm-katan (echo mode, with latency so that several
requests really are in flight when the budget runs out); a rerun of the spent run sends nothing.
"""

from __future__ import annotations

import json

import pytest

from cli_runs import katan_answered, openai_teacher, read_jsonl, run_distill, run_dir_with_records, write_config

IN_FLIGHT = 4
PRICE_PER_MTOK = 1000.0  # USD, input and output alike: a request of ~650 tokens costs ~0.65 USD


@pytest.mark.parametrize("budget", [{"max_tokens": 4000}, {"max_cost_usd": 4.0}])
def test_budget_is_never_exceeded_by_more_than_the_requests_in_flight(budget, katan, tmp_path):
    url = katan("--latency-ms", "100", "--max-concurrent", "8")
    teacher = openai_teacher(url, max_in_flight=IN_FLIGHT, price_input_per_mtok=PRICE_PER_MTOK,
                             price_output_per_mtok=PRICE_PER_MTOK)
    config = write_config(tmp_path / "budget.yaml", teacher=teacher, budget=budget,
                          generate={"max_requests": 40, "requests_per_shard": 8, "max_tokens": 64})
    command = ("generate", str(config), "--run-dir", str(tmp_path / "run"))
    result = run_distill(*command)
    assert result.returncode == 0, result.stderr[-3000:]

    summary = json.loads((tmp_path / "run" / "stages" / "generate.json").read_text())
    entries = read_jsonl(tmp_path / "run" / "work" / "generate_requests.jsonl")
    assert summary["stop_reason"] == "budget" and summary["requests"] == len(entries) < 40
    per_request = [e["prompt_tokens"] + e["completion_tokens"] for e in entries]
    assert all(e["ok"] for e in entries) and min(per_request) > 0
    spent_tokens = sum(per_request)
    if "max_tokens" in budget:
        spent, limit, most = spent_tokens, budget["max_tokens"], max(per_request)
    else:
        spent, limit, most = spent_tokens * PRICE_PER_MTOK / 1e6, budget["max_cost_usd"], max(per_request) * PRICE_PER_MTOK / 1e6
    assert spent >= limit  # it stopped because the budget was reached...
    assert spent <= limit + IN_FLIGHT * most  # ...and overshot it by at most the requests in flight
    assert summary["prompt_tokens"] + summary["completion_tokens"] == spent_tokens
    answered = katan_answered(url)
    assert answered == len(entries) + 1  # and the preflight's one-token request

    # The budget covers the run, not one process: a rerun of the spent run sends nothing.
    result = run_distill(*command)
    assert result.returncode == 0, result.stderr[-3000:]
    assert katan_answered(url) == answered
    assert read_jsonl(tmp_path / "run" / "work" / "generate_requests.jsonl") == entries


def test_a_rerun_of_a_run_stopped_by_its_budget_keeps_its_records_and_sends_nothing(tmp_path):
    # A scripted teacher (scripted_server.py): the 135M embedded teacher keeps too few records
    # for a short run to show whether any are lost.
    from scripted_server import ScriptedServer, distinct_task

    with ScriptedServer(distinct_task) as teacher:
        config = write_config(tmp_path / "spent.yaml", teacher=openai_teacher(teacher.base_url, max_in_flight=2),
                              budget={"max_tokens": 300},
                              generate={"max_requests": 40, "requests_per_shard": 4, "max_tokens": 64})
        command = ("generate", str(config), "--run-dir", str(tmp_path / "run"))
        assert run_distill(*command).returncode == 0
        first = {name: (tmp_path / "run" / name).read_text() for name in ("generated.jsonl", "rejected.jsonl")}
        summary = json.loads((tmp_path / "run" / "stages" / "generate.json").read_text())
        assert summary["stop_reason"] == "budget" and summary["kept"] >= 2
        sent = teacher.requests

        result = run_distill(*command)
        assert result.returncode == 0, result.stderr[-3000:]
        assert teacher.requests == sent
    assert {name: (tmp_path / "run" / name).read_text() for name in first} == first
    again = json.loads((tmp_path / "run" / "stages" / "generate.json").read_text())
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in summary.items() if k != "seconds"}


def test_a_rerun_of_a_filter_stopped_by_its_budget_keeps_its_ratings_and_sends_nothing(tmp_path):
    # A scripted judge (scripted_server.py) that always gives a readable score, 14 tokens a
    # request by its usage block, so 80 tokens cover some records and not all. The 135M
    # embedded judge scores too erratically for kept records to be compared.
    from scripted_server import ScriptedServer

    run_dir = tmp_path / "run"
    records = run_dir_with_records(run_dir, "Task number {}: name a colour.", 12)
    with ScriptedServer(lambda body: '{"score": 5, "explanation": "fine"}') as judge:
        config = write_config(tmp_path / "spent.yaml", teacher=openai_teacher(judge.base_url, max_in_flight=1),
                              budget={"max_tokens": 80}, filter={"requests_per_shard": 1, "threshold": 4.5})
        command = ("filter", str(config), "--run-dir", str(run_dir))
        result = run_distill(*command)
        assert result.returncode == 0, result.stderr[-3000:]
        first = {name: (run_dir / name).read_text() for name in ("rated.jsonl", "filtered.jsonl")}
        summary = json.loads((run_dir / "stages" / "filter.json").read_text())
        assert 0 < summary["kept"] < len(records)  # the budget stopped it part way
        sent = judge.requests

        result = run_distill(*command)
        assert result.returncode == 0, result.stderr[-3000:]
        assert judge.requests == sent  # every paid rating reused, nothing new sent
    assert {name: (run_dir / name).read_text() for name in first} == first
