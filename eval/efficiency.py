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


def api_cost_per_1k(mean_prompt_tokens: float, mean_completion_tokens: float,
                    price_input_per_mtok: float, price_output_per_mtok: float) -> float:
    """USD for 1,000 answers of an API model: the mean tokens per answer at the endpoint's prices."""
    return 1000 * (mean_prompt_tokens * price_input_per_mtok + mean_completion_tokens * price_output_per_mtok) / 1e6


def local_cost_per_1k(seconds_per_answer: float, hourly_usd: float) -> float:
    """USD for 1,000 answers of a local model: measured machine seconds per answer at an hourly price."""
    return 1000 * seconds_per_answer * hourly_usd / 3600


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


def server_pid_on_port(port: int, program: str = "llama_cpp.server") -> int | None:
    """The pid of the local `program` started with `--port PORT` (the embedded teacher), or None."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            arguments = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in arguments]
        if program in words and "--port" in words and words[words.index("--port") + 1:][:1] == [str(port)]:
            return int(proc.name)
    return None


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Labels of the points no other point beats: `points` maps label to (cost, quality);
    lower cost and higher quality are better. Sorted by cost."""
    front = []
    for label, (cost, quality) in points.items():
        dominated = any(other_cost <= cost and other_quality >= quality
                        and (other_cost, other_quality) != (cost, quality)
                        for other, (other_cost, other_quality) in points.items() if other != label)
        if not dominated:
            front.append(label)
    return sorted(front, key=lambda label: points[label])
