#!/usr/bin/env python
"""Benchmark: the shared request path (backends.runner) against a bare openai client.

Every variant talks to llm-katan in echo mode (a real third-party OpenAI-compatible server
that answers at once), started here as a subprocess on a free port of 127.0.0.1 with -w 2
uvicorn workers (--workers); its CPU use is measured too, to show it is not the bottleneck.

(a) bare:     asyncio + openai.AsyncOpenAI(max_retries=0) with its default transport, a
              semaphore of --in-flight, one task per request.
(b) runner:   run_requests_async(OpenAICompatibleBackend(...)) with a Journal in a temp dir,
              max_in_flight=--in-flight, the same N requests: the request path as shipped.
(s) stage:    the generate stage itself (pipeline.stages.generate.GenerateStage) on a temp run
              directory, the teacher an `openai` endpoint at the server with max_in_flight =
              --in-flight, max_requests = N, requests_per_shard = each of --stage-shards, sent
              as the stage sends them (several shards in flight on one request loop): request
              rendering, the runner, parsing, Alpaca's filters and the ROUGE-L dedup of every
              reply (echo replies hold the prompt's example tasks, so every reply is parsed).
    After one warm-up run each, the variants are interleaved --repeats times (the order rotates
    each round) and medians are reported; the target is (s) >= 90% of (a). Client CPU seconds
    per request (this process only) are printed too: the least noisy measure of a path's cost
    on a machine where client and server share the cores.
(c) memory: --memory-n requests (default 20,000) through (b) in one call; RSS (psutil) is
    sampled every --sample-every completed requests from on_outcome, and the growth from
    request --flat-from to the last is compared with --flat-mb. Afterwards the returned
    outcomes are dropped (gc + malloc_trim) to show how much of the growth they held.

Usage:  python -m bench.bench_request_path [--n 1000] [--in-flight 64] [--repeats 5]
            [--workers 2] [--stage-shards 256,16] [--memory-n 20000] [--skip-throughput] [--skip-memory]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from pathlib import Path

import httpx2
import openai

from backends.base import ChatRequest
from backends.config import ModelEndpoint
from backends.openai_compat import OpenAICompatibleBackend
from backends.runner import RetryPolicy, run_requests_async
from bench.harness import MODEL, REPO, interleaved_rounds, machine_line, malloc_trim, rss_mb, start_katan
from bench.harness import medians as harness_medians
from core.records import Journal
from core.rundir import RunDir
from pipeline.config import PipelineConfig
from pipeline.requests import send_shard
from pipeline.session import open_session
from pipeline.stages.generate import GenerateStage
from selfinstruct.config import GenerateConfig

# Retries only matter if the server misbehaves; in echo mode without faults there are none.
POLICY = RetryPolicy(max_retries=3, base_delay_s=0.01, max_delay_s=0.1)


# ----------------------------------------------------------------------------- workload
def make_requests(n: int, prefix: str) -> list[ChatRequest]:
    return [ChatRequest(key=f"{prefix}-{i:06d}",
                        messages=[{"role": "user", "content": f"Write one sentence about topic number {i}."}],
                        max_tokens=32, meta={"i": i}) for i in range(n)]


async def run_bare(url: str, requests: list[ChatRequest], in_flight: int) -> tuple[float, float, int]:
    """Bare baseline: one AsyncOpenAI client (openai's default transport), a semaphore, one task per request."""
    client = openai.AsyncOpenAI(api_key="not-needed", base_url=url, max_retries=0, timeout=120.0)
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
        await backend.aclose()
    assert len(outcomes) == len(requests) and stats.sent == len(requests), (len(outcomes), stats)
    return wall, cpu, stats.failed, outcomes


def run_generate_stage(url: str, n: int, in_flight: int, shard: int, root: Path,
                       on_shard=None) -> tuple[float, float, int]:
    """The generate stage on a fresh run directory, n requests to the server; (wall, cpu, failed).
    on_shard(requests_done) is called after every shard."""
    teacher = ModelEndpoint(backend="openai", model=MODEL, base_urls=[url], max_in_flight=in_flight, max_retries=3)
    config = PipelineConfig(name="bench-generate", seed_tasks=REPO / "data" / "seed_tasks.jsonl", teacher=teacher,
                            generate=GenerateConfig(max_requests=n, target_records=10**9, requests_per_shard=shard,
                                                    max_tokens=32))
    rundir = RunDir(root).create()
    done = 0

    class CountingSender:
        """The stage's own sender (several shards in flight), counting the requests done."""

        def __call__(self, *args):
            return next(iter(self.send_many(*args[:4], [args[4]])))

        def send_many(self, *args):
            nonlocal done
            for outcomes in send_shard.send_many(*args):
                done += len(outcomes)
                if on_shard:
                    on_shard(done)
                yield outcomes

    with open_session(config, root / "bench.yaml", rundir, send=CountingSender()) as context:
        context.models.teacher()  # opened before the clock starts, as the stage's caller does
        cpu0, wall0 = time.process_time(), time.perf_counter()
        summary = GenerateStage().run(context).to_json()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert summary["requests"] == n, summary
    return wall, cpu, summary["requests_failed"]


# ----------------------------------------------------------------------------- memory
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
    ap.add_argument("--stage-shards", default="256,16",
                    help="requests per shard in variant (s), one variant each (default 256,16; 16 is the config's default)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args(argv)

    print(f"{machine_line()}; openai {openai.__version__}, httpx2 {httpx2.__version__}")
    rows: list[tuple] = []
    mem_rows: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="bench-request-path-") as tmpdir:
        tmp = Path(tmpdir)
        server = start_katan("--max-concurrent", "1024", stats_file=tmp / "katan-stats.json", workers=args.workers)
        url = server.url
        print(f"server: {' '.join([Path(server.command[0]).name] + server.command[1:])}")
        try:
            if not args.skip_throughput:
                variants = {
                    "bare": ("(a) bare AsyncOpenAI (default transport) + semaphore",
                             lambda journal: run_bare(url, make_requests(args.n, "b"), args.in_flight)),
                    "project": ("(b) runner: run_requests_async + Journal + OpenAICompatibleBackend",
                                lambda journal: run_project(url, make_requests(args.n, "p"), args.in_flight, journal)),
                }
                for size in (int(size) for size in args.stage_shards.split(",") if size):
                    variants[f"stage-{size}"] = (
                        f"(s) the generate stage, shards of {size}",
                        lambda journal, size=size: run_generate_stage(url, args.n, args.in_flight, size,
                                                                      journal.with_suffix(".run")))
                print(f"\n[a/b] {args.n} requests per run, {args.in_flight} in flight; 1 warm-up + {args.repeats} "
                      f"timed runs of each variant, interleaved (order rotates each round)")
                timings: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
                paired: dict[str, list[float]] = {name: [] for name in variants}  # rate / bare's in the same round
                run_index = 0

                def one(name: str, label: str, timed: bool) -> None:
                    nonlocal run_index
                    run_index += 1
                    journal = tmp / f"tp-{run_index}.jsonl"  # a fresh journal each run: every request is sent
                    server0 = server.cpu_seconds()
                    result = variants[name][1](journal)
                    if asyncio.iscoroutine(result):
                        result = asyncio.run(result)
                    server_cpu = server.cpu_seconds() - server0
                    wall, cpu, failed = result[:3]
                    journal.unlink(missing_ok=True)
                    print(f"    {label:<8} {name:<15} {args.n / wall:6.0f} req/s  {wall:6.2f} s wall  "
                          f"client {cpu / args.n * 1e6:5.0f} us CPU/req  server {server_cpu / args.n * 1e6:5.0f} us CPU/req"
                          f"  failed {failed}", flush=True)
                    if timed:
                        timings[name].append((args.n / wall, cpu / args.n, server_cpu / args.n))

                interleaved_rounds(list(variants), args.repeats, one)
                for name in variants:  # each round timed every variant once: pair them by round
                    paired[name] = [mine[0] / bare[0] for mine, bare in zip(timings[name], timings["bare"])]
                medians = {name: harness_medians(rows_) for name, rows_ in timings.items()}
                base_rate = medians["bare"][0]
                pair = {name: statistics.median(values) for name, values in paired.items()}
                print("    medians (rate; rate / bare's in the same round; client and server CPU per request):")
                for name, (rate, cpu, server_cpu) in medians.items():
                    print(f"      {name:<15} {rate:6.0f} req/s  {pair[name]:6.1%} of bare  "
                          f"client {cpu * 1e6:5.0f} us CPU/req  server {server_cpu * 1e6:5.0f} us CPU/req")
                for name in [name for name in variants if name != "bare"]:
                    ratio = pair[name]
                    print(f"    {name} / bare = {ratio:.1%} (paired median; ratio of medians "
                          f"{medians[name][0] / base_rate:.1%}): {'meets' if ratio >= 0.9 else 'BELOW'} the 90% target")
                for name, (rate, cpu, server_cpu) in medians.items():
                    rows.append((variants[name][0], f"{rate:.0f} req/s", f"{pair[name]:.1%}",
                                 f"{cpu * 1e6:.0f} us", f"{server_cpu * 1e6:.0f} us"))

            if not args.skip_memory:
                print(f"\n[c] memory: {args.memory_n} requests through run_requests_async, {args.in_flight} in flight, "
                      f"RSS every {args.sample_every}", flush=True)
                mem = memory_run(url, args.memory_n, args.in_flight, args.sample_every, tmp)
                report_memory(f"(c1) one call of {args.memory_n:,} requests", mem, args, mem_rows)
                if args.memory_shard:
                    mem = memory_run(url, args.memory_n, args.in_flight, args.sample_every, tmp, args.memory_shard)
                    report_memory(f"(c2) {args.memory_n // args.memory_shard} calls of {args.memory_shard:,} requests, "
                                  f"one journal, outcomes dropped per call", mem, args, mem_rows)
                gc.collect()
                samples = [(0, rss_mb())]
                wall, cpu, failed = run_generate_stage(url, args.memory_n, args.in_flight, args.memory_shard or 1000,
                                                       tmp / "mem-stage", lambda done: samples.append((done, rss_mb())))
                gc.collect()
                after = rss_mb()
                report_memory(f"(c3) the generate stage, {args.memory_n:,} requests in shards of "
                              f"{args.memory_shard or 1000:,}",
                              {"samples": samples, "wall": wall, "cpu": cpu, "failed": failed, "after_return": after,
                               "after_drop": after, "journal_bytes": (tmp / "mem-stage" / "work" /
                                                                      "generate_requests.jsonl").stat().st_size},
                              args, mem_rows)
            if args.tracemalloc:
                trace_growth(url, args.tracemalloc, args.in_flight, tmp)
        finally:
            server.stop()

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
    raise SystemExit(main())
