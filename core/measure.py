"""Measuring what a model costs to keep and to run: bytes on disk, parameters, peak memory,
latency and tokens per second."""

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


def process_peak_memory(pid: int | str = "self") -> int | None:
    """A process's resident-memory high-water mark (VmHWM) in bytes, from /proc; None where
    /proc is missing (not Linux) or the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def process_tree_peak_memory(pid: int | str = "self") -> int | None:
    """The VmHWM of a process plus those of its live descendants (a process that left its model to
    child processes, as vLLM's engine core is): their peaks summed, so at least their joint peak."""
    root = process_peak_memory(pid)
    if root is None:
        return None
    parents: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(int(line.split()[1]) for line in status.read_text(encoding="utf-8").splitlines()
                        if line.startswith("PPid:"))
        except (OSError, StopIteration, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(status.parent.name))
    own = int(Path(f"/proc/{pid}").resolve().name) if pid == "self" else int(pid)
    total, queue = root, list(parents.get(own, []))
    while queue:
        child = queue.pop()
        total += process_peak_memory(child) or 0
        queue += parents.get(child, [])
    return total


def reset_peak_memory() -> bool:
    """Reset this process's resident-memory high-water mark (VmHWM) to its current size;
    False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
        return True
    except OSError:
        return False


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank value below which `share` of the values lie (0.5: the median)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def latency_summary(latencies: list[float], completion_tokens: list[int],
                    first_token_s: list[float | None] | None = None) -> dict:
    """Mean, p50 and p95 latency per answer, tokens per second over all answers, and the
    p50 / p95 time to the first token where it was measured."""
    if not latencies:
        return {"answers": 0}
    total_time = sum(latencies)
    summary = {
        "answers": len(latencies),
        "mean_latency_s": round(statistics.fmean(latencies), 4),
        "p50_latency_s": round(statistics.median(latencies), 4),
        "p95_latency_s": round(percentile(latencies, 0.95), 4),
        "tokens_per_s": round(sum(completion_tokens) / total_time, 2) if total_time > 0 else None,
    }
    measured = [t for t in first_token_s or [] if t is not None]
    if measured:
        summary.update(p50_ttft_s=round(statistics.median(measured), 4), p95_ttft_s=round(percentile(measured, 0.95), 4))
    return summary
