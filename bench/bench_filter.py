#!/usr/bin/env python
"""Benchmark: the filter stage's rating path (throughput) and its memory over 50,000 records.

The judge is llm-katan in echo mode (a real third-party OpenAI-compatible server, started
here on a free port of 127.0.0.1 with --workers uvicorn workers). Echo replies repeat the
user message, i.e. the whole rating prompt, and llm-katan has no option to answer with a
chosen text. But since the prompt contains the record, a record whose output ends with
``{"score": X, "explanation": "..."}`` comes back from the echo judge with a reply that
quality.score_parse reads as score X (the prompt's own ``{"score": <number from 0 to 5>}``
example is not a number and is ignored). So by default every record carries such a planted
score, 0 to 5 in half points, cycling deterministically, and the whole stage runs as with a
real judge: parsing, threshold selection (4.5: 2 records in 11 kept), histogram, examples,
rejections and exports. --no-plant sends the records unchanged: every reply is then
"unscored:no_score" (the stage still runs end to end; nothing is kept).

(a) throughput, records rated per second, --n records of alpaca_5000, --in-flight in flight:
    direct:    quality.rate.rating_requests + backends.runner.run_requests_async + apply_ratings
               (one call, one event loop; build, send and join are timed)
    stage/S:   distill.stages.filter_stage on a temp run directory, judge endpoint
               max_in_flight=--in-flight, filter.requests_per_shard=S (the stage sends one
               shard at a time: each is one run_requests call, so at most min(S, in flight)
               requests are in flight, and each shard opens and closes its own event loop and
               HTTP client). S = 16 (the old generate-sized shards), 256 (the filter's default)
               and --shard.
    After one warm-up each, --repeats rounds run every variant in a rotating order; medians.
    Every run uses a fresh run directory / journal, so every request is sent.
(b) memory: --memory-n (50,000) synthetic records (alpaca_5000 with deterministic edits, each
    record distinct) through filter_stage (S = --memory-shard, default 256); RSS (psutil) is
    sampled after every
    shard (from the stage's `send` hook), every 0.05 s by a thread (for peaks), and at the
    entry and exit of each step of filter_stage (the functions it calls are wrapped here; the
    stage's code is unchanged), then after it returns, before and after gc + malloc_trim.
(c) where the memory goes: --trace-n records through filter_stage under tracemalloc (25
    frames); at the entry of select_rated (all replies in) and of RunDir.merge_rejections
    (the end), the live Python allocations are grouped by the innermost frame in
    this repository (file:line, function) and by the stage's local variable that holds them.

(d) cost of the IFD pre-filter (quality.ifd): --ifd-n alpaca records (spread over the file)
    scored by SmolLM2-135M on the CPU with --ifd-threads torch threads; records/s.

Usage:  python bench/bench_filter.py [--n 2000] [--in-flight 64] [--shard 1024] [--repeats 3]
            [--workers 2] [--memory-n 50000] [--trace-n 1000] [--ifd-n 48] [--ifd-threads 1]
            [--no-plant] [--skip-throughput] [--skip-memory] [--skip-trace]
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import ctypes
import functools
import gc
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

import distill.stages as stages  # noqa: E402
import distill.stages.filter as filter_module  # noqa: E402
import quality.histogram as histogram  # noqa: E402
import quality.rate as rate  # noqa: E402
from backends.factory import open_chat_backend  # noqa: E402
from backends.openai_compat import OpenAICompatibleBackend  # noqa: E402
from backends.runner import RetryPolicy, run_requests  # noqa: E402
from distill.config import FilterConfig, ModelEndpoint, PipelineConfig  # noqa: E402
from distill.records import Journal, write_jsonl  # noqa: E402
from distill.rundir import RunDir  # noqa: E402

DATA = REPO.parent / "shared" / "data"
MODEL = "echo"
PLANTED = [i / 2 for i in range(11)]  # 0, 0.5, ..., 5


# ----------------------------------------------------------------------------- server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_katan(workers: int, stats_file: str) -> tuple[subprocess.Popen, str, list[str]]:
    port = free_port()
    command = [str(Path(sys.executable).parent / "llm-katan"), "-m", MODEL, "-b", "echo", "-p", str(port),
               "-h", "127.0.0.1", "--disable-dashboard", "--stats-file", stats_file, "--log-level", "warning",
               "--max-concurrent", "1024", "-w", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llm-katan exited with {process.returncode}: {' '.join(command)}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return process, f"http://127.0.0.1:{port}/v1", command
        except OSError:
            time.sleep(0.3)
    stop_katan(process)
    raise RuntimeError("llm-katan did not start in 60 s")


def stop_katan(process: subprocess.Popen) -> None:
    # Only the server started here: its own session / process group (uvicorn's workers too).
    try:
        os.killpg(process.pid, 15)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(timeout=5)


def tree_cpu_s(process: subprocess.Popen) -> float:
    """CPU seconds used so far by the server and its workers."""
    total = 0.0
    try:
        root = psutil.Process(process.pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
    except psutil.NoSuchProcess:
        pass
    return total


# ----------------------------------------------------------------------------- workload
def load_alpaca() -> list[dict]:
    return json.loads((DATA / "alpaca_5000.json").read_text(encoding="utf-8"))


def plant_score(record: dict, position: int) -> dict:
    """The record with a judge-style JSON score at the end of its output (read back from the echo)."""
    score = PLANTED[(position * 7) % len(PLANTED)]
    marker = json.dumps({"score": score, "explanation": "planted for the benchmark"})
    return {**record, "output": f"{record['output']}\n{marker}"}


def as_generated(records: list[dict], plant: bool, prefix: str) -> list[dict]:
    """Records as the generate stage writes them (id, instruction, input, output)."""
    out = []
    for i, record in enumerate(records):
        item = {"id": f"{prefix}-{i:06d}", "instruction": record["instruction"], "input": record.get("input", ""),
                "output": record["output"]}
        out.append(plant_score(item, i) if plant else item)
    return out


_PREFIXES = ["", "Please", "Kindly", "Now,", "Briefly:", "In simple terms,", "For a beginner,", "Quickly:",
             "As an expert,", "Step by step,"]
_TAILS = ["", " Thanks.", " Be concise.", " Use plain words.", " Keep it short.", " Explain your answer."]


def synthetic_records(base: list[dict], n: int) -> list[dict]:
    """n distinct records from the base ones by deterministic edits (variant k of base record b)."""
    records, seen = [], set()
    for i in range(n):
        b, k = i % len(base), i // len(base)
        rng = random.Random(i)
        record = dict(base[b])
        instruction = record["instruction"]
        if k:
            instruction = f"{_PREFIXES[k % len(_PREFIXES)]} {instruction[:1].lower()}{instruction[1:]}".strip()
            instruction += _TAILS[rng.randrange(len(_TAILS))]
            words = record["output"].split(" ")
            if len(words) > 3:
                j = rng.randrange(len(words) - 1)
                words[j], words[j + 1] = words[j + 1], words[j]
            record["output"] = " ".join(words)
        record["instruction"] = instruction
        key = rate.record_key(record)
        if key in seen:  # keep every record distinct: a repeated key would be rated once
            record["instruction"] += f" (variant {k})"
        seen.add(rate.record_key(record))
        records.append(record)
    return records


def load_ifd_sample(n: int) -> list[dict]:
    """n alpaca records spread over the file (every len/n-th)."""
    records = load_alpaca()
    step = max(1, len(records) // max(1, n))
    return records[::step][:n]


# ----------------------------------------------------------------------------- helpers
def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def make_config(url: str, in_flight: int, shard: int) -> PipelineConfig:
    judge = ModelEndpoint(backend="openai", model=MODEL, base_urls=[url], max_in_flight=in_flight, max_retries=3)
    return PipelineConfig(name="bench-filter", seed_tasks=DATA / "seed_tasks.jsonl", teacher=judge,
                          filter=FilterConfig(threshold=4.5, requests_per_shard=shard))


def run_stage(url: str, records_path: Path, root: Path, in_flight: int, shard: int, on_shard=None) -> tuple[dict, float, float]:
    """filter_stage on a fresh run directory whose generated.jsonl is records_path; (summary, wall, cpu)."""
    rundir = RunDir(root).create()
    os.link(records_path, rundir.generated)
    config = make_config(url, in_flight, shard)
    path = stages.RequestPath(rundir, stages.usage_so_far(rundir, config))

    def send(path_, backend, endpoint, journal_name, requests):
        outcomes = stages.send_shard(path_, backend, endpoint, journal_name, requests)
        if on_shard:
            on_shard(len(outcomes))
        return outcomes

    try:
        with open_chat_backend(config.judge_endpoint) as judge:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            summary = stages.filter_stage(config, rundir, judge, path, send=send)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        path.close()
    return summary, wall, cpu


def run_direct(url: str, records: list[dict], in_flight: int, journal_path: Path) -> tuple[dict, float, float]:
    """rating_requests + run_requests_async + apply_ratings; (counts, wall, cpu)."""
    template = rate.RATING_TEMPLATE.read_text(encoding="utf-8")
    backend = OpenAICompatibleBackend(MODEL, [url], max_connections=in_flight)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    requests = rate.rating_requests(records, template, FilterConfig())
    with Journal(journal_path) as journal:
        outcomes, stats = run_requests(backend, requests, journal, max_in_flight=in_flight,
                                       policy=RetryPolicy(max_retries=3))
    ratings = rate.apply_ratings(records, outcomes)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert stats.sent == len(records) and stats.failed == 0, stats
    return ratings["counts"], wall, cpu


class RssSampler(threading.Thread):
    """Samples RSS every `every` seconds until stopped; keeps every sample (for peaks)."""

    def __init__(self, every: float = 0.05):
        super().__init__(daemon=True)
        self.every, self.samples, self._stop_event = every, [], threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(rss_mb())
            self._stop_event.wait(self.every)

    def mark(self) -> int:
        return len(self.samples)

    def peak(self, begin: int = 0, end: int | None = None) -> float:
        window = self.samples[begin:end]
        return max(window) if window else 0.0

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak()


# The steps of filter_stage, as (module or class, attribute, label): wrapped to log RSS around them.
STEPS = [
    (filter_module, "Candidates", "Candidates (check generated.jsonl)"),
    (filter_module, "rate_in_shards", "rate_in_shards (-> rated.jsonl)"),
    (filter_module, "select_rated", "select_rated (-> filtered.jsonl)"),
    (RunDir, "merge_rejections", "RunDir.merge_rejections"),
    (histogram, "score_histogram_png", "score_histogram_png"),
    (filter_module, "export_filtered", "export_filtered"),
]


@contextlib.contextmanager
def wrapped_steps(log: list, before=None, sampler: RssSampler | None = None):
    """Wrap filter_stage's steps so that each logs (label, RSS at entry, RSS at exit, seconds,
    peak RSS inside, sampler marks at entry and exit)."""
    originals = []
    for owner, name, label in STEPS:
        original = getattr(owner, name)
        originals.append((owner, name, original))

        def make(original=original, label=label):
            @functools.wraps(original)
            def wrapper(*args, **kwargs):
                shown = label
                if before:
                    before(shown)
                entry, started = rss_mb(), time.perf_counter()
                first = sampler.mark() if sampler else 0
                result = original(*args, **kwargs)
                exit_ = rss_mb()
                last = sampler.mark() if sampler else 0
                inside = max(entry, exit_, sampler.peak(first, last) if sampler else 0.0)
                log.append((shown, entry, exit_, time.perf_counter() - started, inside, first, last))
                return result
            return wrapper

        setattr(owner, name, make())
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def enclosing_function(filename: str, line: int, _cache: dict = {}) -> str:  # noqa: B006 - a cache
    """The innermost function (Class.method) around a line of a file, from its syntax tree."""
    if filename not in _cache:
        spans = []
        try:
            tree = ast.parse(Path(filename).read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            tree = None

        def walk(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = f"{prefix}{child.name}"
                    if not isinstance(child, ast.ClassDef):
                        spans.append((child.lineno, child.end_lineno, name))
                    walk(child, name + ".")
                else:
                    walk(child, prefix)

        if tree is not None:
            walk(tree, "")
        _cache[filename] = spans
    inside = [(start, name) for start, end, name in _cache[filename] if start <= line <= end]
    return max(inside)[1] if inside else "<module>"


def by_repo_frame(snapshot: tracemalloc.Snapshot) -> list[tuple[str, int, int]]:
    """Live allocations grouped by their innermost frame inside this repository (bench excluded)."""
    groups: dict[str, list[int]] = {}
    repo = str(REPO) + os.sep
    for trace in snapshot.traces:
        where = "(outside the repository)"
        for frame in reversed(trace.traceback):  # a Traceback lists the oldest frame first
            name = frame.filename
            if name.startswith(repo) and "/.venv/" not in name and "/bench/" not in name:
                where = f"{Path(name).relative_to(REPO)}:{frame.lineno} {enclosing_function(name, frame.lineno)}"
                break
        size_count = groups.setdefault(where, [0, 0])
        size_count[0] += trace.size
        size_count[1] += 1
    return sorted(((where, size, count) for where, (size, count) in groups.items()), key=lambda row: -row[1])


def deep_size(value, seen: set) -> int:
    """Bytes of a container and everything it holds (each object counted once)."""
    if id(value) in seen:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in value.items())
    elif isinstance(value, (list, tuple, set, frozenset)):
        size += sum(deep_size(v, seen) for v in value)
    elif hasattr(value, "__dataclass_fields__"):
        size += sum(deep_size(getattr(value, f), seen) for f in value.__dataclass_fields__)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        size += deep_size(vars(value), seen)
    return size


def stage_locals(frame_name: str = "filter_stage") -> dict:
    """The local variables of the running filter_stage frame (for sizing what it holds)."""
    for thread_frame in sys._current_frames().values():
        frame = thread_frame
        while frame is not None:
            if frame.f_code.co_name == frame_name and frame.f_code.co_filename == stages.filter.__file__:
                return dict(frame.f_locals)
            frame = frame.f_back
    return {}


def sizes_of_locals(names: list[str]) -> list[tuple[str, float]]:
    """Deep sizes (MB) of filter_stage's big locals, in the order given; shared objects counted once."""
    local = stage_locals()
    seen: set = set()
    return [(name, deep_size(local[name], seen) / 2**20) for name in names if name in local]


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="records per throughput run (default 2000)")
    ap.add_argument("--in-flight", type=int, default=64, help="judge requests in flight (default 64)")
    ap.add_argument("--shard", type=int, default=1024, help="requests_per_shard of the large-shard runs (default 1024)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    ap.add_argument("--workers", type=int, default=2, help="llm-katan uvicorn workers (default 2)")
    ap.add_argument("--memory-n", type=int, default=50_000, help="records in the memory run (default 50000)")
    ap.add_argument("--memory-shard", type=int, default=256, help="requests_per_shard of the memory run (default 256)")
    ap.add_argument("--trace-n", type=int, default=1000, help="records in the tracemalloc run (default 1000)")
    ap.add_argument("--ifd-n", type=int, default=48, help="alpaca records scored by quality.ifd (0: skip; default 48)")
    ap.add_argument("--ifd-threads", type=int, default=1, help="torch threads for IFD scoring (default 1)")
    ap.add_argument("--ifd-batch", type=int, default=8, help="IFD batch size in sequences (default 8)")
    ap.add_argument("--no-plant", action="store_true", help="do not plant scores: every echo reply is unscored")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-trace", action="store_true")
    args = ap.parse_args(argv)
    plant = not args.no_plant

    load = os.getloadavg()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB; load average at start {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f}; scores {'planted' if plant else 'not planted (all unscored)'}")
    alpaca = load_alpaca()
    rows: list[tuple] = []
    mem_rows: list[tuple] = []
    trace_rows: list[tuple] = []
    held_rows: list[tuple] = []
    ifd_rows: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmpdir:
        tmp = Path(tmpdir)
        process, url, command = start_katan(args.workers, str(tmp / "katan-stats.json"))
        print(f"server: {' '.join([Path(command[0]).name] + command[1:])}")
        try:
            # ------------------------------------------------------------- (a) throughput
            if not args.skip_throughput:
                records = as_generated(synthetic_records(alpaca, args.n), plant, "tp")
                records_path = tmp / "tp-generated.jsonl"
                write_jsonl(records_path, records)
                variants = {
                    "direct": f"rating_requests + run_requests_async ({args.in_flight} in flight) + apply_ratings",
                    "stage/16": f"filter_stage, requests_per_shard 16, judge max_in_flight {args.in_flight}",
                    "stage/256": f"filter_stage, requests_per_shard 256 (default), judge max_in_flight {args.in_flight}",
                    f"stage/{args.shard}": f"filter_stage, requests_per_shard {args.shard}, judge max_in_flight "
                                           f"{args.in_flight}",
                }
                print(f"\n[a] {args.n} records per run; 1 warm-up + {args.repeats} timed rounds, rotating order")
                timings: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
                counter = 0

                def one(name: str, label: str, timed: bool) -> None:
                    nonlocal counter
                    counter += 1
                    server0 = tree_cpu_s(process)
                    if name == "direct":
                        counts, wall, cpu = run_direct(url, records, args.in_flight, tmp / f"direct-{counter}.jsonl")
                        kept = None
                    else:
                        shard = int(name.split("/")[1])
                        summary, wall, cpu = run_stage(url, records_path, tmp / f"run-{counter}", args.in_flight, shard)
                        counts, kept = summary["counts"], summary["kept"]
                    server = tree_cpu_s(process) - server0
                    scored = sum(v for k, v in counts.items() if k.startswith("score:"))
                    print(f"    {label:<8} {name:<12} {args.n / wall:6.0f} records/s  {wall:6.2f} s  client "
                          f"{cpu / args.n * 1e6:5.0f} us CPU/record  server {server / args.n * 1e6:5.0f} us CPU/record"
                          f"  scored {scored}" + (f"  kept {kept}" if kept is not None else ""), flush=True)
                    if timed:
                        timings[name].append((args.n / wall, cpu / args.n, server / args.n))

                names = list(variants)
                for name in names:
                    one(name, "warm-up", False)
                for i in range(args.repeats):
                    for name in names[i % len(names):] + names[:i % len(names)]:
                        one(name, f"round {i + 1}", True)
                for name, label in variants.items():
                    rate_, cpu, server = (statistics.median(col) for col in zip(*timings[name]))
                    rows.append((label, f"{rate_:.0f}", f"{cpu * 1e6:.0f} us", f"{server * 1e6:.0f} us"))
                del records

            # ------------------------------------------------------------- (b) memory
            if not args.skip_memory:
                records_path = tmp / "mem-generated.jsonl"
                write_jsonl(records_path, as_generated(synthetic_records(alpaca, args.memory_n), plant, "mem"))
                size_mb = records_path.stat().st_size / 2**20
                del alpaca[:]
                gc.collect()
                malloc_trim()
                print(f"\n[b] memory: {args.memory_n} records ({size_mb:.1f} MB of JSONL) through filter_stage, "
                      f"requests_per_shard {args.memory_shard}, {args.in_flight} in flight")
                shard_samples: list[tuple[int, float]] = []
                steps: list[tuple] = []
                gaps: list[tuple] = []
                rated = 0

                def on_shard(count: int) -> None:
                    nonlocal rated
                    rated += count
                    shard_samples.append((rated, rss_mb()))

                start_rss = rss_mb()
                sampler = RssSampler()
                sampler.start()
                with wrapped_steps(steps, sampler=sampler):
                    summary, wall, _ = run_stage(url, records_path, tmp / "mem-run", args.in_flight,
                                                 args.memory_shard, on_shard=on_shard)
                peak = sampler.stop()
                after_return = rss_mb()
                gc.collect()
                malloc_trim()
                after_trim = rss_mb()
                print(f"    {args.memory_n / wall:.0f} records/s; kept {summary['kept']}; counts {summary['counts']}")
                print(f"    RSS before the stage {start_rss:.1f} MB; peak {peak:.1f} MB (+{peak - start_rss:.1f})")
                print("    RSS while rating (after each shard):")
                every = max(1, len(shard_samples) // 10)
                shown = sorted(set(range(0, len(shard_samples), every)) | {len(shard_samples) - 1})
                for done, rss in (shard_samples[i] for i in shown):
                    print(f"      {done:6d} rated  RSS {rss:8.1f} MB")
                first_done, first_rss = shard_samples[0]
                # RSS after the first shard at or past a fifth, half and all of the records.
                milestones = [next(sample for sample in shard_samples if sample[0] >= share)
                              for share in (args.memory_n // 5, args.memory_n // 2, shard_samples[-1][0])]
                for done, rss in milestones:
                    print(f"      at {done:6d} rated  RSS {rss:8.1f} MB")
                last_done, last_rss = shard_samples[-1]
                per_record = (last_rss - first_rss) * 2**20 / max(1, last_done - first_done)
                print(f"    growth while rating {first_done} -> {last_done}: {last_rss - first_rss:+.1f} MB "
                      f"({per_record:.0f} bytes/record)")
                # The one thing that must grow with the records: the judge journal's key -> offset
                # index (distill.records.Journal keeps it so that a rerun finds every paid reply).
                with Journal(RunDir(tmp / "mem-run").journal("rate")) as journal:
                    index_mb = deep_size(journal._offsets, set()) / 2**20
                other = last_rss - first_rss - index_mb
                print(f"    of which the rate journal's key index {index_mb:.1f} MB "
                      f"({index_mb * 2**20 / len(journal):.0f} bytes/record); the rest {other:+.1f} MB")
                print("    RSS around each step of filter_stage (entry -> exit, peak inside), and in filter_stage's "
                      "own code between steps:")
                previous = None
                for label, entry, exit_, seconds, inside, first, last in steps:
                    if previous is not None and abs(entry - previous[2]) >= 1:
                        gap_peak = max(previous[2], entry, sampler.peak(previous[6], first))
                        gap = f"(filter_stage, {previous[0]} -> {label})"
                        print(f"      {gap:<58} {previous[2]:8.1f} -> {entry:8.1f} MB  ({entry - previous[2]:+7.1f})  "
                              f"peak {gap_peak:7.1f}")
                        gaps.append((gap, entry - previous[2], gap_peak))
                    print(f"      {label:<58} {entry:8.1f} -> {exit_:8.1f} MB  ({exit_ - entry:+7.1f})  "
                          f"peak {inside:7.1f}  {seconds:6.2f} s")
                    previous = (label, entry, exit_, seconds, inside, first, last)
                print(f"    RSS after filter_stage returned {after_return:.1f} MB; after gc + malloc_trim "
                      f"{after_trim:.1f} MB")
                mem_rows += [
                    ("records (JSONL on disk)", f"{args.memory_n:,} ({size_mb:.0f} MB)"),
                    ("throughput of the memory run", f"{args.memory_n / wall:.0f} records/s"),
                    ("RSS before / peak", f"{start_rss:.0f} / {peak:.0f} MB (**+{peak - start_rss:.0f} MB**)"),
                    (f"RSS at {' / '.join(f'{done:,}' for done, _ in milestones)} rated",
                     " / ".join(f"{rss:.0f}" for _, rss in milestones) + " MB"),
                    (f"RSS growth while rating ({first_done:,} -> {last_done:,} rated)",
                     f"{last_rss - first_rss:+.0f} MB ({per_record:.0f} B/record)"),
                    ("of which the rate journal's key index (live)", f"{index_mb:.0f} MB"),
                ]
                for label, entry, exit_, _, inside, _, _ in steps:
                    if abs(exit_ - entry) >= 5 or inside - entry >= 5:
                        mem_rows.append((f"step {label}", f"{exit_ - entry:+.0f} MB (peak inside {inside - entry:+.0f})"))
                for gap, delta, gap_peak in gaps:
                    if abs(delta) >= 5:
                        mem_rows.append((gap, f"{delta:+.0f} MB"))
                mem_rows += [("RSS after return / after gc + malloc_trim", f"{after_return:.0f} / {after_trim:.0f} MB")]

            # ------------------------------------------------------------- (c) tracemalloc
            if not args.skip_trace:
                if not alpaca:
                    alpaca = load_alpaca()
                records_path = tmp / "trace-generated.jsonl"
                write_jsonl(records_path, as_generated(synthetic_records(alpaca, args.trace_n), plant, "trace"))
                gc.collect()
                print(f"\n[c] tracemalloc: {args.trace_n} records through filter_stage (requests_per_shard "
                      f"{args.shard}); live allocations by innermost repository frame")
                snapshots: dict[str, tracemalloc.Snapshot] = {}
                held: list[tuple[str, float]] = []

                def snap(label: str) -> None:
                    if label in ("select_rated (-> filtered.jsonl)", "RunDir.merge_rejections") and label not in snapshots:
                        gc.collect()  # count what is held, not garbage waiting for the collector
                        snapshots[label] = tracemalloc.take_snapshot()
                    if label == "RunDir.merge_rejections" and not held:
                        held.extend(sizes_of_locals(["candidates", "tally", "ranking", "drop_counts"]))

                tracemalloc.start(25)
                try:
                    with wrapped_steps([], snap):
                        run_stage(url, records_path, tmp / "trace-run", args.in_flight, args.shard)
                finally:
                    tracemalloc.stop()
                for label, snapshot in snapshots.items():
                    groups = by_repo_frame(snapshot)
                    total = sum(size for _, size, _ in groups)
                    print(f"    at the entry of {label}: {total / 2**20:.1f} MB live "
                          f"({total / args.trace_n:.0f} bytes/record); top sites:")
                    for where, size, count in groups[:12]:
                        print(f"      {size / 2**20:7.1f} MB  {size / args.trace_n:6.0f} B/record  {count:8d} blocks  "
                              f"{where}")
                    if label == "RunDir.merge_rejections":
                        trace_rows += [(where, f"{size / args.trace_n:.0f}", f"{size / total:.0%}")
                                       for where, size, _ in groups[:10]]
                print("    filter_stage's locals at the entry of RunDir.merge_rejections (deep size; an object "
                      "shared by several is counted with the first):")
                for name, mb in held:
                    print(f"      {name:<16} {mb:8.1f} MB  ({mb * 2**20 / args.trace_n:6.0f} bytes/record)")
                    held_rows.append((f"`{name}`", f"{mb * 2**20 / args.trace_n:.0f}"))
        finally:
            stop_katan(process)

    # ----------------------------------------------------------------- (d) IFD scoring cost
    if args.ifd_n:
        import torch

        from quality.ifd import ifd_scores, load_ifd_model, select_by_ifd

        threads = torch.get_num_threads()
        torch.set_num_threads(args.ifd_threads)
        try:
            model, tokenizer = load_ifd_model()
            sample = load_ifd_sample(args.ifd_n)
            ifd_scores(sample[:2], model, tokenizer)  # warm-up
            cpu0, wall0 = time.process_time(), time.perf_counter()
            scores = ifd_scores(sample, model, tokenizer, max_length=512, batch_size=args.ifd_batch)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        finally:
            torch.set_num_threads(threads)
        tokens = sum(s.answer_tokens for s in scores)
        valid = [s.ifd for s in scores if s.valid]
        kept, _ = select_by_ifd(sample, scores, keep_fraction=0.1)
        print(f"\n[d] IFD scoring: {len(sample)} alpaca records, SmolLM2-135M float32 on CPU, "
              f"{args.ifd_threads} thread(s), batch {args.ifd_batch}, max_length 512")
        print(f"    {len(sample) / wall:.2f} records/s ({wall:.1f} s wall, {cpu:.1f} s CPU, {tokens} answer tokens); "
              f"IFD median {statistics.median(valid):.3f}, {sum(v >= 1 for v in valid)} at or above 1; "
              f"keep_fraction 0.1 keeps {len(kept)}")
        print(f"    -> 50,000 records: about {50_000 / (len(sample) / wall) / 3600:.1f} h wall at this rate")
        ifd_rows.append((f"IFD scoring ({len(sample)} records, {args.ifd_threads} thread, batch {args.ifd_batch})",
                         f"{len(sample) / wall:.2f} records/s ({cpu / len(sample):.2f} s CPU/record)"))

    if rows:
        print(f"\n| path ({args.n} records, median of {args.repeats}) | records/s | client CPU / record "
              f"| server CPU / record |")
        print("| --- | ---: | ---: | ---: |")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    if mem_rows:
        print(f"\n| memory: {args.memory_n:,} records through filter_stage | value |")
        print("| --- | ---: |")
        for row in mem_rows:
            print("| " + " | ".join(row) + " |")
    if trace_rows:
        print(f"\n| live at RunDir.merge_rejections ({args.trace_n:,} records, tracemalloc): allocated in "
              f"| bytes / record | share |")
        print("| --- | ---: | ---: |")
        for row in trace_rows:
            print("| " + " | ".join(row) + " |")
    if ifd_rows:
        print("\n| IFD (quality/ifd.py) | value |")
        print("| --- | ---: |")
        for row in ifd_rows:
            print("| " + " | ".join(row) + " |")
    if held_rows:
        print(f"\n| filter_stage local at RunDir.merge_rejections ({args.trace_n:,} records) | bytes / record |")
        print("| --- | ---: |")
        for row in held_rows:
            print("| " + " | ".join(row) + " |")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
