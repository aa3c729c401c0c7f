#!/usr/bin/env python
"""Benchmark: decontamination (similarity.decontaminate) of 50,000 records against every shipped
evaluation set (vicuna_80 + self_instruct_252: 332 prompts).

The records: the dedup benchmark's deterministic workload (the 5,000 real Alpaca instructions
plus seeded near-duplicates and rewrites of them, bench.bench_dedup.build_workload), each with
the input of a real record, and 1% planted copies of evaluation prompts (exact, case /
punctuation / whitespace mangled, behind a lead-in sentence), at seeded positions.

(1) In process: indexing the prompts, then checking every record (wall and CPU seconds).
(2) As a whole process: `distill decontaminate` on the records as JSONL (interpreter start,
    reading, checking, writing the kept and the rejected records), wall and CPU of the child.
Both print how many planted copies were caught and how many of the 2,000 first real Alpaca
records were kept.

Usage:  python -m bench.bench_decontaminate [--records 50000] [--planted-share 0.01]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_dedup import build_workload
from bench.harness import machine_line, markdown_table, shared_data_dir
from eval.contamination import decontaminator, prompts_by_set

SETS = ["vicuna_80", "self_instruct_252"]
LEAD_INS = ["Here is a task for you.", "Please answer the following question:", "Quick one.",
            "I was asked this at work today, can you help?"]


def mangle(text: str, rng: random.Random) -> str:
    """Case, punctuation and whitespace changed; the words kept."""
    text = rng.choice([text.upper(), text.lower(), text.title()])
    text = re.sub(r"[.,?!:;]", lambda m: rng.choice(["", " ", m.group(0) * 2]), text)
    return re.sub(r" ", lambda m: rng.choice([" ", "  ", "\n"]), text)


def workload(n: int, planted_share: float, seed: int = 0) -> tuple[list[dict], set[int]]:
    """n records with about `planted_share` of them copies of evaluation prompts; the planted positions."""
    real = json.loads((shared_data_dir() / "alpaca_5000.json").read_text(encoding="utf-8"))
    instructions = build_workload(real, n, seed=seed)
    records = [{"instruction": text, "input": real[i % len(real)].get("input", ""), "output": "..."}
               for i, text in enumerate(instructions)]
    prompts = [p for ps in prompts_by_set(SETS).values() for p in ps]
    rng = random.Random(seed + 1)
    planted = set(rng.sample(range(n), int(n * planted_share)))
    for position in sorted(planted):
        prompt = rng.choice(prompts)
        kind = position % 3
        instruction = (prompt["instruction"] if kind == 0 else mangle(prompt["instruction"], rng) if kind == 1
                       else f"{rng.choice(LEAD_INS)} {prompt['instruction']}")
        records[position] = {"instruction": instruction, "input": prompt["input"], "output": "copied"}
    return records, planted


def in_process(records: list[dict]) -> tuple[float, float, float, list[int]]:
    """Index build seconds, check wall and CPU seconds, positions dropped."""
    started = time.perf_counter()
    checker = decontaminator(prompts_by_set(SETS))
    built = time.perf_counter() - started
    wall, cpu = time.perf_counter(), time.process_time()
    dropped = [i for i, r in enumerate(records) if checker.check(r["instruction"], r["input"]) is not None]
    return built, time.perf_counter() - wall, time.process_time() - cpu, dropped


def whole_process(records: list[dict]) -> tuple[float, float, int]:
    """`distill decontaminate` as a child process: wall and CPU seconds, records kept."""
    with tempfile.TemporaryDirectory() as folder:
        source, out, rejected = (Path(folder) / name for name in ("in.jsonl", "out.jsonl", "rejected.jsonl"))
        source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        command = [str(Path(sys.executable).parent / "distill"), "decontaminate", str(source), "--against",
                   ",".join(SETS), "-o", str(out), "--rejected", str(rejected)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return wall, cpu, sum(1 for _ in out.open(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--planted-share", type=float, default=0.01)
    args = parser.parse_args()
    print(machine_line(), f"; load average at start {os.getloadavg()[0]:.2f}")
    records, planted = workload(args.records, args.planted_share)
    built, wall, cpu, dropped = in_process(records)
    caught = len(planted & set(dropped))
    real = json.loads((shared_data_dir() / "alpaca_5000.json").read_text(encoding="utf-8"))[:2000]
    checker = decontaminator(prompts_by_set(SETS))
    real_kept = sum(1 for r in real if checker.check(r["instruction"], r.get("input", "")) is None)
    process_wall, process_cpu, kept = whole_process(records)
    print(markdown_table(
        ["run", "records", "wall s", "CPU s", "dropped", "planted copies caught"],
        [[f"similarity.decontaminate, index of {len(checker)} prompts", "", f"{built:.3f}", "", "", ""],
         ["similarity.decontaminate, checking", f"{len(records):,}", f"{wall:.3f}", f"{cpu:.3f}",
          f"{len(dropped):,}", f"{caught:,} of {len(planted):,}"],
         ["`distill decontaminate` as a whole process", f"{len(records):,}", f"{process_wall:.3f}",
          f"{process_cpu:.3f}", f"{len(records) - kept:,}", ""]]))
    print(f"\nreal Alpaca records kept: {real_kept:,} of {len(real):,} ({real_kept / len(real):.1%}); "
          f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
