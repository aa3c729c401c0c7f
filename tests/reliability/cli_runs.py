"""What the reliability tests share: writing a config, running the real `distill` command,
reading what it wrote, and checking that every request of a run is accounted for once."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DISTILL = str(Path(sys.executable).parent / "distill")
SEEDS = REPO / "data" / "seed_tasks.jsonl"


def write_config(path: Path, **sections) -> Path:
    """A pipeline config with the shipped seed tasks and the given sections."""
    path.write_text(yaml.safe_dump({"name": path.stem, "seed_tasks": str(SEEDS), **sections}, sort_keys=False))
    return path


def openai_teacher(url: str, **settings) -> dict:
    """The `teacher:` section for an OpenAI-compatible server at url."""
    return {"backend": "openai", "model": "echo", "base_urls": [url], **settings}


def run_distill(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `distill` command line in the repository, single-threaded where it can be."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([DISTILL, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def run_dir_with_records(run_dir: Path, instruction: str, count: int) -> list[dict]:
    """A new run directory whose generated.jsonl holds `count` short records, ids r0, r1, ...
    and instructions `instruction` formatted with the number; the records are returned."""
    run_dir.mkdir()
    records = [{"id": f"r{i}", "instruction": instruction.format(i), "input": "", "output": "Blue."}
               for i in range(count)]
    (run_dir / "generated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def katan_answered(url: str) -> int:
    """Chat completions llm-katan answered with 200 (its /metrics counter; faults are not counted)."""
    text = urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=5).read().decode()
    (line,) = [line for line in text.splitlines() if line.startswith("llm_katan_requests_total{")]
    return int(float(line.rsplit(" ", 1)[1]))


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path (to show that nothing was damaged)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def check_generate_accounting(run_dir: Path, requests: int) -> tuple[dict, dict[str, dict]]:
    """Every generation request is in the journal once, as succeeded or failed after its retries;
    the failures are listed in rejected.jsonl; the stage summary counts them and every retry;
    no record appears twice. Returns (summary, journal entries by key)."""
    lines = read_jsonl(run_dir / "work" / "generate_requests.jsonl")
    entries = {e["key"]: e for e in lines}  # the last line of a key is its outcome
    assert sorted(entries) == [f"gen-{i:06d}" for i in range(requests)]
    summary = json.loads((run_dir / "stages" / "generate.json").read_text())
    failed = sorted(key for key, e in entries.items() if not e["ok"])
    assert summary["requests"] == requests
    assert summary["requests_failed"] == summary["faults"]["requests_failed"] == len(failed)
    listed = sorted(r["id"] for r in read_jsonl(run_dir / "rejected.jsonl") if r["reason"] == "request_failed")
    assert listed == failed
    for entry in entries.values():
        assert entry["attempts"] == 1 + len(entry.get("attempt_errors", [])) - (0 if entry["ok"] else 1)
        assert entry["ok"] == ("text" in entry) and entry["ok"] != ("error" in entry)
    assert summary["faults"]["retries"] == sum(e["attempts"] - 1 for e in entries.values())
    assert sum(summary["faults"]["retries_by_kind"].values()) == summary["faults"]["retries"]
    generated = read_jsonl(run_dir / "generated.jsonl")
    assert len({r["id"] for r in generated}) == len(generated) == summary["kept"]
    assert len({r["instruction"] for r in generated}) == len(generated)
    return summary, entries
