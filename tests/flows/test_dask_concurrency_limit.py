"""A Prefect global concurrency limit caps the requests in flight of shards on a Dask cluster.

The flow runs on a real `distributed.LocalCluster` of two worker processes, sending to llm-katan's
echo server (a real OpenAI-compatible server, with latency so that requests overlap) through a
small counting proxy of the test's own: the proxy is the one place that sees the requests of
every worker at once. Without the limit, two workers each sending a shard of 2 have 4 in
flight; the limit allows 2.
"""

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.errors import StageInputError
from flows.pipeline import distill_pipeline

REPO = Path(__file__).resolve().parents[2]


class CountingProxy:
    """Forwards POSTs to the upstream server and records the most requests open at once."""

    def __init__(self, upstream: str):
        self.lock = threading.Lock()
        self.open = 0
        self.most_open = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with proxy.lock:
                    proxy.open += 1
                    proxy.most_open = max(proxy.most_open, proxy.open)
                try:
                    request = urllib.request.Request(upstream.rstrip("/") + self.path.removeprefix("/v1"), data=body,
                                                     headers={"Content-Type": "application/json",
                                                              "Authorization": self.headers["Authorization"]})
                    with urllib.request.urlopen(request, timeout=60) as response:
                        reply = response.read()
                finally:
                    with proxy.lock:
                        proxy.open -= 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_global_concurrency_limit_caps_requests_across_workers(katan, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    proxy = CountingProxy(katan("--latency-ms", "400", "--max-concurrent", "64"))
    config = tmp_path / "capped.yaml"
    config.write_text(
        f"name: capped\nseed_tasks: {REPO / 'data' / 'seed_tasks.jsonl'}\n"
        f"teacher:\n  backend: openai\n  model: echo\n  base_urls: ['{proxy.url}']\n  max_in_flight: 2\n"
        "generate:\n  max_requests: 12\n  requests_per_shard: 2\n  max_tokens: 32\n"
        "orchestration:\n  task_runner: dask\n  dask_workers: 2\n  shards_in_flight: 3\n"
    )
    limited = ["orchestration.concurrency_limit=distill-test-teacher"]
    try:
        # A name with no limit behind it stops the run before any request.
        with pytest.raises(StageInputError, match="prefect gcl create distill-test-teacher"):
            distill_pipeline(str(config), str(tmp_path / "missing"), limited, stages=["generate"])
        assert proxy.most_open == 0

        distill_pipeline(str(config), str(tmp_path / "free"), [], stages=["generate"])
        assert proxy.most_open > 2  # the workers do overlap without the limit
        proxy.most_open = 0

        with get_client(sync_client=True) as client:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="distill-test-teacher", limit=2))
        distill_pipeline(str(config), str(tmp_path / "run"), limited, stages=["generate"])
    finally:
        proxy.close()
    summary = json.loads((tmp_path / "run" / "stages" / "generate.json").read_text())
    assert summary["requests"] == 12 and summary["requests_failed"] == 0
    assert 1 <= proxy.most_open <= 2
