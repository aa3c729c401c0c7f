"""How stages send model requests: shards over the run's one request loop, journaled under
the run directory, with several shards in flight (or on a Dask cluster), and the budget the
run has already spent."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import sys
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from backends.base import ChatBackend, ChatRequest, RequestOutcome
from backends.breaker import CircuitBreaker, window_for
from backends.config import ModelEndpoint
from backends.registry import endpoint_identity
from backends.request_loop import RequestLoop
from backends.runner import RetryPolicy, UsageMeter, run_requests
from core.records import Journal
from core.rundir import RunDir
from pipeline.config import PipelineConfig

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger(__name__)


def retry_policy(endpoint: ModelEndpoint) -> RetryPolicy:
    """The endpoint's retries. The client's `timeout_s` bounds each wait for data; a whole attempt
    may take twice that, so a reply that trickles in forever (each read in time) is cut off too,
    while a plain timeout is still reported as the client's."""
    return RetryPolicy(max_retries=endpoint.max_retries, attempt_timeout_s=2 * endpoint.timeout_s)


def circuit_breaker(endpoint: ModelEndpoint) -> CircuitBreaker:
    """A new circuit breaker for the endpoint, named as reports name it (no key)."""
    return CircuitBreaker(window_for(endpoint.breaker_window, endpoint.max_in_flight), endpoint_identity(endpoint))


class RequestPath:
    """Sends shards of requests through the shared runner, journaled under the run directory,
    on one event loop for the whole run (backends.request_loop, opened on the first shard):
    clients and connections last from shard to shard, and shards in flight together share
    each endpoint's window."""

    def __init__(self, rundir: RunDir, meter: UsageMeter):
        self.rundir = rundir
        self.meter = meter
        self._journals: dict[str, Journal] = {}
        self._loop: RequestLoop | None = None
        # One circuit breaker per backend, shared by every shard sent to it in this run.
        self._breakers: dict[int, tuple[ChatBackend, CircuitBreaker]] = {}
        self._batch_runners: dict[str, object] = {}
        self._closing: list[Callable[[], None]] = []

    def breaker(self, backend: ChatBackend, endpoint: ModelEndpoint) -> CircuitBreaker:
        """The circuit breaker of the endpoint behind `backend` for this run."""
        if id(backend) not in self._breakers:
            self._breakers[id(backend)] = (backend, circuit_breaker(endpoint))
        return self._breakers[id(backend)][1]

    def batch_runner(self, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str):
        """The Batch API runner of one journal (backends.batch), with its ledger beside the journal."""
        if journal_name not in self._batch_runners:
            from backends.batch import BatchAPI, BatchRunner

            client = backend.sync_client(backend.base_url)
            self._closing.append(client.close)
            ledger = Journal(self.rundir.work / f"{journal_name}_batches.jsonl")
            self._closing.append(ledger.close)
            self._batch_runners[journal_name] = BatchRunner(
                backend, BatchAPI(client, backend.base_url, retry_policy(endpoint)), self.journal(journal_name),
                ledger, self.rundir.work / "batches", journal_name, self.meter, endpoint.prices(),
                self.breaker(backend, endpoint), max_lines=endpoint.batch_max_requests, poll_s=endpoint.batch_poll_s,
                max_rounds=1 + endpoint.max_retries)
        return self._batch_runners[journal_name]

    def journal(self, name: str) -> Journal:
        if name not in self._journals:
            self._journals[name] = Journal(self.rundir.journal(name))
        return self._journals[name]

    def submit(self, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
               requests: list[ChatRequest]) -> "ShardInFlight":
        """Start one shard: its requests go out while this or any later shard is `finish`ed."""
        journal = self.journal(journal_name)
        if self._loop is None:
            self._loop = RequestLoop()
        task = self._loop.submit(backend, requests, journal, max_in_flight=endpoint.max_in_flight,
                                 policy=retry_policy(endpoint), meter=self.meter, prices=endpoint.prices(),
                                 breaker=self.breaker(backend, endpoint))
        return ShardInFlight(self._loop, task, journal_name)

    @staticmethod
    def finish(shard: "ShardInFlight") -> list[RequestOutcome]:
        """Wait for a started shard; its outcomes (reused from the journal where present)."""
        outcomes, stats = shard.loop.result(shard.task)
        log.info("%s shard: %d sent, %d reused, %d failed, %d retries", shard.journal_name,
                 stats.sent, stats.reused, stats.failed, stats.retries)
        return outcomes

    def send(self, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
             requests: list[ChatRequest]) -> list[RequestOutcome]:
        """Send one shard; return its outcomes (reused from the journal where present)."""
        return self.finish(self.submit(backend, endpoint, journal_name, requests))

    def close(self) -> None:
        """Stop the request loop (cancelling what is in flight) and close the journals."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()
        for close in self._closing:
            close()
        self._closing.clear()
        self._batch_runners.clear()
        for journal in self._journals.values():
            journal.close()
        self._journals.clear()


@dataclasses.dataclass
class ShardInFlight:
    """A shard started on the run's request loop."""

    loop: RequestLoop
    task: asyncio.Task
    journal_name: str

    def cancel(self) -> None:
        self.task.cancel()


SendShard = Callable[[RequestPath, ChatBackend, ModelEndpoint, str, list[ChatRequest]], list[RequestOutcome]]


def shards_in_flight(endpoint: ModelEndpoint, shard_size: int) -> int:
    """Enough shards started to fill the endpoint's window twice, and one more. The loop pauses
    while the stage absorbs a shard; the replies that arrived meanwhile free their workers all
    at once, and each must find a request waiting, or its connection idles (and the HTTP pool
    probes every idle connection on each request: bench/bench_request_path.py)."""
    return min(128, -(-2 * endpoint.max_in_flight // max(1, shard_size)) + 1)


def in_shard_order(start: Callable[[list[ChatRequest]], object], finish: Callable[[object], list[RequestOutcome]],
                   shards: Iterable[list[ChatRequest]], window: Callable[[list[ChatRequest]], int],
                   exhausted: Callable[[], bool]) -> Iterator[list[RequestOutcome]]:
    """Keep up to `window(first shard)` shards started and yield each one's outcomes (`finish`)
    in shard order. No shard starts once the budget is `exhausted`. If the consumer stops early
    (its target reached), the shards in flight are finished, since they are paid for; on an
    error or interrupt they are cancelled where the future allows it."""
    planned = iter(shards)
    in_flight: collections.deque = collections.deque()
    size: int | None = None

    def start_next() -> bool:
        nonlocal size
        if exhausted():
            return False
        shard = next(planned, None)
        if shard is None:
            return False
        if size is None:
            size = window(shard)
        in_flight.append(start(shard))
        return True

    finished = False
    try:
        if start_next():
            while len(in_flight) < size and start_next():
                pass
        while in_flight:
            outcomes = finish(in_flight.popleft())
            start_next()
            yield outcomes
        finished = True
    finally:
        stopped_early = not finished and sys.exc_info()[0] in (None, GeneratorExit)
        while in_flight:
            handle = in_flight.popleft()
            if stopped_early:
                finish(handle)
            elif callable(getattr(handle, "cancel", None)):
                handle.cancel()


class PipelinedSender:
    """Sends a stage's shards with several in flight (`shards_in_flight`) on the run's request
    loop, so the endpoint's window stays full across shard boundaries. Each reply is journaled
    as it arrives, so a killed run loses only the requests in flight.

    `finish(path, shard)` waits for a started shard's outcomes: `RequestPath.finish` itself, or
    a Prefect task run around it (the flow's), so that every shard is a task run of its own."""

    def __init__(self, finish: Callable[[RequestPath, ShardInFlight], list[RequestOutcome]] | None = None):
        self.finish = finish or (lambda path, shard: path.finish(shard))

    def __call__(self, path: RequestPath, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
                 requests: list[ChatRequest]) -> list[RequestOutcome]:
        """One shard, waited for."""
        return self.finish(path, path.submit(backend, endpoint, journal_name, requests))

    def send_many(self, path: RequestPath, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
                  shards: Iterable[list[ChatRequest]]) -> Iterator[list[RequestOutcome]]:
        """Yield each shard's outcomes in shard order, with several shards in flight."""
        return in_shard_order(lambda shard: path.submit(backend, endpoint, journal_name, shard),
                              lambda started: self.finish(path, started), shards,
                              lambda first: shards_in_flight(endpoint, len(first)), lambda: path.meter.exhausted)


# The plain (orchestrator-free) way to send shards, in this process.
send_shard = PipelinedSender()


def send_shards(send: SendShard, path: RequestPath, backend: ChatBackend, endpoint: ModelEndpoint,
                journal_name: str, shards: Iterable[list[ChatRequest]]) -> Iterator[list[RequestOutcome]]:
    """Send shards and yield each shard's outcomes, in shard order. A sender with a `send_many`
    method (`PipelinedSender`, the default; `WindowedShardSender` on a Dask cluster) keeps
    several in flight; any other `send` sends one shard after another. The stages consume
    outcomes shard by shard either way, so memory stays bounded and decisions are taken in
    request order."""
    send_many = getattr(send, "send_many", None)
    if send_many is not None:
        yield from send_many(path, backend, endpoint, journal_name, shards)
        return
    for shard in shards:
        if path.meter.exhausted:
            return
        yield send(path, backend, endpoint, journal_name, shard)


def worst_case_tokens(requests: Iterable[ChatRequest]) -> tuple[int, int]:
    """(prompt, completion) tokens the requests may cost at most: the prompt at one token a byte (no
    tokenizer makes more) and 64 for the chat template (a default system prompt included), every
    reply at its max_tokens."""
    prompt = completion = 0
    for request in requests:
        prompt += sum(len(str(m.get("content", "")).encode("utf-8")) for m in request.messages) + 64
        completion += request.max_tokens
    return prompt, completion


class BatchSender:
    """Sends a batch-mode endpoint's shards through the Batch API (backends.batch), in waves.

    A wave is every shard the stage plans (or `batch_wave_requests` worth), pulled before any is
    answered: it goes out as batch files, and its outcomes come back, shard by shard in order, once
    all its batches are done. Generation plans until `generate.max_requests` while nothing is
    absorbed, so a wave asks for all of them; its target is checked as the outcomes are absorbed,
    and a further wave is planned only when the target was not reached (replies past the target
    are paid for and left unused, as with shards sent ahead online). Each request's worst case
    (`worst_case_tokens`) is reserved against the budget while its wave is out, so no wave is
    submitted that the budget could not pay; what was really spent is charged as results arrive.
    Everything goes through the run's journals, so a rerun reuses every result (see
    backends.batch for reattaching to the batches of a killed run)."""

    def __call__(self, path: RequestPath, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
                 requests: list[ChatRequest]) -> list[RequestOutcome]:
        return next(iter(self.send_many(path, backend, endpoint, journal_name, [requests])), [])

    def send_many(self, path: RequestPath, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
                  shards: Iterable[list[ChatRequest]]) -> Iterator[list[RequestOutcome]]:
        runner = path.batch_runner(backend, endpoint, journal_name)
        journal = path.journal(journal_name)
        prices = endpoint.prices()
        planned = iter(shards)
        ended = False
        while not ended:
            wave: list[list[ChatRequest]] = []
            held: list[tuple[int, float]] = []
            size = 0
            try:
                while not path.meter.exhausted and (endpoint.batch_wave_requests is None
                                                    or size < endpoint.batch_wave_requests):
                    shard = next(planned, None)
                    if shard is None:
                        ended = True
                        break
                    wave.append(shard)
                    size += len(shard)
                    pending = [r for r in shard if not (r.key in journal and journal.get(r.key).get("ok"))]
                    held.append(path.meter.reserve(*worst_case_tokens(pending), prices))
                if not wave:
                    return
                runner.run([request for shard in wave for request in shard])
            finally:
                for reservation in held:
                    path.meter.release(reservation)
            for shard in wave:
                yield [RequestOutcome.from_journal(journal.get(r.key)) for r in shard if r.key in journal]


send_batches = BatchSender()


class ByEndpointMode:
    """A stage's shard sender: shards to a batch-mode endpoint go through the Batch API
    (`BatchSender`), all others through `send` (in process, Prefect task runs, or Dask)."""

    def __init__(self, send: SendShard):
        self.send = send

    def __call__(self, path: RequestPath, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
                 requests: list[ChatRequest]) -> list[RequestOutcome]:
        send = send_batches if endpoint.mode == "batch" else self.send
        return send(path, backend, endpoint, journal_name, requests)

    def send_many(self, path: RequestPath, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
                  shards: Iterable[list[ChatRequest]]) -> Iterator[list[RequestOutcome]]:
        if endpoint.mode == "batch":
            return send_batches.send_many(path, backend, endpoint, journal_name, shards)
        return send_shards(self.send, path, backend, endpoint, journal_name, shards)


def by_endpoint_mode(send: SendShard) -> ByEndpointMode:
    """`send`, routing batch-mode endpoints to the Batch API (once, however often it is applied)."""
    return send if isinstance(send, ByEndpointMode) else ByEndpointMode(send)


class _ShardMemory:
    """The journal interface of run_requests over a dict: a detached shard journals nothing itself."""

    def __init__(self):
        self._entries: dict[str, dict] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> dict:
        return self._entries[key]

    def append(self, entry: dict) -> None:
        self._entries[entry["key"]] = entry


def send_detached(backend: ChatBackend, endpoint: ModelEndpoint, requests: list[ChatRequest],
                  max_in_flight: int) -> list[RequestOutcome]:
    """Send a shard anywhere (a Dask worker) and return its outcomes; the caller journals them.
    Only picklable things go in and come out, and nothing is written where it runs."""
    outcomes, stats = run_requests(
        backend, requests, _ShardMemory(), max_in_flight=max_in_flight,
        policy=retry_policy(endpoint), prices=endpoint.prices(), breaker=circuit_breaker(endpoint),
    )
    log.info("detached shard: %d sent, %d failed, %d retries", stats.sent, stats.failed, stats.retries)
    return outcomes


class WindowedShardSender:
    """Keeps up to `window` shards in flight through `submit` (a Prefect task's `.submit` on the
    Dask runner) and hands their outcomes back in shard order.

    Workers only send; this process, which holds the run directory, reuses replies already in
    the journal, appends the new ones and charges the budget. So the journal stays one file with
    one writer, and a run on a cluster decides exactly what a run in one process decides. At most
    `window * per_shard_in_flight` requests are in flight across all workers. The budget is
    checked before each shard is submitted, so a run may overshoot it by the shards in flight.
    """

    def __init__(self, submit: Callable, window: int, max_requests_in_flight: int | None = None):
        self.submit = submit
        self.window = window
        self.max_requests_in_flight = max_requests_in_flight

    def shard_window(self, endpoint: ModelEndpoint) -> tuple[int, int]:
        """(shards in flight, requests in flight per shard) under the global cap."""
        per_shard = endpoint.max_in_flight
        shards = self.window
        if self.max_requests_in_flight is not None:
            per_shard = min(per_shard, self.max_requests_in_flight)
            shards = max(1, min(shards, self.max_requests_in_flight // per_shard))
        return shards, per_shard

    def __call__(self, path: RequestPath, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
                 requests: list[ChatRequest]) -> list[RequestOutcome]:
        """One shard, the same way (for callers that send shard by shard)."""
        return next(iter(self.send_many(path, backend, endpoint, journal_name, [requests])), [])

    def send_many(self, path: RequestPath, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
                  shards: Iterable[list[ChatRequest]]) -> Iterator[list[RequestOutcome]]:
        """Yield each shard's outcomes in shard order, with up to the window of shards in flight."""
        journal = path.journal(journal_name)
        prices = endpoint.prices()
        window, per_shard = self.shard_window(endpoint)

        def start(shard):
            # Only successes are reused, as in run_requests: a failure may succeed now.
            reused = {}
            for request in shard:
                if request.key in journal:
                    entry = journal.get(request.key)
                    if entry.get("ok"):
                        reused[request.key] = RequestOutcome.from_journal(entry)
            pending = [r for r in shard if r.key not in reused]
            return shard, reused, (self.submit(backend, endpoint, pending, per_shard) if pending else None)

        def collect(handle) -> list[RequestOutcome]:
            shard, reused, future = handle
            fresh = {}
            for outcome in (future.result() if future is not None else []):
                journal.append(outcome.to_journal())
                if outcome.ok:
                    path.meter.add(outcome.prompt_tokens, outcome.completion_tokens, prices)
                fresh[outcome.key] = outcome
            log.info("%s shard: %d sent, %d reused", journal_name, len(fresh), len(reused))
            return [reused.get(r.key) or fresh[r.key] for r in shard if r.key in reused or r.key in fresh]

        # On an error or interrupt the shards in flight are left to the journal's next run.
        return in_shard_order(start, collect, shards, lambda first: window, lambda: path.meter.exhausted)


class ReplayedSpend:
    """On a rerun, the budget meets the journaled replies' spend again as each one is reused, in
    request order. Counting it all up front would stop a resumed run before its first shard and
    leave it nothing to keep; replayed, a rerun stops where the uninterrupted run stopped."""

    def __init__(self, path: RequestPath, endpoint: ModelEndpoint, journal_name: str):
        self.meter = path.meter
        self.prices = endpoint.prices()
        self.pending = {e["key"]: (e.get("prompt_tokens", 0), e.get("completion_tokens", 0))
                        for e in path.journal(journal_name).entries() if e.get("ok")}
        for prompt_tokens, completion_tokens in self.pending.values():
            self.meter.add(-prompt_tokens, -completion_tokens, self.prices)

    def replay(self, keys: Iterable[str]) -> None:
        """Charge again the journaled replies among these keys (new ones are charged as they come)."""
        for key in keys:
            if key in self.pending:
                self.meter.add(*self.pending.pop(key), self.prices)

    def charging(self, send: SendShard) -> SendShard:
        """`send`, charging each shard's journaled replies before the runner decides what to send, as
        the first run had been charged for them by then; it then skips what the first run skipped.
        A sender that keeps several shards in flight is charged as it takes each shard to send."""
        return _ChargedSender(send, self)

    def charged(self, shards: Iterable[list[ChatRequest]]) -> Iterator[list[ChatRequest]]:
        for shard in shards:
            self.replay(r.key for r in shard)
            yield shard

    def settle(self) -> None:
        """Charge what was journaled but not reused (replies past the target), for the stages after."""
        for prompt_tokens, completion_tokens in self.pending.values():
            self.meter.add(prompt_tokens, completion_tokens, self.prices)
        self.pending.clear()


class _ChargedSender:
    """A sender whose shards are charged their journaled spend before they are sent."""

    def __init__(self, send: SendShard, spend: ReplayedSpend):
        self.send = send
        self.spend = spend
        if hasattr(send, "send_many"):
            self.send_many = lambda path, backend, endpoint, journal_name, shards: send.send_many(
                path, backend, endpoint, journal_name, spend.charged(shards))

    def __call__(self, path: RequestPath, backend: ChatBackend, endpoint: ModelEndpoint, journal_name: str,
                 requests: list[ChatRequest]) -> list[RequestOutcome]:
        self.spend.replay(r.key for r in requests)
        return self.send(path, backend, endpoint, journal_name, requests)


def usage_so_far(rundir: RunDir, config: PipelineConfig) -> UsageMeter:
    """A meter holding the tokens and money already spent by this run (read from its journals)."""
    meter = UsageMeter(config.budget.max_tokens, config.budget.max_cost_usd)
    endpoints = {"generate": config.teacher, "rate": config.judge_endpoint,
                 "teacher_answers": config.teacher, "teacher_first_token": config.teacher,
                 "judge": config.judge_endpoint}
    for name, endpoint in endpoints.items():
        path = rundir.journal(name)
        if path.is_file():
            with Journal(path) as journal:
                for entry in journal.entries():
                    if entry.get("ok"):
                        meter.add(entry.get("prompt_tokens", 0), entry.get("completion_tokens", 0), endpoint.prices())
    return meter


def stop_if_nothing_answered(stage: str, endpoint: ModelEndpoint, journal: "Path", failed: int,
                             failed_by_kind: dict | None = None) -> None:
    """A stage that kept nothing because its requests failed stops (StageFailed, a non-zero exit)
    naming the endpoint and why, instead of finishing with nothing for the next stage to read."""
    from core.errors import StageFailed

    kinds = ", ".join(f"{kind} x{count}" for kind, count in (failed_by_kind or {}).items())
    raise StageFailed(
        f"{stage}: nothing kept: {failed} request(s) to {endpoint_identity(endpoint)} failed after their retries"
        + (f" ({kinds})" if kinds else "") + f"; each is listed in {journal}. The stage is not marked finished: "
        "fix the endpoint and rerun the same command, which reuses every reply already received")


def tokens_of(outcomes: list[RequestOutcome]) -> dict:
    """Prompt and completion tokens of the answered requests among `outcomes`."""
    ok = [o for o in outcomes if o.ok]
    return {"prompt_tokens": sum(o.prompt_tokens for o in ok),
            "completion_tokens": sum(o.completion_tokens for o in ok)}
