"""The windowed shard sender the Dask runner uses: outcomes in shard order, each request
journaled once by the run's own process, the global cap on requests in flight held, and
replies of shards sent ahead kept for a rerun when the stage stops early.

Shards go to a real OpenAI-compatible server (llm-katan echo, with latency so that requests
overlap). The executor is a thread pool instead of a Dask cluster: what is under test is the
sender's windowing and journaling, which is the same whatever runs `submit`; the Dask path
itself is tested end to end in test_dask_scale_out.py.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

from backends.base import ChatRequest
from backends.openai_compat import OpenAICompatibleBackend
from backends.runner import UsageMeter
from backends.config import ModelEndpoint
from core.rundir import RunDir
from pipeline.requests import RequestPath, WindowedShardSender, send_detached, send_shards


class CountingBackend:
    """Where the shards go (the server's URL), and a count of requests in flight across threads."""

    def __init__(self, url: str):
        self.url = url
        self.identity = f"echo@{url}"
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0


def _shards(count: int, size: int) -> list[list[ChatRequest]]:
    return [[ChatRequest(key=f"r-{s:02d}-{i:02d}", messages=[{"role": "user", "content": f"shard {s} item {i}"}],
                         max_tokens=16) for i in range(size)] for s in range(count)]


def _sender(pool, submitted, window, cap):
    def submit(backend, endpoint, requests, per_shard):
        submitted.append([r.key for r in requests])
        # A backend per shard, as on a Dask worker (each gets its own unpickled copy).
        return pool.submit(send_detached, CountingProxy(backend), endpoint, requests, per_shard)

    return WindowedShardSender(submit, window, cap)


class CountingProxy:
    """A fresh real backend per shard over the shared counter (httpx clients belong to one loop)."""

    def __init__(self, counting: CountingBackend):
        self.counting = counting
        self.backend = OpenAICompatibleBackend("echo", [counting.url])
        self.identity = counting.identity

    async def chat(self, request):
        with self.counting.lock:
            self.counting.in_flight += 1
            self.counting.most_in_flight = max(self.counting.most_in_flight, self.counting.in_flight)
        try:
            return await self.backend.chat(request)
        finally:
            with self.counting.lock:
                self.counting.in_flight -= 1

    async def aclose(self):
        await self.backend.aclose()


def test_window_order_cap_and_early_stop(katan, tmp_path):
    url = katan("--latency-ms", "150", "--max-concurrent", "64")
    endpoint = ModelEndpoint(backend="openai", model="echo", base_urls=[url], max_in_flight=3)
    backend = CountingBackend(url)
    path = RequestPath(RunDir(tmp_path / "run").create(), UsageMeter())
    shards = _shards(8, 3)
    submitted: list[list[str]] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        # Cap 7 with 3 per shard: 2 shards (6 requests) in flight, never the window's 4.
        sender = _sender(pool, submitted, window=4, cap=7)
        assert sender.shard_window(endpoint) == (2, 3)
        received = []
        for outcomes in send_shards(sender, path, backend, endpoint, "generate", shards):
            received.append([o.key for o in outcomes])
            if len(received) == 3:
                break  # the stage has what it needs (its target), with shards still in flight
        assert received == [[r.key for r in shard] for shard in shards[:3]]
        assert 1 < backend.most_in_flight <= 6
        journal = path.journal("generate")
        sent_ahead = len(submitted)
        assert sent_ahead == 5  # shards 0-2 handed over, 3-4 in flight when the stage stopped
        assert len(journal) == 3 * sent_ahead  # the shards sent ahead are kept, not lost

        # A rerun over the same shards sends only what is not in the journal yet.
        submitted.clear()
        again = [[o.key for o in outcomes]
                 for outcomes in send_shards(sender, path, backend, endpoint, "generate", shards)]
    assert again == [[r.key for r in shard] for shard in shards]
    assert submitted == [[r.key for r in shard] for shard in shards[sent_ahead:]]
    keys = [entry["key"] for entry in journal.entries()]
    assert len(keys) == len(set(keys)) == 24
    path.close()
