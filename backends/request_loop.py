"""One event loop for a whole run, driven by whoever waits for a shard.

`run_requests` opens an event loop per call, and with it new HTTP clients and connections:
at a shard boundary every connection is closed and opened again, and the window in flight
drains to nothing before the next shard starts. A RequestLoop keeps one loop (so one client
and one pool of connections per endpoint) for every shard of a run. Shards are started
ahead (`submit`) and the loop runs while their caller waits for one (`result`): the next
shards' requests fill the window as the last one drains, and what the caller does between
waits (parsing, filtering, deduplicating a shard) costs the requests in flight nothing but a
short pause, since the server keeps working on them.

The loop has no thread of its own on purpose: a second thread would fight the stage's own
Python work for the GIL, and at hundreds of requests a second that costs more CPU than it saves
(bench/bench_request_path.py). Shards to the same backend share one pool of `max_in_flight` workers
(RequestPool), so shards in flight together never put more requests than that on the server,
and the oldest shard's requests go first.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Awaitable, Callable, Iterable

from backends.base import ChatBackend, ChatRequest, RequestOutcome
from backends.runner import RunStats, run_requests_async
from core.records import Journal


class RequestPool:
    """`size` workers sending the requests of any number of calls on one event loop, first come
    first served: a shard's requests all go before the next shard's, and never more than `size`
    are in flight in all."""

    def __init__(self, size: int):
        self.size = size
        self._queue: asyncio.Queue | None = None
        self._workers: list[asyncio.Task] = []

    async def send_all(self, requests: list[ChatRequest], send: Callable[[ChatRequest], Awaitable[None]]) -> None:
        """Have every request sent (`send` records its outcome); return when all are. If this
        is cancelled, its requests not yet taken by a worker are dropped from the queue."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._workers = [asyncio.create_task(self._work()) for _ in range(self.size)]
        loop = asyncio.get_running_loop()
        done = [loop.create_future() for _ in requests]
        for request, future in zip(requests, done):
            self._queue.put_nowait((request, send, future))
        try:
            await asyncio.gather(*done)
        finally:
            for future in done:
                future.cancel()  # no-op for those done; the workers skip the rest

    async def _work(self) -> None:
        while True:
            request, send, future = await self._queue.get()
            try:
                if not future.done():
                    await send(request)
                    if not future.done():
                        future.set_result(None)
            except Exception as exc:  # the call's own error (a full disk, say): its caller sees it
                if not future.done():
                    future.set_exception(exc)
            # An idle worker must not keep its last shard alive: `send` holds that call's outcomes.
            request = send = future = None


class RequestLoop:
    """An event loop that sends shards of requests (see the module's docstring)."""

    def __init__(self):
        self._loop = asyncio.new_event_loop()
        self._driving = threading.Lock()  # one thread runs the loop at a time
        # One pool per backend and window; the backend is kept here, so its id stays its own.
        self._pools: dict[tuple[int, int], tuple[ChatBackend, RequestPool]] = {}

    def submit(self, backend: ChatBackend, requests: Iterable[ChatRequest], journal: Journal,
               max_in_flight: int, **kwargs) -> asyncio.Task:
        """Start a shard; it is sent while any shard's `result` is awaited. The task's result is
        run_requests_async's (outcomes, stats)."""
        if self._loop.is_closed():
            raise RuntimeError("the request loop is closed")
        key = (id(backend), max_in_flight)
        if key not in self._pools:
            self._pools[key] = (backend, RequestPool(max_in_flight))
        pool = self._pools[key][1]
        return self._loop.create_task(
            run_requests_async(backend, requests, journal, max_in_flight=max_in_flight, pool=pool, **kwargs))

    def result(self, shard: asyncio.Task) -> tuple[list[RequestOutcome], RunStats]:
        """Run the loop until the shard is done (the shards started after it go on meanwhile)
        and return its result. If the wait is interrupted, the shard is cancelled: what was
        journaled stays, its requests in flight are given up."""
        if not self._driving.acquire(blocking=False):
            raise RuntimeError("the request loop is already running in another thread")
        try:
            return self._loop.run_until_complete(shard)
        except BaseException:
            shard.cancel()
            raise
        finally:
            self._driving.release()

    def close(self) -> None:
        """Cancel whatever is still started, close every backend's clients on this loop (the
        connections belong to it) and close the loop. Safe to call twice."""
        if self._loop.is_closed():
            return
        with self._driving:
            self._loop.run_until_complete(self._shut_down())
            self._loop.close()

    async def _shut_down(self) -> None:
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        backends = {id(backend): backend for backend, _ in self._pools.values()}
        for backend in backends.values():
            await backend.aclose()

    def __enter__(self) -> "RequestLoop":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
