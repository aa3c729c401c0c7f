"""The one request path shared by generation, rating and judging.

`run_requests` sends chat requests with a bounded window in flight, retries what may
succeed on a second try (429 honouring Retry-After, 5xx, timeouts, dropped connections)
with exponential backoff and jitter, and appends every outcome to a journal as it arrives.
Requests whose key is already in the journal are not sent again, so a killed run resumes
where it stopped and pays nothing twice. A usage meter stops new requests once a token or
money budget is reached; requests already in flight finish and are kept.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from backends.base import BackendError, ChatBackend, ChatRequest, RequestOutcome
from backends.breaker import CircuitBreaker
from core.records import Journal

log = logging.getLogger(__name__)


@dataclass
class Prices:
    """USD per million tokens."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


@dataclass
class UsageMeter:
    """Tokens and money spent, against optional limits shared by every stage of a run."""

    max_tokens: int | None = None
    max_cost_usd: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    # Requests sent and not yet answered, at their worst case (the Batch API's: a batch is paid
    # for as a whole, so the budget must hold what it may cost before it is submitted).
    reserved_tokens: int = 0
    reserved_cost_usd: float = 0.0

    def add(self, prompt_tokens: int, completion_tokens: int, prices: Prices) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.cost_usd += prices.cost(prompt_tokens, completion_tokens)

    def reserve(self, prompt_tokens: int, completion_tokens: int, prices: Prices) -> tuple[int, float]:
        """Hold a worst case against the limits until `release`; returns the reservation."""
        held = (prompt_tokens + completion_tokens, prices.cost(prompt_tokens, completion_tokens))
        self.reserved_tokens += held[0]
        self.reserved_cost_usd += held[1]
        return held

    def release(self, held: tuple[int, float]) -> None:
        """Give a reservation back (what was really spent is `add`ed)."""
        self.reserved_tokens -= held[0]
        self.reserved_cost_usd = max(0.0, self.reserved_cost_usd - held[1])

    @property
    def exhausted(self) -> bool:
        """True once a limit is reached (what is spent, and what is reserved): no new request may start."""
        tokens = self.prompt_tokens + self.completion_tokens + self.reserved_tokens
        if self.max_tokens is not None and tokens >= self.max_tokens:
            return True
        return self.max_cost_usd is not None and self.cost_usd + self.reserved_cost_usd >= self.max_cost_usd


@dataclass
class RetryPolicy:
    max_retries: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0
    # A whole attempt's deadline. The HTTP client's timeout is per read, so a server that
    # trickles an endless reply would otherwise hold a request (and a run) forever. The default
    # only guarantees an end: far above any real reply (3,072 tokens on a slow CPU take minutes).
    attempt_timeout_s: float | None = 1800.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:  # the server's word wins over our own backoff, within reason
            return min(retry_after, self.max_retry_after_s)
        backoff = min(self.max_delay_s, self.base_delay_s * (2 ** (attempt - 1)))
        return backoff * (0.5 + random.random() / 2)


@dataclass
class RunStats:
    """What one call of run_requests did."""

    sent: int = 0
    reused: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    skipped_for_budget: int = 0
    errors: dict = field(default_factory=dict)
    wall_s: float = 0.0


def error_kind(exc: BackendError) -> str:
    """A short name for what went wrong ("HTTP 503", "APITimeoutError"), without the URL."""
    return exc.kind


async def _within(awaitable, seconds: float | None):
    """Await with a deadline. asyncio.timeout (3.11+) adds no task per request, as wait_for does:
    at hundreds of requests per second that is a measurable share of the client's CPU."""
    if seconds is None:
        return await awaitable
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


async def _send_with_retries(backend: ChatBackend, request: ChatRequest, policy: RetryPolicy, stats: RunStats,
                             breaker: CircuitBreaker | None = None):
    attempt = 0
    started = time.perf_counter()
    kinds: list[str] = []
    while True:
        attempt += 1
        if breaker is not None:
            breaker.check()  # tripped meanwhile: no more attempts at this endpoint
        try:
            try:
                reply = await _within(backend.chat(request), policy.attempt_timeout_s)
            except (TimeoutError, asyncio.TimeoutError):
                raise BackendError(f"no complete reply within {policy.attempt_timeout_s:g} s: AttemptTimeout",
                                   retryable=True) from None
            if breaker is not None:
                breaker.success()
            return reply, attempt, time.perf_counter() - started, None, kinds
        except BackendError as exc:
            kind = error_kind(exc)
            kinds.append(kind)
            stats.errors[kind] = stats.errors.get(kind, 0) + 1
            if breaker is not None:
                breaker.failure(exc)
            if not exc.retryable or attempt > policy.max_retries or (breaker is not None and breaker.tripped):
                return None, attempt, time.perf_counter() - started, str(exc), kinds
            stats.retries += 1
            await asyncio.sleep(policy.delay(attempt, exc.retry_after))


def fault_counts(outcomes: Iterable[RequestOutcome]) -> dict:
    """What the faults behind a set of outcomes cost: requests that failed after their retries,
    and the retries made, in all and by the kind of error that caused each one."""
    failed = 0
    retries_by_kind: dict[str, int] = {}
    final_errors: dict[str, int] = {}
    for outcome in outcomes:
        kinds = list(outcome.attempt_errors)
        if not outcome.ok:
            failed += 1
            # The last failed attempt was not retried: it is why the request failed.
            last = kinds.pop() if kinds else (outcome.error or "unknown").split(": ", 1)[-1]
            final_errors[last] = final_errors.get(last, 0) + 1
        for kind in kinds:
            retries_by_kind[kind] = retries_by_kind.get(kind, 0) + 1
    return {"requests_failed": failed, "failed_by_kind": dict(sorted(final_errors.items())),
            "retries": sum(retries_by_kind.values()), "retries_by_kind": dict(sorted(retries_by_kind.items()))}


async def run_requests_async(
    backend: ChatBackend,
    requests: Iterable[ChatRequest],
    journal: Journal,
    max_in_flight: int = 4,
    policy: RetryPolicy | None = None,
    meter: UsageMeter | None = None,
    prices: Prices | None = None,
    on_outcome: Callable[[RequestOutcome], None] | None = None,
    pool=None,
    breaker: CircuitBreaker | None = None,
) -> tuple[list[RequestOutcome], RunStats]:
    """Send requests not yet in the journal; return every outcome (old and new) in request order.

    Without a `pool`, this call sends through max_in_flight workers of its own. With one (a
    backends.request_loop.RequestPool, shared by the calls on one event loop), the pool's
    workers send its requests, after those of calls that came before it. With a `breaker`
    (backends.breaker, shared by every call to one endpoint), the call raises EndpointError once
    the endpoint has failed too many attempts in a row for a cause retrying cannot fix; what was
    journaled stays.
    The backend is left open: its caller closes it on the loop that used it."""
    policy = policy or RetryPolicy()
    meter = meter or UsageMeter()
    prices = prices or Prices()
    stats = RunStats()
    started = time.perf_counter()
    requests = list(requests)
    outcomes: dict[str, RequestOutcome] = {}
    for request in requests:
        # Failures cost nothing and may succeed now: only successes are reused.
        if request.key in journal:
            entry = journal.get(request.key)
            if entry.get("ok"):
                outcomes[request.key] = RequestOutcome.from_journal(entry)
                stats.reused += 1
    pending = [r for r in requests if r.key not in outcomes]

    async def send(request: ChatRequest) -> None:
        if breaker is not None:
            breaker.check()
        if meter.exhausted:
            stats.skipped_for_budget += 1
            return
        stats.sent += 1
        reply, attempts, latency, error, kinds = await _send_with_retries(backend, request, policy, stats, breaker)
        if reply is not None:
            meter.add(reply.prompt_tokens, reply.completion_tokens, prices)
            stats.succeeded += 1
        else:
            stats.failed += 1
        outcome = (RequestOutcome.replied(request.key, request.meta, reply, attempts, latency, kinds)
                   if reply is not None else
                   RequestOutcome.failed(request.key, request.meta, error, attempts, latency, kinds))
        journal.append(outcome.to_journal())
        outcomes[request.key] = outcome
        if on_outcome:
            on_outcome(outcome)
        if breaker is not None:
            breaker.check()

    if pool is not None:
        await pool.send_all(pending, send)
    else:
        # A fixed pool of workers pulls from one iterator: at most max_in_flight requests are in
        # flight, and memory does not grow with one coroutine per request.
        queue = iter(pending)

        async def worker() -> None:
            for request in queue:
                await send(request)

        workers = [asyncio.create_task(worker()) for _ in range(min(max_in_flight, len(pending)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    stats.wall_s = time.perf_counter() - started
    if stats.skipped_for_budget:
        log.warning("budget reached: %d requests not sent", stats.skipped_for_budget)
    return [outcomes[r.key] for r in requests if r.key in outcomes], stats


def run_requests(backend: ChatBackend, requests: Iterable[ChatRequest], journal: Journal, **kwargs):
    """Synchronous wrapper around run_requests_async, on an event loop of its own (closed with
    the backend's clients for it at the end). A run of many shards uses a RequestLoop instead."""
    async def run_and_close():
        try:
            return await run_requests_async(backend, requests, journal, **kwargs)
        finally:
            await backend.aclose()

    return asyncio.run(run_and_close())
