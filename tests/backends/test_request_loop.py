"""One request loop per run: shards in flight together, one window per endpoint, clients kept
across shards. Against llm-katan (a real OpenAI-compatible server), whose --max-inflight answers
503 to any request past that many at once and --latency-ms holds every reply."""

import pytest

from backends.base import ChatRequest
from backends.openai_compat import OpenAICompatibleBackend
from backends.runner import UsageMeter, run_requests
from backends.config import ModelEndpoint
from core.records import Journal, iter_jsonl
from core.rundir import RunDir
from pipeline.requests import RequestPath, send_shard, send_shards, shards_in_flight


def shards(count: int, size: int) -> list[list[ChatRequest]]:
    return [[ChatRequest(key=f"s{s:02d}-{i}", messages=[{"role": "user", "content": f"shard {s} request {i}"}],
                         max_tokens=8) for i in range(size)] for s in range(count)]


def send_all(url: str, tmp_path, window: int, planned: list[list[ChatRequest]]) -> tuple[list[list[dict]], RunDir]:
    endpoint = ModelEndpoint(backend="openai", model="echo", base_urls=[url], max_in_flight=window, max_retries=0)
    rundir = RunDir(tmp_path / "run").create()
    path = RequestPath(rundir, UsageMeter())
    backend = OpenAICompatibleBackend("echo", [url])
    try:
        return list(send_shards(send_shard, path, backend, endpoint, "generate", planned)), rundir
    finally:
        path.close()


def start_sending(url: str, tmp_path):
    """Ten shards of 2 to a window of 4, started lazily: (endpoint, rundir, path, outcomes)."""
    endpoint = ModelEndpoint(backend="openai", model="echo", base_urls=[url], max_in_flight=4)
    rundir = RunDir(tmp_path / "run").create()
    path = RequestPath(rundir, UsageMeter())
    backend = OpenAICompatibleBackend("echo", [url])
    return endpoint, rundir, path, send_shards(send_shard, path, backend, endpoint, "generate", shards(10, 2))


def test_shards_in_flight_together_stay_within_the_endpoint_window(katan, tmp_path):
    # Shards of 2 with a window of 4: five shards are started at once, ten requests in all,
    # but they share the endpoint's window, so the server never sees more than 4.
    url = katan("--max-inflight", "4", "--latency-ms", "150")
    planned = shards(8, 2)
    assert shards_in_flight(ModelEndpoint(model="echo", max_in_flight=4), 2) == 5
    outcomes, _ = send_all(url, tmp_path, 4, planned)
    assert [[o.key for o in shard] for shard in outcomes] == [[r.key for r in shard] for shard in planned]
    assert all(o.ok for shard in outcomes for o in shard)


def test_the_next_shards_fill_the_window_while_one_drains(katan, tmp_path):
    # The same run against a server that takes only 3 at once: the window of 4 is filled from
    # more than one shard of 2, so the fourth request at a time is refused. (Shards sent one
    # after another would never have more than 2 in flight.)
    url = katan("--max-inflight", "3", "--latency-ms", "150")
    outcomes, _ = send_all(url, tmp_path, 4, shards(8, 2))
    refused = [o for shard in outcomes for o in shard if not o.ok]
    assert refused and all("HTTP 503" in o.error for o in refused)


def test_one_client_serves_every_shard_and_is_closed_with_the_path(katan, tmp_path):
    url = katan()
    endpoint = ModelEndpoint(backend="openai", model="echo", base_urls=[url], max_in_flight=4)
    backend = OpenAICompatibleBackend("echo", [url])
    path = RequestPath(RunDir(tmp_path / "run").create(), UsageMeter())
    first, second = shards(2, 4)
    path.send(backend, endpoint, "generate", first)
    clients = dict(backend._clients)
    path.send(backend, endpoint, "generate", second)
    assert len(clients) == 1 and backend._clients == clients  # the same client, so the same connections
    # A call of run_requests on a loop of its own gets a client of its own, closed at its end.
    with Journal(tmp_path / "other.jsonl") as journal:
        outcomes, _ = run_requests(backend, shards(1, 3)[0], journal, max_in_flight=2)
    assert all(o.ok for o in outcomes) and backend._clients == clients
    path.close()
    assert backend._clients == {}
    assert len(list(iter_jsonl(path.rundir.journal("generate")))) == 8


def test_shards_still_in_flight_when_the_stage_stops_early_are_journaled(katan, tmp_path):
    # A stage that has what it needs after the first shard stops reading: the shards already
    # started are paid for, so they finish and are journaled for a rerun.
    endpoint, rundir, path, sent = start_sending(katan("--latency-ms", "100"), tmp_path)
    try:
        first = next(sent)
        sent.close()
    finally:
        path.close()
    journaled = [entry["key"] for _, entry in iter_jsonl(rundir.journal("generate"))]
    started = shards_in_flight(endpoint, 2) + 1  # the window, and the one started as the first was handed on
    assert [o.key for o in first] == ["s00-0", "s00-1"]
    assert sorted(journaled) == [f"s{s:02d}-{i}" for s in range(started) for i in range(2)]


def test_an_error_in_the_stage_gives_up_the_shards_in_flight(katan, tmp_path):
    # Shards 0 and 1 fill the window of 4; 2 and 3 wait for it. The stage fails on shard 0's
    # outcomes: what is still in flight is cancelled, not waited for, and never journaled.
    _, rundir, path, sent = start_sending(katan("--latency-ms", "400"), tmp_path)
    next(sent)
    with pytest.raises(RuntimeError, match="the stage failed"):
        sent.throw(RuntimeError("the stage failed"))
    path.close()
    journaled = {entry["key"] for _, entry in iter_jsonl(rundir.journal("generate"))}
    assert {"s00-0", "s00-1"} <= journaled <= {"s00-0", "s00-1", "s01-0", "s01-1"}
