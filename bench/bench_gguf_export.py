#!/usr/bin/env python
"""Benchmark: GGUF export of the embedded students with llama.cpp's own converter, and llama.cpp's
quantizer, on this machine.

For each student (SmolLM2-135M-Instruct and Gemma 3 270M, their plain Hugging Face directories
in the cache): wall seconds of ``convert_hf_to_gguf.py`` to F16 (a subprocess, as
``distill export-gguf`` runs it), then of each quantization from that F16 file, and the file
sizes. The converter's own start-up (Python, torch and its modules imported, nothing
converted) is timed separately with ``--help``: every export pays it once.

Usage:  python -m bench.bench_gguf_export [--students embedded,gemma3-270m] [--rounds 1] [--types q8_0,q4_k_m]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import machine_line, markdown_table
from compress.gguf_export import export_gguf, quantize_gguf
from compress.llama_converter import SCRIPT, converter_dir, llama_cpp_version
from student.embedded import ensure_embedded_student

CACHE = Path.home() / ".cache" / "distill"


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", default="embedded,gemma3-270m")
    parser.add_argument("--types", default="q8_0,q4_0,q4_k_m")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    script = converter_dir() / SCRIPT
    startup = [timed(lambda: subprocess.run([sys.executable, str(script), "--help"], check=True,
                                            capture_output=True)) for _ in range(args.rounds)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as tmp:
        for name in args.students.split(","):
            model_dir = ensure_embedded_student(name, CACHE)
            f16 = Path(tmp) / f"{name}-f16.gguf"
            seconds = [timed(lambda: export_gguf(model_dir, f16, "f16")) for _ in range(args.rounds)]
            rows.append([name, "F16 (convert)", f"{statistics.median(seconds):.1f}", f"{f16.stat().st_size / 1e6:.0f}"])
            for gguf_type in args.types.split(","):
                out = Path(tmp) / f"{name}-{gguf_type}.gguf"
                seconds = [timed(lambda: quantize_gguf(f16, out, gguf_type, threads=2)) for _ in range(args.rounds)]
                rows.append([name, f"{gguf_type.upper()} (quantize F16)", f"{statistics.median(seconds):.1f}",
                             f"{out.stat().st_size / 1e6:.0f}"])
    print(f"\nllama-cpp-python {llama_cpp_version()}; converter start-up (--help): "
          f"{statistics.median(startup):.1f} s; median of {args.rounds} round(s)\n{machine_line()}\n")
    print(markdown_table(["student", "step", "seconds", "file MB"], rows))


if __name__ == "__main__":
    main()
