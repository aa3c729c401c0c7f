#!/usr/bin/env python
"""Benchmark: the shared request path (backends.runner) against a bare openai client.

Every variant talks to llm-katan in echo mode (a real third-party OpenAI-compatible server
that answers at once), started here as a subprocess on a free port of 127.0.0.1 with -w 2
uvicorn workers (--workers); its CPU use is measured too, to show it is not the bottleneck.

(a) bare:     asyncio + openai.AsyncOpenAI(max_retries=0) with its default transport, a
              semaphore of --in-flight, one task per request.
(b) project:  run_requests_async(OpenAICompatibleBackend(...)) with a Journal in a temp dir,
              max_in_flight=--in-flight, the same N requests.
    Diagnostics (off with --no-diagnostics), to locate any gap between (a) and (b):
(d1) bare-httpx:     (a) on a legacy httpx.AsyncClient, the transport OpenAICompatibleBackend
                     builds; (b)/(d1) is the runner's own overhead.
(d2) project-httpx2: (b) with the backend's client built on httpx2 (openai's own transport),
                     i.e. the proposed fix, defined here as a subclass (backends/ is untouched).
    After one warm-up run each, the variants are interleaved --repeats times (the order rotates
    each round) and medians are reported; the target is (b) >= 90% of (a). Client CPU seconds
    per request (this process only) are printed too: the least noisy measure of a path's cost
    on a machine where client and server share the cores.
(c) memory: --memory-n requests (default 20,000) through (b) in one call; RSS (psutil) is
    sampled every --sample-every completed requests from on_outcome, and the growth from
    request --flat-from to the last is compared with --flat-mb. Afterwards the returned
    outcomes are dropped (gc + malloc_trim) to show how much of the growth they held.

Usage:  python bench/bench_request_path.py [--n 1000] [--in-flight 64] [--repeats 5]
            [--workers 2] [--memory-n 20000] [--no-diagnostics] [--skip-throughput] [--skip-memory]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import httpx2  # noqa: E402
import openai  # noqa: E402
import psutil  # noqa: E402

from backends.base import ChatRequest  # noqa: E402
from backends.openai_compat import OpenAICompatibleBackend  # noqa: E402
from backends.runner import RetryPolicy, run_requests_async  # noqa: E402
from distill.records import Journal  # noqa: E402

MODEL = "echo"
# Retries only matter if the server misbehaves; in echo mode without faults there are none.
POLICY = RetryPolicy(max_retries=3, base_delay_s=0.01, max_delay_s=0.1)


# ----------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def katan_command(port: int, workers: int, stats_file: str) -> list[str]:
    katan = Path(sys.executable).parent / "llm-katan"
    return [str(katan), "-m", "echo", "-b", "echo", "-p", str(port), "-h", "127.0.0.1",
            "--disable-dashboard", "--stats-file", stats_file, "--log-level", "warning",
            "--max-concurrent", "1024", "-w", str(workers)]


def start_katan(workers: int, stats_file: str) -> tuple[subprocess.Popen, str, list[str]]:
    port = free_port()
    command = katan_command(port, workers, stats_file)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llm-katan exited with {process.returncode}: {' '.join(command)}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return process, f"http://127.0.0.1:{port}/v1", command
        except OSError:
            time.sleep(0.3)
    process.terminate()
    raise RuntimeError("llm-katan did not start in 60 s")


def tree_cpu_s(process: subprocess.Popen) -> float:
    """CPU seconds (user + system) used so far by the server: its process and uvicorn's workers."""
    total = 0.0
    try:
        root = psutil.Process(process.pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def stop_katan(process: subprocess.Popen) -> None:
    # Only the server we started (its own session/process group: uvicorn's workers included).
    try:
        os.killpg(process.pid, 15)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(timeout=5)


# ----------------------------------------------------------------------------- workload
def make_requests(n: int, prefix: str) -> list[ChatRequest]:
    return [ChatRequest(key=f"{prefix}-{i:06d}",
                        messages=[{"role": "user", "content": f"Write one sentence about topic number {i}."}],
                        max_tokens=32, meta={"i": i}) for i in range(n)]


def bare_client(url: str, in_flight: int, legacy_httpx: bool) -> openai.AsyncOpenAI:
    if legacy_httpx:
        # What OpenAICompatibleBackend._client builds: a legacy `httpx` client handed to openai.
        limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
        return openai.AsyncOpenAI(api_key="not-needed", base_url=url, max_retries=0, timeout=120.0,
                                  http_client=httpx.AsyncClient(limits=limits, timeout=120.0))
    # The plain client: openai's own default transport (httpx2); the semaphore bounds connections.
    return openai.AsyncOpenAI(api_key="not-needed", base_url=url, max_retries=0, timeout=120.0)


async def run_bare(url: str, requests: list[ChatRequest], in_flight: int,
                   legacy_httpx: bool = False) -> tuple[float, float, int]:
    """Bare baseline: one AsyncOpenAI client, a semaphore, one task per request."""
    client = bare_client(url, in_flight, legacy_httpx)
    semaphore = asyncio.Semaphore(in_flight)
    failures = 0

    async def one(request: ChatRequest):
        nonlocal failures
        async with semaphore:
            try:
                response = await client.chat.completions.create(
                    model=MODEL, messages=request.messages, max_tokens=request.max_tokens,
                    temperature=request.temperature, top_p=request.top_p)
                return response.choices[0].message.content
            except openai.OpenAIError:
                failures += 1
                return None

    cpu0, wall0 = time.process_time(), time.perf_counter()
    replies = await asyncio.gather(*(one(r) for r in requests))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await client.close()
    assert len(replies) == len(requests)
    return wall, cpu, failures


class Httpx2Backend(OpenAICompatibleBackend):
    """The proposed fix, for comparison only: the backend's client on openai's own httpx2 transport."""

    def _client(self, url: str) -> openai.AsyncOpenAI:
        if url not in self._clients:
            limits = httpx2.Limits(max_connections=self._max_connections,
                                   max_keepalive_connections=self._max_connections)
            self._clients[url] = openai.AsyncOpenAI(
                api_key=self._api_key, base_url=url, timeout=self._timeout_s, max_retries=0,
                http_client=openai.DefaultAsyncHttpx2Client(limits=limits, timeout=self._timeout_s))
        return self._clients[url]


async def run_project(url: str, requests: list[ChatRequest], in_flight: int, journal_path: Path,
                      on_outcome=None, backend_class=OpenAICompatibleBackend) -> tuple[float, float, int, list[dict]]:
    backend = backend_class(MODEL, [url], max_connections=in_flight)
    with Journal(journal_path) as journal:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        outcomes, stats = await run_requests_async(backend, requests, journal, max_in_flight=in_flight,
                                                   policy=POLICY, on_outcome=on_outcome)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert len(outcomes) == len(requests) and stats.sent == len(requests), (len(outcomes), stats)
    return wall, cpu, stats.failed, outcomes


# ----------------------------------------------------------------------------- memory
def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def memory_run(url: str, n: int, in_flight: int, every: int, tmp: Path, shard: int | None = None) -> dict:
    """n requests through the project's path: one call (shard=None), or calls of `shard` requests
    on one journal whose outcomes are dropped after each call (as distill/stages.py sends shards)."""
    name = f"mem-{shard or 'one'}"
    requests = make_requests(n, name)
    journal_path = tmp / f"{name}.jsonl"
    gc.collect()
    samples: list[tuple[int, float]] = [(0, rss_mb())]
    done = 0

    def on_outcome(entry: dict) -> None:
        nonlocal done
        done += 1
        if done % every == 0:
            samples.append((done, rss_mb()))

    wall = cpu = 0.0
    failed = 0
    outcomes: list[dict] = []
    for first in range(0, n, shard or n):
        outcomes = []  # the previous shard's outcomes are dropped before the next is sent
        w, c, f, outcomes = asyncio.run(run_project(url, requests[first:first + (shard or n)], in_flight,
                                                    journal_path, on_outcome))
        wall, cpu, failed = wall + w, cpu + c, failed + f
    gc.collect()
    after_return = rss_mb()
    del outcomes
    gc.collect()
    malloc_trim()
    after_drop = rss_mb()
    return {"samples": samples, "wall": wall, "cpu": cpu, "failed": failed,
            "after_return": after_return, "after_drop": after_drop,
            "journal_bytes": journal_path.stat().st_size}


def report_memory(title: str, mem: dict, args, rows: list) -> bool:
    print(f"\n[{title}]")
    for done, rss in mem["samples"]:
        print(f"    {done:6d} done  RSS {rss:8.1f} MB")
    by_done = dict(mem["samples"])
    start_key = min((d for d in by_done if d >= args.flat_from), default=0)
    end_key = max(by_done)
    growth = by_done[end_key] - by_done[start_key]
    per_req = growth * 2**20 / max(1, end_key - start_key)
    flat = growth <= args.flat_mb
    print(f"    {args.memory_n / mem['wall']:.0f} req/s, failed {mem['failed']}, "
          f"journal {mem['journal_bytes'] / 2**20:.1f} MB on disk")
    print(f"    growth {start_key} -> {end_key}: {growth:+.1f} MB ({per_req:.0f} bytes/request) -> "
          f"{'flat' if flat else 'NOT flat'} (limit {args.flat_mb:g} MB)")
    print(f"    RSS after return {mem['after_return']:.1f} MB; after dropping the returned outcomes "
          f"(gc + malloc_trim) {mem['after_drop']:.1f} MB ({mem['after_drop'] - mem['after_return']:+.1f} MB)")
    rows.append((title, f"{by_done[start_key]:.1f} / {by_done[end_key]:.1f} MB",
                 f"**{growth:+.1f} MB** ({per_req:.0f} B/req)", "flat" if flat else "NOT flat",
                 f"{mem['after_drop'] - mem['after_return']:+.1f} MB"))
    return flat


def trace_growth(url: str, n: int, in_flight: int, tmp: Path, top: int = 8) -> None:
    """Which allocation sites hold the memory that grows during one call (tracemalloc; slow)."""
    import tracemalloc

    requests = make_requests(n, "trace")
    marks = (n // 4, n)
    snapshots = {}
    done = 0

    def on_outcome(entry: dict) -> None:
        nonlocal done
        done += 1
        if done in marks:
            gc.collect()
            snapshots[done] = tracemalloc.take_snapshot()

    tracemalloc.start(12)
    try:
        wall, cpu, failed, outcomes = asyncio.run(run_project(url, requests, in_flight, tmp / "trace.jsonl", on_outcome))
    finally:
        tracemalloc.stop()
    stats = snapshots[marks[1]].compare_to(snapshots[marks[0]], "traceback")
    total = sum(stat.size_diff for stat in stats)
    span = marks[1] - marks[0]
    print(f"\n[tracemalloc] Python allocations live at request {marks[1]} but not at {marks[0]}: "
          f"{total / 2**20:+.2f} MB = {total / span:.0f} bytes/request; largest sites:")
    for stat in stats[:top]:
        frames = list(stat.traceback)  # oldest call first
        ours = [f for f in frames if str(REPO) in f.filename and "/.venv/" not in f.filename and "bench" not in f.filename]
        where = ours[-1] if ours else frames[-1]
        inner = frames[-1]
        print(f"    {stat.size_diff / span:7.0f} B/req  {stat.count_diff / span:5.1f} blocks/req  "
              f"{Path(where.filename).relative_to(REPO) if str(REPO) in where.filename else where.filename}:{where.lineno}"
              f"  (allocated in {Path(inner.filename).name}:{inner.lineno})")
    del outcomes


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="requests per throughput run (default 1000)")
    ap.add_argument("--in-flight", type=int, default=64, help="requests in flight (default 64)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each side, interleaved (default 5)")
    ap.add_argument("--workers", type=int, default=2, help="llm-katan uvicorn workers (default 2)")
    ap.add_argument("--memory-n", type=int, default=20000, help="requests in the memory run (default 20000)")
    ap.add_argument("--sample-every", type=int, default=1000, help="RSS sample interval in requests")
    ap.add_argument("--flat-from", type=int, default=5000, help="growth is measured from this request on")
    ap.add_argument("--flat-mb", type=float, default=10.0, help="RSS growth (MB) still counted as flat")
    ap.add_argument("--memory-shard", type=int, default=1000,
                    help="also send the memory run as calls of this many requests on one journal (0: skip)")
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="N",
                    help="attribute memory growth over N requests with tracemalloc (slow; default off)")
    ap.add_argument("--no-diagnostics", action="store_true",
                    help="time only (a) and (b), not the two variants that locate the gap")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args(argv)

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB; openai {openai.__version__}, httpx {httpx.__version__}")
    rows: list[tuple] = []
    mem_rows: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="bench-request-path-") as tmpdir:
        tmp = Path(tmpdir)
        process, url, command = start_katan(args.workers, str(tmp / "katan-stats.json"))
        print(f"server: {' '.join([Path(command[0]).name] + command[1:])}")
        try:
            if not args.skip_throughput:
                variants = {
                    "bare": ("(a) bare AsyncOpenAI (default transport) + semaphore",
                             lambda journal: run_bare(url, make_requests(args.n, "b"), args.in_flight)),
                    "project": ("(b) run_requests_async + Journal + OpenAICompatibleBackend",
                                lambda journal: run_project(url, make_requests(args.n, "p"), args.in_flight, journal)),
                }
                if not args.no_diagnostics:
                    variants["bare-httpx"] = (
                        "(d1) bare AsyncOpenAI on a legacy httpx.AsyncClient (as the backend builds it)",
                        lambda journal: run_bare(url, make_requests(args.n, "l"), args.in_flight, legacy_httpx=True))
                    variants["project-httpx2"] = (
                        "(d2) (b) with the backend's client on httpx2 (proposed fix)",
                        lambda journal: run_project(url, make_requests(args.n, "q"), args.in_flight, journal,
                                                    backend_class=Httpx2Backend))
                print(f"\n[a/b] {args.n} requests per run, {args.in_flight} in flight; 1 warm-up + {args.repeats} "
                      f"timed runs of each variant, interleaved (order rotates each round)")
                timings: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
                paired: dict[str, list[float]] = {name: [] for name in variants}  # rate / bare's in the same round
                run_index = 0

                def one(name: str, label: str, timed: bool) -> None:
                    nonlocal run_index
                    run_index += 1
                    journal = tmp / f"tp-{run_index}.jsonl"  # a fresh journal each run: every request is sent
                    server0 = tree_cpu_s(process)
                    result = asyncio.run(variants[name][1](journal))
                    server = tree_cpu_s(process) - server0
                    wall, cpu, failed = result[:3]
                    journal.unlink(missing_ok=True)
                    print(f"    {label:<8} {name:<15} {args.n / wall:6.0f} req/s  {wall:6.2f} s wall  "
                          f"client {cpu / args.n * 1e6:5.0f} us CPU/req  server {server / args.n * 1e6:5.0f} us CPU/req"
                          f"  failed {failed}", flush=True)
                    if timed:
                        timings[name].append((args.n / wall, cpu / args.n, server / args.n))

                names = list(variants)
                for name in names:
                    one(name, "warm-up", False)
                for i in range(args.repeats):
                    # Rotate the order, so that drift in machine load hits every variant alike.
                    for name in names[i % len(names):] + names[:i % len(names)]:
                        one(name, f"run {i + 1}", True)
                    for name in names:
                        paired[name].append(timings[name][-1][0] / timings["bare"][-1][0])
                medians = {name: tuple(statistics.median(col) for col in zip(*rows_))
                           for name, rows_ in timings.items()}
                base_rate = medians["bare"][0]
                pair = {name: statistics.median(values) for name, values in paired.items()}
                print("    medians (rate; rate / bare's in the same round; client and server CPU per request):")
                for name, (rate, cpu, server) in medians.items():
                    print(f"      {name:<15} {rate:6.0f} req/s  {pair[name]:6.1%} of bare  "
                          f"client {cpu * 1e6:5.0f} us CPU/req  server {server * 1e6:5.0f} us CPU/req")
                ratio = pair["project"]
                print(f"    project / bare = {ratio:.1%} (paired median; ratio of medians "
                      f"{medians['project'][0] / base_rate:.1%}): {'meets' if ratio >= 0.9 else 'BELOW'} the 90% target")
                if "bare-httpx" in medians:
                    own = statistics.median(p / b for p, b in zip(paired["project"], paired["bare-httpx"]))
                    print(f"    project / bare-httpx = {own:.1%}: the runner's own cost on the same transport; "
                          f"client CPU/req {medians['project'][1] / medians['bare-httpx'][1]:.2f}x")
                    print(f"    project-httpx2 / bare = {pair['project-httpx2']:.1%}: the path with the proposed fix; "
                          f"client CPU/req {medians['project-httpx2'][1] / medians['bare'][1]:.2f}x")
                for name, (rate, cpu, server) in medians.items():
                    rows.append((variants[name][0], f"{rate:.0f} req/s", f"{pair[name]:.1%}",
                                 f"{cpu * 1e6:.0f} us", f"{server * 1e6:.0f} us"))

            if not args.skip_memory:
                print(f"\n[c] memory: {args.memory_n} requests through run_requests_async, {args.in_flight} in flight, "
                      f"RSS every {args.sample_every}", flush=True)
                mem = memory_run(url, args.memory_n, args.in_flight, args.sample_every, tmp)
                report_memory(f"(c1) one call of {args.memory_n:,} requests", mem, args, mem_rows)
                if args.memory_shard:
                    mem = memory_run(url, args.memory_n, args.in_flight, args.sample_every, tmp, args.memory_shard)
                    report_memory(f"(c2) {args.memory_n // args.memory_shard} calls of {args.memory_shard:,} requests, "
                                  f"one journal, outcomes dropped per call", mem, args, mem_rows)
            if args.tracemalloc:
                trace_growth(url, args.tracemalloc, args.in_flight, tmp)
        finally:
            stop_katan(process)

    if rows:
        print(f"\n| path ({args.n} requests, {args.in_flight} in flight, median of {args.repeats}) | requests/s "
              f"| vs (a), paired | client CPU / request | server CPU / request |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    if mem_rows:
        print(f"\n| memory: {args.memory_n:,} requests, {args.in_flight} in flight | RSS at {args.flat_from:,} / "
              f"{args.memory_n:,} | growth | verdict (limit {args.flat_mb:g} MB) | RSS on dropping the outcomes |")
        print("| --- | ---: | ---: | --- | ---: |")
        for row in mem_rows:
            print("| " + " | ".join(row) + " |")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
