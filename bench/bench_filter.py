#!/usr/bin/env python
"""Benchmark: the filter stage's rating path (throughput) and its memory over 50,000 records.

The judge is llm-katan in echo mode (a real third-party OpenAI-compatible server, started
here on a free port of 127.0.0.1 with --workers uvicorn workers). Echo replies repeat the
user message, i.e. the whole rating prompt, and llm-katan has no option to answer with a
chosen text. But since the prompt contains the record, a record whose output ends with
``{"score": X, "explanation": "..."}`` comes back from the echo judge with a reply that
filters.score_parse reads as score X (the prompt's own ``{"score": <number from 0 to 5>}``
example is not a number and is ignored). So by default every record carries such a planted
score, 0 to 5 in half points, cycling deterministically, and the whole stage runs as with a
real judge: parsing, threshold selection (4.5: 2 records in 11 kept), histogram, examples,
rejections and exports. --no-plant sends the records unchanged: every reply is then
"unscored:no_score" (the stage still runs end to end; nothing is kept).

The stage is run as `distill filter` runs it: pipeline.session.open_session on a temp run
directory (the judge opened before the clock starts), then pipeline.session.run_stage with
pipeline.stages.filter.FilterStage (the stage's summary recorded, rejected.jsonl rebuilt),
shards sent by the stage's own sender (pipeline.requests.send_shard: several shards in flight
on the run's one request loop). --one-shard-at-a-time sends each shard after the one before has
come back instead (a sender without `send_many`), which is how this benchmark sent them before
its port to the pipeline package (it wrapped the sender in a plain function).

(a) throughput, records rated per second, --n records of alpaca_5000, --in-flight in flight:
    direct:    filters.rate.rating_requests + backends.runner.run_requests (run_requests_async
               on an event loop of its own) + apply_ratings (one call; build, send and join
               are timed)
    stage/S:   the filter stage, judge endpoint max_in_flight=--in-flight,
               filter.requests_per_shard=S. S = 16 (the old generate-sized shards), 256 (the
               filter's default) and --shard.
    After one warm-up each, --repeats rounds run every variant in a rotating order; medians.
    Every run uses a fresh run directory / journal, so every request is sent.
(b) memory: --memory-n (50,000) synthetic records (alpaca_5000 with deterministic edits, each
    record distinct) through the filter stage (S = --memory-shard, default 256); RSS (psutil)
    is sampled after every shard (from the stage's `send` hook), every 0.05 s by a thread (for
    peaks), and at the entry and exit of each step of the stage (the functions it calls are
    wrapped here; the stage's code is unchanged), then after it returns, before and after gc
    + malloc_trim. The steps: pipeline.stages.filter.checked_generated, filters.judge's
    rate_in_shards, selection and kept_rated (a generator: from its first record to its last,
    while the stage writes filtered.jsonl), filters.histogram.score_histogram_png,
    pipeline.stages.filter.export_filtered and core.rundir.RunDir.merge_rejections.
(c) where the memory goes: --trace-n records through the stage under tracemalloc (25 frames);
    at the entry of filters.judge.selection (all replies in) and of export_filtered (the last
    step inside FilterStage.run), the live Python allocations are grouped by the innermost
    frame in this repository (file:line, function); and the deep size of the locals that hold
    the records and the ratings: JudgeFilter.apply's at the entry of score_histogram_png,
    FilterStage.run's at the entry of export_filtered.

(d) cost of the IFD pre-filter (filters.ifd): --ifd-n alpaca records (spread over the file)
    scored by SmolLM2-135M on the CPU with --ifd-threads torch threads; records/s.

Usage:  python -m bench.bench_filter [--n 2000] [--in-flight 64] [--shard 1024] [--repeats 3]
            [--workers 2] [--memory-n 50000] [--trace-n 1000] [--ifd-n 48] [--ifd-threads 1]
            [--no-plant] [--one-shard-at-a-time] [--skip-throughput] [--skip-memory] [--skip-trace]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import gc
import inspect
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import pipeline.stages.filter as filter_module
import prompts
from backends.config import ModelEndpoint
from backends.openai_compat import OpenAICompatibleBackend
from backends.runner import RetryPolicy, run_requests
from bench.harness import (
    MODEL,
    REPO,
    interleaved_rounds,
    machine_line,
    malloc_trim,
    markdown_table,
    medians,
    rss_mb,
    shared_data_dir,
    start_katan,
)
from core.records import Journal, write_jsonl
from core.rundir import RunDir
from filters import histogram, judge, rate
from filters.base import record_key
from filters.config import FilterConfig
from pipeline.config import PipelineConfig
from pipeline.requests import send_shard
from pipeline.session import open_session, run_stage
from pipeline.stages.filter import FilterStage

DATA = shared_data_dir()
PLANTED = [i / 2 for i in range(11)]  # 0, 0.5, ..., 5


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
        key = record_key(record)
        if key in seen:  # keep every record distinct: a repeated key would be rated once
            record["instruction"] += f" (variant {k})"
        seen.add(record_key(record))
        records.append(record)
    return records


def load_ifd_sample(n: int) -> list[dict]:
    """n alpaca records spread over the file (every len/n-th)."""
    records = load_alpaca()
    step = max(1, len(records) // max(1, n))
    return records[::step][:n]


# ----------------------------------------------------------------------------- helpers
def make_config(url: str, in_flight: int, shard: int) -> PipelineConfig:
    judge_endpoint = ModelEndpoint(backend="openai", model=MODEL, base_urls=[url], max_in_flight=in_flight,
                                   max_retries=3)
    return PipelineConfig(name="bench-filter", seed_tasks=REPO / "data" / "seed_tasks.jsonl", teacher=judge_endpoint,
                          filter=FilterConfig(threshold=4.5, requests_per_shard=shard))


class CountingSender:
    """The stage's own sender (send_shard: several shards in flight), calling on_shard(count)
    with each shard's outcome count as the stage takes them."""

    def __init__(self, on_shard):
        self.on_shard = on_shard

    def __call__(self, *args):
        return next(iter(self.send_many(*args[:4], [args[4]])))

    def send_many(self, *args):
        for outcomes in send_shard.send_many(*args):
            self.on_shard(len(outcomes))
            yield outcomes


def one_shard_at_a_time(on_shard=None):
    """A sender without `send_many`: pipeline.requests.send_shards then sends each shard after
    the one before has come back (--one-shard-at-a-time)."""
    def send(*args):
        outcomes = send_shard(*args)
        if on_shard:
            on_shard(len(outcomes))
        return outcomes
    return send


def run_filter_stage(url: str, records_path: Path, root: Path, in_flight: int, shard: int,
                     on_shard=None, one_at_a_time: bool = False) -> tuple[dict, float, float]:
    """The filter stage on a fresh run directory whose generated.jsonl is records_path; (summary, wall, cpu)."""
    rundir = RunDir(root).create()
    os.link(records_path, rundir.generated)
    config = make_config(url, in_flight, shard)
    if one_at_a_time:
        send = one_shard_at_a_time(on_shard)
    else:
        send = CountingSender(on_shard) if on_shard else None
    with open_session(config, root / "bench.yaml", rundir, send=send, progress=False) as context:
        context.models.judge()  # opened before the clock starts
        cpu0, wall0 = time.process_time(), time.perf_counter()
        summary = run_stage(FilterStage(), context, skip_finished=False)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return summary.to_json(), wall, cpu


def run_direct(url: str, records: list[dict], in_flight: int, journal_path: Path) -> tuple[dict, float, float]:
    """rating_requests + run_requests + apply_ratings; (counts, wall, cpu)."""
    template = prompts.load_template(rate.RATING_TEMPLATE)
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


# The steps of the filter stage, as (module or class, attribute, label): wrapped to log RSS
# around them. Each is looked up by name where it is called, so the wrapper is what runs.
STEP_SELECTION = "selection (keep-or-drop rule)"
STEP_HISTOGRAM = "score_histogram_png"
STEP_EXPORT = "export_filtered"
STEP_MERGE = "RunDir.merge_rejections"
STEPS = [
    (filter_module, "checked_generated", "checked_generated (check generated.jsonl)"),
    (judge, "rate_in_shards", "rate_in_shards (-> rated.jsonl)"),
    (judge, "selection", STEP_SELECTION),
    (histogram, "score_histogram_png", STEP_HISTOGRAM),
    (judge, "kept_rated", "kept_rated (-> filtered.jsonl)"),
    (filter_module, "export_filtered", STEP_EXPORT),
    (RunDir, "merge_rejections", STEP_MERGE),
]


@contextlib.contextmanager
def wrapped_steps(log: list, before=None, sampler: RssSampler | None = None):
    """Wrap the stage's steps so that each logs (label, RSS at entry, RSS at exit, seconds,
    peak RSS inside, sampler marks at entry and exit). A generator step (kept_rated) is timed
    from its first record to its last, its consumer's work included."""
    originals = []
    for owner, name, label in STEPS:
        original = getattr(owner, name)
        originals.append((owner, name, original))

        def make(original=original, label=label):
            def enter():
                if before:
                    before(label)
                return rss_mb(), time.perf_counter(), sampler.mark() if sampler else 0

            def leave(entry, started, first):
                exit_ = rss_mb()
                last = sampler.mark() if sampler else 0
                inside = max(entry, exit_, sampler.peak(first, last) if sampler else 0.0)
                log.append((label, entry, exit_, time.perf_counter() - started, inside, first, last))

            if inspect.isgeneratorfunction(original):
                @functools.wraps(original)
                def wrapper(*args, **kwargs):
                    state = enter()
                    yield from original(*args, **kwargs)
                    leave(*state)
            else:
                @functools.wraps(original)
                def wrapper(*args, **kwargs):
                    state = enter()
                    result = original(*args, **kwargs)
                    leave(*state)
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


def frame_locals(function: str, filename: str) -> dict:
    """The local variables of the running frame of `function` (defined in `filename`), for
    sizing what it holds: FilterStage.run ("run", pipeline/stages/filter.py) or
    JudgeFilter.apply ("apply", filters/judge.py)."""
    for thread_frame in sys._current_frames().values():
        frame = thread_frame
        while frame is not None:
            if frame.f_code.co_name == function and frame.f_code.co_filename == filename:
                return dict(frame.f_locals)
            frame = frame.f_back
    return {}


def sizes_of_locals(where: str, function: str, filename: str, names: list[str]) -> list[tuple[str, float]]:
    """Deep sizes (MB) of a running frame's big locals, in the order given, each named
    `where.name`; an object shared by several is counted with the first."""
    local = frame_locals(function, filename)
    seen: set = set()
    return [(f"{where}.{name}", deep_size(local[name], seen) / 2**20) for name in names if name in local]


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
    ap.add_argument("--ifd-n", type=int, default=48, help="alpaca records scored by filters.ifd (0: skip; default 48)")
    ap.add_argument("--ifd-threads", type=int, default=1, help="torch threads for IFD scoring (default 1)")
    ap.add_argument("--ifd-batch", type=int, default=8, help="IFD batch size in sequences (default 8)")
    ap.add_argument("--no-plant", action="store_true", help="do not plant scores: every echo reply is unscored")
    ap.add_argument("--one-shard-at-a-time", action="store_true",
                    help="send the stage's shards one after another instead of with the stage's own sender "
                         "(several in flight); how this benchmark sent them before the stage pipelined its shards")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-trace", action="store_true")
    args = ap.parse_args(argv)
    plant = not args.no_plant

    load = os.getloadavg()
    print(f"{machine_line()}; load average at start {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          f"scores {'planted' if plant else 'not planted (all unscored)'}; the stage's shards sent "
          f"{'one at a time' if args.one_shard_at_a_time else 'by its own sender (several in flight)'}")
    alpaca = load_alpaca()
    rows: list[tuple] = []
    mem_rows: list[tuple] = []
    trace_rows: list[tuple] = []
    held_rows: list[tuple] = []
    ifd_rows: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmpdir:
        tmp = Path(tmpdir)
        server = start_katan("--max-concurrent", "1024", stats_file=tmp / "katan-stats.json", workers=args.workers)
        url = server.url
        print(f"server: {' '.join([Path(server.command[0]).name] + server.command[1:])}")
        try:
            # ------------------------------------------------------------- (a) throughput
            if not args.skip_throughput:
                records = as_generated(synthetic_records(alpaca, args.n), plant, "tp")
                records_path = tmp / "tp-generated.jsonl"
                write_jsonl(records_path, records)
                variants = {
                    "direct": f"rating_requests + run_requests ({args.in_flight} in flight) + apply_ratings",
                    "stage/16": f"filter stage, requests_per_shard 16, judge max_in_flight {args.in_flight}",
                    "stage/256": f"filter stage, requests_per_shard 256 (default), judge max_in_flight "
                                 f"{args.in_flight}",
                    f"stage/{args.shard}": f"filter stage, requests_per_shard {args.shard}, judge max_in_flight "
                                           f"{args.in_flight}",
                }
                print(f"\n[a] {args.n} records per run; 1 warm-up + {args.repeats} timed rounds, rotating order")
                timings: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
                counter = 0

                def one(name: str, label: str, timed: bool) -> None:
                    nonlocal counter
                    counter += 1
                    server0 = server.cpu_seconds()
                    if name == "direct":
                        counts, wall, cpu = run_direct(url, records, args.in_flight, tmp / f"direct-{counter}.jsonl")
                        kept = None
                    else:
                        shard = int(name.split("/")[1])
                        summary, wall, cpu = run_filter_stage(url, records_path, tmp / f"run-{counter}",
                                                              args.in_flight, shard,
                                                              one_at_a_time=args.one_shard_at_a_time)
                        counts, kept = summary["counts"], summary["kept"]
                    server_cpu = server.cpu_seconds() - server0
                    scored = sum(v for k, v in counts.items() if k.startswith("score:"))
                    print(f"    {label:<8} {name:<12} {args.n / wall:6.0f} records/s  {wall:6.2f} s  client "
                          f"{cpu / args.n * 1e6:5.0f} us CPU/record  server {server_cpu / args.n * 1e6:5.0f} us "
                          f"CPU/record  scored {scored}" + (f"  kept {kept}" if kept is not None else ""), flush=True)
                    if timed:
                        timings[name].append((args.n / wall, cpu / args.n, server_cpu / args.n))

                interleaved_rounds(list(variants), args.repeats, one)
                for name, label in variants.items():
                    rate_, cpu, server_cpu = medians(timings[name])
                    rows.append((label, f"{rate_:.0f}", f"{cpu * 1e6:.0f} us", f"{server_cpu * 1e6:.0f} us"))
                del records

            # ------------------------------------------------------------- (b) memory
            if not args.skip_memory:
                records_path = tmp / "mem-generated.jsonl"
                write_jsonl(records_path, as_generated(synthetic_records(alpaca, args.memory_n), plant, "mem"))
                size_mb = records_path.stat().st_size / 2**20
                del alpaca[:]
                gc.collect()
                malloc_trim()
                print(f"\n[b] memory: {args.memory_n} records ({size_mb:.1f} MB of JSONL) through the filter stage, "
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
                    summary, wall, _ = run_filter_stage(url, records_path, tmp / "mem-run", args.in_flight,
                                                        args.memory_shard, on_shard=on_shard,
                                                        one_at_a_time=args.one_shard_at_a_time)
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
                # index (core.records.Journal keeps it so that a rerun finds every paid reply).
                with Journal(RunDir(tmp / "mem-run").journal("rate")) as journal:
                    index_mb = deep_size(journal._offsets, set()) / 2**20
                other = last_rss - first_rss - index_mb
                print(f"    of which the rate journal's key index {index_mb:.1f} MB "
                      f"({index_mb * 2**20 / len(journal):.0f} bytes/record); the rest {other:+.1f} MB")
                print("    RSS around each step of the filter stage (entry -> exit, peak inside), and in the "
                      "stage's own code between steps:")
                previous = None
                for label, entry, exit_, seconds, inside, first, last in steps:
                    if previous is not None and abs(entry - previous[2]) >= 1:
                        gap_peak = max(previous[2], entry, sampler.peak(previous[6], first))
                        gap = f"(between {previous[0].split(' ')[0]} and {label.split(' ')[0]})"
                        print(f"      {gap:<58} {previous[2]:8.1f} -> {entry:8.1f} MB  ({entry - previous[2]:+7.1f})  "
                              f"peak {gap_peak:7.1f}")
                        gaps.append((gap, entry - previous[2], gap_peak))
                    print(f"      {label:<58} {entry:8.1f} -> {exit_:8.1f} MB  ({exit_ - entry:+7.1f})  "
                          f"peak {inside:7.1f}  {seconds:6.2f} s")
                    previous = (label, entry, exit_, seconds, inside, first, last)
                print(f"    RSS after the stage returned {after_return:.1f} MB; after gc + malloc_trim "
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
                        mem_rows.append((f"step {label}",
                                         f"{exit_ - entry:+.0f} MB (peak inside {inside - entry:+.0f})"))
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
                print(f"\n[c] tracemalloc: {args.trace_n} records through the filter stage (requests_per_shard "
                      f"{args.shard}); live allocations by innermost repository frame")
                snapshots: dict[str, tracemalloc.Snapshot] = {}
                held: list[tuple[str, float]] = []

                def snap(label: str) -> None:
                    if label in (STEP_SELECTION, STEP_EXPORT) and label not in snapshots:
                        gc.collect()  # count what is held, not garbage waiting for the collector
                        snapshots[label] = tracemalloc.take_snapshot()
                    # The rating tally lives in JudgeFilter.apply until it returns; the stream of
                    # kept records and the drop counts in FilterStage.run until the end.
                    if label == STEP_HISTOGRAM and not any(name.startswith("JudgeFilter") for name, _ in held):
                        held.extend(sizes_of_locals("JudgeFilter.apply", "apply", judge.__file__, ["tally"]))
                    if label == STEP_EXPORT and not any(name.startswith("FilterStage") for name, _ in held):
                        held.extend(sizes_of_locals("FilterStage.run", "run", filter_module.__file__,
                                                    ["records", "drop_counts"]))

                tracemalloc.start(25)
                try:
                    with wrapped_steps([], snap):
                        run_filter_stage(url, records_path, tmp / "trace-run", args.in_flight, args.shard,
                                         one_at_a_time=args.one_shard_at_a_time)
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
                    if label == STEP_EXPORT:
                        trace_rows += [(where, f"{size / args.trace_n:.0f}", f"{size / total:.0%}")
                                       for where, size, _ in groups[:10]]
                print(f"    the stage's locals (deep size; an object shared by several is counted with the first): "
                      f"JudgeFilter.apply's at the entry of {STEP_HISTOGRAM}, FilterStage.run's at the entry of "
                      f"{STEP_EXPORT}:")
                for name, mb in held:
                    print(f"      {name:<28} {mb:8.1f} MB  ({mb * 2**20 / args.trace_n:6.0f} bytes/record)")
                    held_rows.append((f"`{name}`", f"{mb * 2**20 / args.trace_n:.0f}"))
        finally:
            server.stop()

    # ----------------------------------------------------------------- (d) IFD scoring cost
    if args.ifd_n:
        import torch

        from filters.ifd import ifd_scores, load_ifd_model, select_by_ifd

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

    tables = [
        ((f"path ({args.n} records, median of {args.repeats})", "records/s", "client CPU / record",
          "server CPU / record"), rows),
        ((f"memory: {args.memory_n:,} records through the filter stage", "value"), mem_rows),
        ((f"live at {STEP_EXPORT} ({args.trace_n:,} records, tracemalloc): allocated in", "bytes / record",
          "share"), trace_rows),
        (("IFD (filters/ifd.py)", "value"), ifd_rows),
        ((f"stage local at the step's entry ({args.trace_n:,} records)", "bytes / record"), held_rows),
    ]
    for header, table_rows in tables:
        if table_rows:
            print("\n" + markdown_table(header, table_rows))
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
