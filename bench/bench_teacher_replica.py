"""Requests per second of one embedded teacher replica (llama.cpp serving SmolLM2-135M) on
the generate stage's own requests, for docs/scale.md.

Sends the first N self-instruct requests of a config (the real prompts, the config's
max_tokens) through the project's request path at a few windows in flight, and prints
requests/s, completion tokens/s and the mean completion length per window.

Usage: .venv/bin/python -m bench.bench_teacher_replica [--config configs/demo.yaml] [-n 8] [--windows 1,2]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from backends.registry import open_chat_backend  # noqa: E402
from backends.runner import run_requests  # noqa: E402
from bench.harness import markdown_table  # noqa: E402
from core.records import Journal, read_seed_tasks  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from selfinstruct.generate import SelfInstructRun  # noqa: E402
from selfinstruct.prompt import load_template  # noqa: E402

log = logging.getLogger("bench.teacher_replica")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("-n", type=int, default=8, help="requests per window setting")
    parser.add_argument("--windows", default="1,2", help="requests in flight to try")
    parser.add_argument("--max-tokens", type=int, default=None, help="override generate.max_tokens")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    overrides = [f"generate.max_tokens={args.max_tokens}"] if args.max_tokens else []
    config = load_config(args.config, overrides)
    run = SelfInstructRun(config.generate, read_seed_tasks(config.seed_tasks), load_template(config.generate.reply_format))
    with tempfile.TemporaryDirectory() as scratch, open_chat_backend(config.teacher, Path(scratch)) as teacher:
        # One warm-up request: the model is loaded and its first prompt evaluated.
        run_requests(teacher, [run.request(10_000)], Journal(Path(scratch) / "warm.jsonl"))
        print(f"teacher: {teacher.identity}; max_tokens {config.generate.max_tokens}; "
              f"{args.n} requests per setting; cores: {os.cpu_count()}; load avg {os.getloadavg()[0]:.1f}")
        rows, failures = [], []
        for offset, window in enumerate(int(w) for w in args.windows.split(",")):
            requests = [run.request(offset * args.n + i) for i in range(args.n)]
            started = time.perf_counter()
            outcomes, stats = run_requests(teacher, requests, Journal(Path(scratch) / f"w{window}.jsonl"),
                                           max_in_flight=window)
            wall = time.perf_counter() - started
            tokens = sum(o.completion_tokens for o in outcomes if o.ok)
            if stats.failed:
                error = next(o.error for o in outcomes if not o.ok)
                failures.append(f"in flight {window}: {stats.failed} of {args.n} requests failed ({error})")
            rows.append((window, f"{stats.succeeded / wall:.3f}", f"{tokens / wall:.1f}",
                         f"{tokens / max(stats.succeeded, 1):.0f}", f"{wall:.1f}"))
        print(markdown_table(("in flight", "requests/s", "completion tokens/s", "mean completion tokens", "wall s"),
                             rows))
        for failure in failures:
            print(failure)


if __name__ == "__main__":
    main()
