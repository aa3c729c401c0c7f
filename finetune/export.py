"""Export instruction records in the layouts fine-tuning tools read.

Three formats, all of them written atomically, so an export that fails part-way (a bad
record, a full disk, a kill) leaves whatever was at the destination before untouched and
no half-written file behind:

* ``alpaca``: one JSON list of ``{"instruction", "input", "output"}`` objects, the layout
  of Stanford Alpaca's ``alpaca_data.json`` (4-space indent, keys in that order, a missing
  input written as ``""``). Written to a temporary file beside the destination, fsynced,
  then renamed over it.
* ``chat``: JSONL, one ``{"messages": [...]}`` conversation per record: an optional system
  turn, the user turn (the instruction, then the input after a blank line, exactly as
  ``student.prompt_format.chat_user_message`` builds it for training and evaluation), and
  the assistant turn holding the output. This is the conversational layout trl's
  ``SFTTrainer`` accepts. Same temporary-file-and-rename write.
* ``hf``: a ``datasets.Dataset`` with the string columns instruction, input and output,
  saved with ``save_to_disk``. The dataset is built in a temporary directory beside the
  destination and renamed into place; an existing destination is first renamed aside and
  only deleted once the new one is in place (it is put back if that rename fails). To
  guard against deleting something that is not ours, an existing destination is replaced
  only when it is an empty directory or a directory that ``save_to_disk`` wrote.

Only the three Alpaca fields are exported; bookkeeping fields (id, scores, parent ids) are
dropped. A record without a string ``instruction`` or ``output``, or with a non-string
``input``, fails the export with its position named.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from core.records import atomic_file, fsync_dir
from student.prompt_format import chat_user_message

__all__ = [
    "EXPORT_FORMATS",
    "DEFAULT_FILENAMES",
    "ExportError",
    "alpaca_record",
    "chat_messages",
    "export_alpaca_json",
    "export_chat_jsonl",
    "export_hf_dataset",
    "export_records",
]

EXPORT_FORMATS: tuple[str, ...] = ("alpaca", "chat", "hf")

# Suggested names under a run directory's export folder, one per format.
DEFAULT_FILENAMES = {"alpaca": "alpaca_data.json", "chat": "chat.jsonl", "hf": "hf_dataset"}

FIELDS = ("instruction", "input", "output")

# Files `Dataset.save_to_disk` always writes; a directory holding both is one we may replace.
_HF_MARKERS = ("dataset_info.json", "state.json")


class ExportError(ValueError):
    """A record that cannot be exported, or a destination that must not be replaced."""


def alpaca_record(record: dict, position: int = 0) -> dict:
    """The record's three Alpaca fields, in Alpaca's key order; a missing input becomes ""."""
    if not isinstance(record, dict):
        raise ExportError(f"record {position}: expected an object, got {type(record).__name__}")
    out = {}
    for name in FIELDS:
        value = record.get(name)
        if value is None and name == "input":
            value = ""
        if not isinstance(value, str):
            problem = "missing" if value is None else f"a {type(value).__name__}, not a string"
            raise ExportError(f"record {position}: field '{name}' is {problem}")
        out[name] = value
    return out


def chat_messages(record: dict, system_prompt: str | None = None, position: int = 0) -> list[dict]:
    """The conversation for one record: [system], user (instruction + input), assistant (output)."""
    fields = alpaca_record(record, position)
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": chat_user_message(fields["instruction"], fields["input"])})
    messages.append({"role": "assistant", "content": fields["output"]})
    return messages


def export_alpaca_json(records: Iterable[dict], path: str | Path) -> int:
    """Write records as Alpaca's data file (a JSON list); return how many were written."""
    path = Path(path)
    count = 0
    with atomic_file(path) as handle:
        handle.write("[")
        for position, record in enumerate(records):
            item = json.dumps(alpaca_record(record, position), indent=4, ensure_ascii=False)
            handle.write(("," if count else "") + "\n    " + item.replace("\n", "\n    "))
            count += 1
        handle.write("\n]\n" if count else "]\n")
    return count


def export_chat_jsonl(records: Iterable[dict], path: str | Path, system_prompt: str | None = None) -> int:
    """Write records as JSONL conversations ({"messages": [...]}); return how many were written."""
    path = Path(path)
    count = 0
    with atomic_file(path) as handle:
        for position, record in enumerate(records):
            line = json.dumps({"messages": chat_messages(record, system_prompt, position)}, ensure_ascii=False)
            handle.write(line + "\n")
            count += 1
    return count


def _is_replaceable_dataset_dir(path: Path) -> bool:
    if not path.is_dir() or path.is_symlink():
        return False
    names = {child.name for child in path.iterdir()}
    return not names or all(marker in names for marker in _HF_MARKERS)


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(root)


def export_hf_dataset(records: Iterable[dict], directory: str | Path) -> int:
    """Save records as a `datasets.Dataset` (columns instruction, input, output) at
    `directory`, replacing an earlier export there; return how many were written."""
    import datasets  # heavy import: only when this format is asked for

    directory = Path(directory)
    if directory.exists() or directory.is_symlink():
        if not _is_replaceable_dataset_dir(directory):
            raise ExportError(
                f"{directory}: exists and is not a dataset saved by save_to_disk (nor an empty "
                "directory); refusing to replace it"
            )
    columns: dict[str, list[str]] = {name: [] for name in FIELDS}
    for position, record in enumerate(records):
        fields = alpaca_record(record, position)
        for name in FIELDS:
            columns[name].append(fields[name])
    features = datasets.Features({name: datasets.Value("string") for name in FIELDS})

    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    aside: Path | None = None
    try:
        dataset = datasets.Dataset.from_dict(columns, features=features)
        target = staging / "dataset"  # save_to_disk wants to create its directory itself
        # One shard when empty: with zero shards `load_from_disk` cannot read it back.
        dataset.save_to_disk(str(target), num_shards=1 if len(dataset) == 0 else None)
        _fsync_tree(target)
        if directory.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent))
            os.replace(directory, aside / "dataset")
        try:
            os.replace(target, directory)
        except BaseException:
            if aside is not None:
                os.replace(aside / "dataset", directory)  # put the earlier export back
            raise
        fsync_dir(directory.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return len(columns["instruction"])


def export_records(records: Iterable[dict], fmt: str, path: str | Path, *, system_prompt: str | None = None) -> int:
    """Export in the named format ("alpaca", "chat" or "hf"); return how many records were written.
    `system_prompt` is used by the chat format only."""
    if fmt == "alpaca":
        return export_alpaca_json(records, path)
    if fmt == "chat":
        return export_chat_jsonl(records, path, system_prompt=system_prompt)
    if fmt == "hf":
        return export_hf_dataset(records, path)
    raise ExportError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
