"""The run directory: where every stage reads its input and writes its output.

Each stage ends by writing a summary to `stages/<name>.json`; a rerun of the same config
and run directory skips the stages that have one. A stage's own journals and scratch files
live under `work/`. Which stages exist, and in what order, is the pipeline's business
(`pipeline.stages.STAGES`): this module only names paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
from pathlib import Path
from typing import Iterable, Iterator

from core.records import atomic_file, write_json, write_jsonl


class RunDirBusy(RuntimeError):
    """Another process is running in this run directory."""


class RunDir:
    """Named paths inside one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.generated = self.root / "generated.jsonl"
        self.rejected = self.root / "rejected.jsonl"
        self.rated = self.root / "rated.jsonl"
        self.filtered = self.root / "filtered.jsonl"
        self.train = self.root / "train.jsonl"
        self.heldout = self.root / "heldout.jsonl"
        self.adapter = self.root / "adapter"
        self.eval_dir = self.root / "eval"
        self.report_json = self.root / "report.json"
        self.report_md = self.root / "report.md"
        self.manifest = self.root / "manifest.json"
        self.work = self.root / "work"
        self.logs = self.root / "logs"
        self.stages = self.root / "stages"

    def create(self) -> "RunDir":
        for folder in (self.root, self.work, self.logs, self.stages):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    @contextlib.contextmanager
    def locked(self) -> Iterator["RunDir"]:
        """Hold the run directory for one process: a second run on it stops with a clear error."""
        self.create()
        with (self.root / ".lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunDirBusy(f"{self.root} is in use by another run; wait for it or use another --run-dir") from None
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def journal(self, name: str) -> Path:
        """A stage's request journal."""
        return self.work / f"{name}_requests.jsonl"

    def stage_summary(self, stage: str) -> dict | None:
        """The summary a finished stage wrote, or None if it has not finished."""
        path = self.stages / f"{stage}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def mark_done(self, stage: str, summary: dict) -> None:
        write_json(self.stages / f"{stage}.json", summary)

    def stage_rejections(self, stage: str) -> Path:
        """Where one stage's rejections are kept (rejected.jsonl merges every stage's)."""
        return self.work / f"rejected_{stage}.jsonl"

    def rejection_spool(self, stage: str) -> "RejectionSpool":
        """A scratch file that collects a running stage's rejections as they happen."""
        return RejectionSpool(self.work / f"rejected_{stage}.spool.jsonl")

    def write_rejections(self, stage: str, rejections: Iterable[dict]) -> None:
        """Store one stage's rejections (any iterable, written as it is read); `merge_rejections`
        then rebuilds rejected.jsonl from every stage's."""
        write_jsonl(self.stage_rejections(stage), rejections)

    def merge_rejections(self, stage_order: Iterable[str]) -> None:
        """Rebuild rejected.jsonl from every stage's rejections, in `stage_order`, line by line
        (nothing is held)."""
        with atomic_file(self.rejected, "wb") as merged:
            for name in stage_order:
                path = self.stage_rejections(name)
                if path.is_file():
                    with path.open("rb") as part:
                        shutil.copyfileobj(part, merged)


class RejectionSpool:
    """A stage's rejections written to disk as they happen, so a long run holds none of them
    in memory; read back once (streamed) when the stage stores them. Starts empty each run."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", encoding="utf-8")
        self._count = 0

    def append(self, rejection: dict) -> None:
        self._file.write(json.dumps(rejection, ensure_ascii=False) + "\n")
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[dict]:
        self._file.flush()
        with self.path.open(encoding="utf-8") as lines:
            for line in lines:
                yield json.loads(line)

    def close(self) -> None:
        """Drop the scratch file (its contents are stored by then, or the stage failed)."""
        self._file.close()
        self.path.unlink(missing_ok=True)
