"""The Batch API's lifecycle through backends.batch: files, batches, status changes, expiry,
partial failure, cancel, and a killed run reattaching, with every result in the same journal an
online request writes.

OpenAI's Batch service cannot be reached from here, so a stand-in server implements its
documented endpoints (tests/batch_standin.py, which says why) and forwards every line to the real
embedded teacher (llama.cpp serving SmolLM2): the replies are real, only the batching is ours.
"""

from __future__ import annotations

import pytest

from backends.base import ChatRequest
from backends.batch import BatchAPI, BatchRunner
from backends.breaker import CircuitBreaker
from backends.openai_compat import OpenAICompatibleBackend
from backends.runner import Prices, RetryPolicy, UsageMeter, run_requests
from batch_standin import BatchStandin
from core.records import Journal

pytestmark = pytest.mark.server

PRICES = Prices(0.075, 0.30)
QUESTIONS = ["Name a colour.", "Name a fruit.", "Name a planet.", "Name a tree."]


class Killed(BaseException):
    """Stands for SIGKILL: nothing of the runner's own clean-up runs on it."""


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from backends.embedded_server import EmbeddedServer

    with EmbeddedServer(log_path=tmp_path_factory.mktemp("teacher") / "llama.log") as server:
        yield server


def requests(n: int = 4) -> list[ChatRequest]:
    return [ChatRequest(key=f"q-{i}", messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                        max_tokens=8, meta={"i": i}) for i in range(n)]


def make_runner(api_url: str, run_dir, sleep=None, meter: UsageMeter | None = None) -> BatchRunner:
    backend = OpenAICompatibleBackend("smollm2-135m-instruct", [api_url])
    api = BatchAPI(backend.sync_client(api_url), api_url, RetryPolicy(max_retries=2, base_delay_s=0.05))
    runner = BatchRunner(backend, api, Journal(run_dir / "q_requests.jsonl"), Journal(run_dir / "q_batches.jsonl"),
                         run_dir / "batches", "q", meter or UsageMeter(), PRICES, CircuitBreaker(16, "test"),
                         poll_s=0.05, max_rounds=3)
    if sleep is not None:
        runner.sleep = sleep
    return runner


def journal_of(runner: BatchRunner) -> dict[str, dict]:
    return {entry["key"]: entry for entry in runner.journal.entries()}


def test_batch_results_are_journaled_as_the_online_path_journals_them(teacher, tmp_path):
    meter = UsageMeter()
    with BatchStandin(teacher.base_url) as api:
        runner = make_runner(api.base_url, tmp_path, meter=meter)
        runner.run(requests())
        assert len(api.created) == 1 and api.lines_per_batch[api.created[0]] == ["q-0", "q-1", "q-2", "q-3"]
    batch = journal_of(runner)
    # The same requests online, greedy, against the same teacher: the same lines, bar latency.
    online_backend = OpenAICompatibleBackend("smollm2-135m-instruct", [teacher.base_url])
    with Journal(tmp_path / "online.jsonl") as journal:
        run_requests(online_backend, requests(), journal, max_in_flight=1)
        online = {entry["key"]: entry for entry in journal.entries()}
    assert list(batch) == list(online)
    for key in batch:
        assert {k: v for k, v in batch[key].items() if k not in ("latency_s", "endpoint")} == \
            {k: v for k, v in online[key].items() if k not in ("latency_s", "endpoint")}
        assert batch[key]["ok"] and batch[key]["text"] and batch[key]["meta"] == {"i": int(key[-1])}
    # Charged at the batch prices as results were collected.
    tokens = sum(e["prompt_tokens"] for e in batch.values()), sum(e["completion_tokens"] for e in batch.values())
    assert (meter.prompt_tokens, meter.completion_tokens) == tokens
    assert meter.cost_usd == pytest.approx(PRICES.cost(*tokens))
    states = [entry["state"] for entry in runner.ledger.entries()]
    assert states == ["collected"]


def test_batch_expiry_resubmits_only_the_requests_without_a_result(teacher, tmp_path):
    with BatchStandin(teacher.base_url, expire_after=2) as api:
        runner = make_runner(api.base_url, tmp_path)
        runner.run(requests())
        first, second = api.created[:2]
        assert api.batches[first]["status"] == "expired"
        assert api.lines_per_batch[second] == ["q-2", "q-3"]  # only what the expired batch did not run
        assert sorted(api.forwarded) == ["q-0", "q-1", "q-2", "q-3"]  # each request run once
    entries = journal_of(runner)
    assert all(entry["ok"] for entry in entries.values())
    assert [entries[k].get("attempt_errors") for k in ("q-0", "q-2")] == [None, ["batch_expired"]]
    assert entries["q-2"]["attempts"] == 2


def test_batch_partial_failure_resubmits_only_the_failed_lines(teacher, tmp_path):
    with BatchStandin(teacher.base_url, fail_once={"q-1"}) as api:
        runner = make_runner(api.base_url, tmp_path)
        runner.run(requests())
        assert [api.lines_per_batch[b] for b in api.created] == [["q-0", "q-1", "q-2", "q-3"], ["q-1"]]
    entries = journal_of(runner)
    assert all(entry["ok"] for entry in entries.values())
    assert entries["q-1"]["attempt_errors"] == ["HTTP 500"] and entries["q-1"]["attempts"] == 2


def test_a_killed_batch_run_reattaches_and_pays_for_nothing_twice(teacher, tmp_path):
    with BatchStandin(teacher.base_url) as api:
        api.hold.set()  # the batch stays in progress while the run is "killed"

        def kill(_seconds):
            raise Killed()

        with pytest.raises(Killed):
            make_runner(api.base_url, tmp_path, sleep=kill).run(requests())
        assert len(api.created) == 1 and not api.cancels  # a kill cancels nothing
        api.hold.clear()
        rerun = make_runner(api.base_url, tmp_path)
        rerun.run(requests())
        assert len(api.created) == 1 and rerun.batches_created == 0  # reattached, nothing submitted again
        assert sorted(api.forwarded) == ["q-0", "q-1", "q-2", "q-3"]
    assert all(entry["ok"] for entry in journal_of(rerun).values()) and len(journal_of(rerun)) == 4


def test_a_batch_whose_id_was_lost_is_found_by_its_input_file(teacher, tmp_path):
    with BatchStandin(teacher.base_url) as api:
        runner = make_runner(api.base_url, tmp_path)
        create = runner.api.create

        def create_then_die(*args, **kwargs):
            create(*args, **kwargs)  # the batch exists; the run dies before the ledger holds its id
            raise Killed()

        runner.api.create = create_then_die
        with pytest.raises(Killed):
            runner.run(requests(2))
        rerun = make_runner(api.base_url, tmp_path)
        rerun.run(requests(2))
        assert len(api.created) == 1 and sorted(api.forwarded) == ["q-0", "q-1"]
    assert all(entry["ok"] for entry in journal_of(rerun).values())


def test_an_interrupted_batch_run_cancels_its_batches_and_the_rerun_resubmits_the_rest(teacher, tmp_path):
    with BatchStandin(teacher.base_url) as api:
        api.hold.set()

        def interrupt(_seconds):
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            make_runner(api.base_url, tmp_path, sleep=interrupt).run(requests(2))
        assert api.cancels == api.created  # Ctrl-C cancelled the batch it was waiting for
        states = {entry["key"]: entry["state"] for entry in make_runner(api.base_url, tmp_path).ledger.entries()}
        assert list(states.values()) == ["cancel_requested"]
        api.hold.clear()
        rerun = make_runner(api.base_url, tmp_path)
        rerun.run(requests(2))
        cancelled, again = api.created
        assert api.batches[cancelled]["status"] == "cancelled"
        assert api.lines_per_batch[again] == ["q-0", "q-1"] and sorted(api.forwarded) == ["q-0", "q-1"]
    assert all(entry["ok"] for entry in journal_of(rerun).values())


def test_batch_waves_keep_within_the_budget(teacher, tmp_path):
    """A money budget that holds a little more than one shard at its worst case: a wave is submitted
    only while the budget can pay for it (the shard that crosses the limit goes, as online), the
    reservations are given back, and the run stops spent, by at most one shard's worst case over."""
    from backends.config import ModelEndpoint
    from core.rundir import RunDir
    from pipeline.requests import RequestPath, by_endpoint_mode, send_shard, send_shards, worst_case_tokens

    with BatchStandin(teacher.base_url) as api:
        endpoint = ModelEndpoint(backend="openai", model="smollm2-135m-instruct", base_urls=[api.base_url],
                                 mode="batch", batch_poll_s=0.05, price_input_per_mtok=1000.0,
                                 price_output_per_mtok=1000.0)
        shards = [requests(8)[i:i + 2] for i in range(0, 8, 2)]
        worst = endpoint.prices().cost(*worst_case_tokens(shards[0]))
        meter = UsageMeter(max_cost_usd=1.2 * worst)
        path = RequestPath(RunDir(tmp_path / "run").create(), meter)
        backend = OpenAICompatibleBackend(endpoint.model, endpoint.base_urls)
        try:
            got = list(send_shards(by_endpoint_mode(send_shard), path, backend, endpoint, "q", iter(shards)))
        finally:
            path.close()
        assert api.lines_per_batch[api.created[0]] == ["q-0", "q-1", "q-2", "q-3"]
        assert meter.reserved_tokens == 0 and meter.reserved_cost_usd == 0
        assert meter.exhausted and meter.cost_usd <= meter.max_cost_usd + worst
        assert sum(len(outcomes) for outcomes in got) == len(api.forwarded) < 8


def test_a_batch_that_fails_validation_stops_the_run_naming_the_batch_and_the_cause(teacher, tmp_path):
    from core.errors import EndpointError

    with BatchStandin(teacher.base_url, served={"gpt-4o-mini"}) as api:
        runner = make_runner(api.base_url, tmp_path)
        with pytest.raises(EndpointError, match=r"batch batch_\d+ \(q-b0001.jsonl\) failed: model_not_found: "
                                                r"The model 'smollm2-135m-instruct' does not exist. \(line 1\)"):
            runner.run(requests(2))
        assert not api.forwarded
    assert [entry["state"] for entry in runner.ledger.entries()] == ["failed"]
    assert len(runner.journal) == 0  # nothing answered, nothing journaled: a rerun sends them again
