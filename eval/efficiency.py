"""What each model costs to keep and to run: parameters, size on disk, latency."""

from __future__ import annotations

import statistics
from pathlib import Path


def size_on_disk(*paths: Path) -> int:
    """Bytes of every file under the given files or folders."""
    total = 0
    for path in paths:
        path = Path(path)
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return total


def gguf_parameter_count(path: Path) -> int:
    """Parameters stored in a GGUF file (elements of every tensor)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return int(sum(int(tensor.n_elements) for tensor in reader.tensors))


def latency_summary(latencies: list[float], completion_tokens: list[int]) -> dict:
    """Mean, p50 and p95 latency per answer, and tokens per second over all answers."""
    if not latencies:
        return {"answers": 0}
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    total_time = sum(latencies)
    return {
        "answers": len(latencies),
        "mean_latency_s": round(statistics.fmean(latencies), 4),
        "p50_latency_s": round(statistics.median(latencies), 4),
        "p95_latency_s": round(p95, 4),
        "tokens_per_s": round(sum(completion_tokens) / total_time, 2) if total_time > 0 else None,
    }
