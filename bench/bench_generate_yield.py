"""Generation yield of the embedded teacher: records kept per request and per minute, by strategy.

Each row runs the real `distill run configs/demo.yaml --stages generate` (the embedded
SmolLM2-135M-Instruct served by llama.cpp, two requests in flight) with the same request budget
and one generation setting changed: self-instruct with Alpaca's numbered reply, self-instruct
with `reply_format: json` (the reply constrained to the tasks' JSON schema through llama.cpp's
response_format), and Magpie (the teacher completes its own chat template's user-turn prefix
into a query, then answers it). Kept = records that passed the generation filters; their mean
output length in words says how much each one teaches.

Run: python -m bench.bench_generate_yield [--requests 16] [--only magpie,json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import REPO, machine_line, markdown_table
from core.records import iter_jsonl

SETTINGS = {
    "numbered": ["generate.strategy=self_instruct", "generate.reply_format=numbered"],
    "json": ["generate.strategy=self_instruct", "generate.reply_format=json"],
    "magpie": ["generate.strategy=magpie", "generate.magpie.answer_max_tokens=512"],
}


def run_generate(name: str, requests: int, run_dir: Path) -> dict:
    """One generate stage of the demo with setting `name`; its summary, wall time and load average."""
    overrides = [*SETTINGS[name], f"generate.max_requests={requests}", "generate.target_records=1000"]
    command = [str(Path(sys.executable).parent / "distill"), "run", "configs/demo.yaml", "--run-dir", str(run_dir),
               "--stages", "generate", *(arg for item in overrides for arg in ("--set", item))]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        raise RuntimeError(f"{name}: distill exited {result.returncode}: {result.stderr[-2000:]}")
    summary = json.loads((run_dir / "stages" / "generate.json").read_text())
    words = [len(record["output"].split()) for _, record in iter_jsonl(run_dir / "generated.jsonl")]
    return {**summary, "wall_s": wall, "load": (load + os.getloadavg()[0]) / 2,
            "output_words": sum(words) / len(words) if words else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16, help="generation requests per setting")
    parser.add_argument("--only", default=",".join(SETTINGS), help="comma-separated settings to run")
    args = parser.parse_args()
    print(machine_line())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-yield-") as scratch:
        for name in args.only.split(","):
            summary = run_generate(name, args.requests, Path(scratch) / name)
            requests, kept, minutes = summary["requests"], summary["kept"], summary["wall_s"] / 60
            rows.append([name, requests, summary.get("tasks_parsed"), kept, f"{kept / max(1, requests):.2f}",
                         f"{summary['output_words']:.0f}", f"{summary['wall_s']:.0f}", f"{kept / minutes:.1f}",
                         f"{summary['load']:.1f}"])
            print(rows[-1], flush=True)
    print(markdown_table(["setting", "requests", "tasks parsed", "kept", "kept per request", "output words (mean)",
                          "wall s", "kept per minute", "load average"], rows))


if __name__ == "__main__":
    main()
