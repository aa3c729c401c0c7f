"""How many threads the embedded llama.cpp server should use: its speed at 1 thread and at one per
core, on a quiet machine and with one core kept busy by another process, for docs/benchmarks.md
and the `teacher.threads` setting.

Two workloads, each through the chat completions API, greedy, one request at a time:

- rating (prompt-heavy): the AlpaGasus rating prompt (`prompts/rate_pair.txt`) over the Alpaca
  records with the longest outputs among the first 400 of ../shared/data/alpaca_5000.json,
  max_tokens 48 (the demo's ratings: about 460 prompt and 32 completion tokens each);
- answering (decode-heavy): the first vicuna_80 questions, max_tokens 128.

"busy": a second process spins on one core for the whole measurement, as other work on the
machine would (a training run, another server).

Usage: .venv/bin/python -m bench.bench_embedded_threads [-n 8] [--threads 1,2] [--no-busy]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path

import httpx

import prompts
from backends.embedded_server import EmbeddedServer
from bench.harness import machine_line, markdown_table, shared_data_dir
from eval.sets import load_eval_set


def _spin(stop) -> None:
    while not stop.is_set():
        pass


def _rating_messages(n: int) -> list[str]:
    records = json.loads((shared_data_dir() / "alpaca_5000.json").read_text(encoding="utf-8"))[:400]
    longest = sorted(records, key=lambda r: len(r["output"]), reverse=True)[:n]
    template = prompts.load_template("rate_pair")
    return [template.format(instruction=r["instruction"], input=r.get("input", ""), output=r["output"])
            for r in longest]


def _answer_messages(n: int) -> list[str]:
    return [item["instruction"] for item in load_eval_set("vicuna_80", Path("unused"))[:n]]


def _measure(base_url: str, messages: list[str], max_tokens: int) -> tuple[float, int, int]:
    prompt_tokens = completion_tokens = 0
    started = time.perf_counter()
    for message in messages:
        reply = httpx.post(f"{base_url}/chat/completions", timeout=600, json={
            "messages": [{"role": "user", "content": message}], "max_tokens": max_tokens, "temperature": 0.0})
        reply.raise_for_status()
        usage = reply.json()["usage"]
        prompt_tokens += usage["prompt_tokens"]
        completion_tokens += usage["completion_tokens"]
    return time.perf_counter() - started, prompt_tokens, completion_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=8, help="requests per workload")
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}")
    parser.add_argument("--no-busy", action="store_true", help="skip the runs with one core kept busy")
    args = parser.parse_args()
    workloads = {"rating": (_rating_messages(args.n), 48), "answering": (_answer_messages(args.n), 128)}
    rows = []
    for busy in (False,) if args.no_busy else (False, True):
        for threads in (int(t) for t in args.threads.split(",")):
            stop = multiprocessing.Event()
            spinner = multiprocessing.Process(target=_spin, args=(stop,), daemon=True) if busy else None
            with EmbeddedServer(context_length=4096, threads=threads) as server:
                _measure(server.base_url, ["Say hi."], 4)  # warm-up
                if spinner:
                    spinner.start()
                try:
                    for name, (messages, max_tokens) in workloads.items():
                        wall, prompt_tokens, completion_tokens = _measure(server.base_url, messages, max_tokens)
                        rows.append([name, "one core busy" if busy else "quiet", threads, len(messages),
                                     f"{wall:.1f}", f"{wall / len(messages):.2f}", prompt_tokens, completion_tokens])
                        print(*rows[-1], flush=True)
                finally:
                    if spinner:
                        stop.set()
                        spinner.join()
    print()
    print(machine_line())
    print(markdown_table(["workload", "machine", "threads", "requests", "wall s", "s per request", "prompt tokens",
                          "completion tokens"], rows))


if __name__ == "__main__":
    main()
