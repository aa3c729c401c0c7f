"""Benchmark scripts, each printing its figures; results are recorded in docs/benchmarks.md.

Run one from the repository root with the project's Python: `.venv/bin/python -m bench.NAME`.
What the scripts share (servers, timing rounds, tables, machine notes) is in `bench.harness`.
"""
