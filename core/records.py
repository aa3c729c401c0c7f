"""Reading and writing record files safely.

Readers name the file, line and field of whatever is wrong. Whole-file writers write a
temporary file and rename it, so a failed run never leaves a half-written file. Journals
(files that grow as results arrive) are appended line by line and flushed; a torn last
line left by a kill is cut off before the journal is read or appended to again.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator


class RecordError(ValueError):
    """A record file that cannot be used; the message names the file, line and field."""


# No record, journal entry or teacher reply comes near this; a longer line is a broken file,
# and reading it whole could take gigabytes (a file with no newline at all is one line).
MAX_LINE_BYTES = 16 * 1024 * 1024


def _raw_lines(path: Path, handle: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, bytes) of an open file, never holding more than MAX_LINE_BYTES of one line."""
    number = 0
    while True:
        raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            raise RecordError(f"{path}:{number}: line longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB "
                              "(a broken file, or not JSONL); not read")
        yield number, raw


def _decode_line(path: Path, number: int, raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path}:{number}: not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}:{number}: malformed JSON: {exc.msg} (column {exc.colno})") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, value) for each non-blank line of a JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: file not found")
    with path.open("rb") as handle:
        for number, raw in _raw_lines(path, handle):
            if raw.strip():
                yield number, _decode_line(path, number, raw)


def check_fields(path: Path, where: str, value: Any, required: Iterable[str], optional: Iterable[str] = ()) -> dict:
    """Check that a record is an object whose named fields are strings; return it."""
    if not isinstance(value, dict):
        raise RecordError(f"{path}:{where}: expected a JSON object, got {type(value).__name__}")
    for field in required:
        if field not in value:
            raise RecordError(f"{path}:{where}: missing field '{field}'")
        if not isinstance(value[field], str):
            raise RecordError(f"{path}:{where}: field '{field}' must be a string, got {type(value[field]).__name__}")
    for field in optional:
        if field in value and not isinstance(value[field], str):
            raise RecordError(f"{path}:{where}: field '{field}' must be a string, got {type(value[field]).__name__}")
    return value


def read_records(
    path: str | Path, required: Iterable[str] = ("instruction",), optional: Iterable[str] = ("input", "output")
) -> list[dict]:
    """Read records from JSONL or from a JSON list, checking their fields."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: file not found")
    with path.open("rb") as handle:
        head = handle.read(4096).lstrip()
    if head.startswith(b"["):
        try:
            items = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise RecordError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise RecordError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg} (column {exc.colno})") from None
        located = [(f"item {index}", item) for index, item in enumerate(items)]
    else:
        located = [(str(number), value) for number, value in iter_jsonl(path)]
    if not located:
        raise RecordError(f"{path}: no records (the file is empty)")
    return [check_fields(path, where, value, required, optional) for where, value in located]


def read_seed_tasks(path: str | Path) -> list[dict]:
    """Read Alpaca's seed_tasks.jsonl as records {instruction, input, output, is_classification}."""
    path = Path(path)
    seeds = []
    for number, value in iter_jsonl(path):
        check_fields(path, str(number), value, required=("instruction",))
        instances = value.get("instances")
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            raise RecordError(f"{path}:{number}: field 'instances' must be a non-empty list of objects")
        check_fields(path, f"{number} (instances[0])", instances[0], required=("input", "output"))
        seeds.append(
            {
                "instruction": value["instruction"],
                "input": instances[0]["input"],
                "output": instances[0]["output"],
                "is_classification": bool(value.get("is_classification", False)),
            }
        )
    if not seeds:
        raise RecordError(f"{path}: no seed tasks (the file is empty)")
    return seeds


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Yield a handle on a temporary file beside `path`; on success it replaces `path`, on
    any failure it is removed and `path` is left as it was. `mode` is "w" (UTF-8) or "wb"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        text = {"encoding": "utf-8", "newline": "\n"} if "b" not in mode else {}
        with os.fdopen(fd, mode, **text) as handle:
            os.fchmod(handle.fileno(), 0o644)  # mkstemp's 0600 would carry over to the output
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, text: str) -> None:
    """Write text to a temporary file beside path, then rename it over path."""
    with atomic_file(path) as handle:
        handle.write(text)


def write_json(path: str | Path, value: Any) -> None:
    """Write one JSON document atomically."""
    write_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    """Write records as JSONL atomically, one line at a time."""
    with atomic_file(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def repair_torn_tail(path: str | Path) -> int:
    """Cut off a last line that has no newline (a write cut short by a kill); return bytes cut."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 1))
        if handle.read(1) == b"\n":
            return 0
        # Walk back to the last newline; everything after it is the torn line.
        position = size
        block = 65536
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            chunk = handle.read(position - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            position = start
        else:
            keep = 0
        handle.truncate(keep)
        return size - keep


class Journal:
    """A JSONL file that results are appended to as they arrive, and read back on resume.

    Only each entry's key and byte offset stay in memory; entries are read back from disk
    when asked for, so memory stays flat however long the journal grows.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self._offsets: dict[str, int] = {}
        if self.path.exists():
            with self.path.open("rb") as handle:
                offset = 0
                for number, raw in _raw_lines(self.path, handle):
                    if raw.strip():
                        entry = _decode_line(self.path, number, raw)
                        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
                            raise RecordError(f"{self.path}:{number}: journal entry without a string field 'key'")
                        self._offsets[entry["key"]] = offset
                    offset += len(raw)
        self._handle = self.path.open("ab")

    def __contains__(self, key: str) -> bool:
        return key in self._offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def get(self, key: str) -> dict:
        """The entry stored under key."""
        with self.path.open("rb") as handle:
            handle.seek(self._offsets[key])
            return json.loads(handle.readline())

    def entries(self) -> Iterator[dict]:
        """Every entry, in the order written (the last one wins for a repeated key)."""
        for key in self._offsets:
            yield self.get(key)

    def append(self, entry: dict) -> None:
        """Append one entry and flush it to the OS, so a kill loses at most the line being written."""
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        offset = self._handle.seek(0, os.SEEK_END)
        self._handle.write(line)
        self._handle.flush()
        self._offsets[entry["key"]] = offset

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
