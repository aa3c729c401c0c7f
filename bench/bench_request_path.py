#!/usr/bin/env python
"""Benchmark: the shared request path (backends.runner) against a bare openai client.

Both sides talk to llm-katan in echo mode (a real third-party OpenAI-compatible server that
answers at once), started here as a subprocess on a free port of 127.0.0.1.

(a) bare:    asyncio + openai.AsyncOpenAI (max_retries=0), a semaphore of --in-flight, one
             asyncio task per request, replies kept in a list.
(b) project: run_requests_async(OpenAICompatibleBackend, ...) with a Journal in a temp dir,
             max_in_flight=--in-flight, same N requests.
    Both use an httpx pool of --in-flight connections (the backend's max_connections), so
    what differs is only the request path. The two are interleaved (bare, project, project,
    bare, ...) --repeats times after a warm-up run of each, and the medians are compared
    (target: project >= 90% of bare). Client CPU seconds per request (this process only,
    the server runs in other processes) are reported too: they are the least noisy measure
    of the path's own overhead on a machine where client and server share the cores.
(c) memory: --memory-n requests (default 20,000) through the project's path in one call;
    RSS (psutil) is sampled every --sample-every completed requests from on_outcome, and the
    growth from the 5,000th to the last request is compared with --flat-mb. Afterwards the
    returned outcomes are dropped (gc + malloc_trim) to show how much of the growth they hold.

Usage:  python bench/bench_request_path.py [--n 3000] [--in-flight 64] [--repeats 5]
            [--workers 2] [--memory-n 20000] [--skip-throughput] [--skip-memory]
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


async def run_bare(url: str, requests: list[ChatRequest], in_flight: int) -> tuple[float, float, int]:
    """Bare baseline: one AsyncOpenAI client, a semaphore, one task per request."""
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    client = openai.AsyncOpenAI(api_key="not-needed", base_url=url, max_retries=0, timeout=120.0,
                                http_client=httpx.AsyncClient(limits=limits, timeout=120.0))
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


async def run_project(url: str, requests: list[ChatRequest], in_flight: int, journal_path: Path,
                      on_outcome=None) -> tuple[float, float, int, list[dict]]:
    backend = OpenAICompatibleBackend(MODEL, [url], max_connections=in_flight)
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


def memory_run(url: str, n: int, in_flight: int, every: int, tmp: Path) -> dict:
    requests = make_requests(n, "mem")
    gc.collect()
    samples: list[tuple[int, float]] = [(0, rss_mb())]
    done = 0

    def on_outcome(entry: dict) -> None:
        nonlocal done
        done += 1
        if done % every == 0:
            samples.append((done, rss_mb()))

    wall, cpu, failed, outcomes = asyncio.run(run_project(url, requests, in_flight, tmp / "mem.jsonl", on_outcome))
    gc.collect()
    after_return = rss_mb()
    del outcomes
    gc.collect()
    malloc_trim()
    after_drop = rss_mb()
    return {"samples": samples, "wall": wall, "cpu": cpu, "failed": failed,
            "after_return": after_return, "after_drop": after_drop,
            "journal_bytes": (tmp / "mem.jsonl").stat().st_size}


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="requests per throughput run (default 3000)")
    ap.add_argument("--in-flight", type=int, default=64, help="requests in flight (default 64)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each side, interleaved (default 5)")
    ap.add_argument("--workers", type=int, default=2, help="llm-katan uvicorn workers (default 2)")
    ap.add_argument("--memory-n", type=int, default=20000, help="requests in the memory run (default 20000)")
    ap.add_argument("--sample-every", type=int, default=1000, help="RSS sample interval in requests")
    ap.add_argument("--flat-from", type=int, default=5000, help="growth is measured from this request on")
    ap.add_argument("--flat-mb", type=float, default=10.0, help="RSS growth (MB) still counted as flat")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args(argv)

    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB; openai {openai.__version__}, httpx {httpx.__version__}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-request-path-") as tmpdir:
        tmp = Path(tmpdir)
        process, url, command = start_katan(args.workers, str(tmp / "katan-stats.json"))
        print(f"server: {' '.join([Path(command[0]).name] + command[1:])}")
        try:
            if not args.skip_throughput:
                print(f"\n[a/b] {args.n} requests, {args.in_flight} in flight; 1 warm-up + {args.repeats} timed runs "
                      f"each, interleaved")
                bare, proj = [], []
                run_index = 0

                def report(label: str, side: str, wall: float, cpu: float, server: float, failed: int, into: list):
                    print(f"    {label:<8} {side:<7} {args.n / wall:6.0f} req/s  {wall:6.2f} s wall  "
                          f"client {cpu / args.n * 1e6:5.0f} us CPU/req  server {server / args.n * 1e6:5.0f} us CPU/req"
                          f"  failed {failed}")
                    if into is not None:
                        into.append((args.n / wall, cpu / args.n, server / args.n))

                def one_bare(label: str, timed: bool):
                    server0 = tree_cpu_s(process)
                    wall, cpu, failed = asyncio.run(run_bare(url, make_requests(args.n, "b"), args.in_flight))
                    report(label, "bare", wall, cpu, tree_cpu_s(process) - server0, failed, bare if timed else None)

                def one_project(label: str, timed: bool):
                    nonlocal run_index
                    run_index += 1
                    journal = tmp / f"tp-{run_index}.jsonl"  # a fresh journal: every request is sent
                    server0 = tree_cpu_s(process)
                    wall, cpu, failed, outcomes = asyncio.run(
                        run_project(url, make_requests(args.n, "p"), args.in_flight, journal))
                    del outcomes
                    report(label, "project", wall, cpu, tree_cpu_s(process) - server0, failed, proj if timed else None)

                one_bare("warm-up", False)
                one_project("warm-up", False)
                for i in range(args.repeats):
                    # Alternate which side goes first, so drift in machine load hits both alike.
                    order = (one_bare, one_project) if i % 2 == 0 else (one_project, one_bare)
                    for fn in order:
                        fn(f"run {i + 1}", True)
                bare_rate, bare_cpu, bare_srv = (statistics.median(col) for col in zip(*bare))
                proj_rate, proj_cpu, proj_srv = (statistics.median(col) for col in zip(*proj))
                ratio = proj_rate / bare_rate
                print(f"    median: bare {bare_rate:.0f} req/s, project {proj_rate:.0f} req/s -> "
                      f"ratio {ratio:.1%} ({'meets' if ratio >= 0.9 else 'BELOW'} the 90% target)")
                print(f"    client CPU per request (median): bare {bare_cpu * 1e6:.0f} us, project {proj_cpu * 1e6:.0f} us "
                      f"({(proj_cpu - bare_cpu) * 1e6:+.0f} us, {proj_cpu / bare_cpu:.2f}x); server CPU per request "
                      f"bare {bare_srv * 1e6:.0f} us, project {proj_srv * 1e6:.0f} us")
                rows += [("(a) bare AsyncOpenAI + semaphore", f"{bare_rate:.0f} req/s", f"{bare_cpu * 1e6:.0f} us",
                          f"{bare_srv * 1e6:.0f} us"),
                         ("(b) run_requests_async + Journal", f"{proj_rate:.0f} req/s", f"{proj_cpu * 1e6:.0f} us",
                          f"{proj_srv * 1e6:.0f} us"),
                         ("(b)/(a)", f"**{ratio:.1%}**", f"{proj_cpu / bare_cpu:.2f}x", "")]

            if not args.skip_memory:
                print(f"\n[c] memory: {args.memory_n} requests through run_requests_async, {args.in_flight} in flight, "
                      f"RSS every {args.sample_every}")
                mem = memory_run(url, args.memory_n, args.in_flight, args.sample_every, tmp)
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
                      f"(gc + malloc_trim) {mem['after_drop']:.1f} MB "
                      f"({mem['after_drop'] - mem['after_return']:+.1f} MB)")
                rows += [(f"(c) RSS at {start_key:,} / {end_key:,} requests",
                          f"{by_done[start_key]:.1f} / {by_done[end_key]:.1f} MB", "", ""),
                         (f"(c) RSS growth {start_key:,} -> {end_key:,}",
                          f"**{growth:+.1f} MB** ({per_req:.0f} B/request): {'flat' if flat else 'NOT flat'}", "", ""),
                         ("(c) RSS released by dropping the returned outcomes",
                          f"{mem['after_drop'] - mem['after_return']:+.1f} MB", "", "")]
        finally:
            stop_katan(process)

    print("\n| measure | value | client CPU / request | server CPU / request |")
    print("| --- | ---: | ---: | ---: |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
