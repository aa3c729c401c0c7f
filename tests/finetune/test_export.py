import json
import os

import pytest

from finetune.export import (
    DEFAULT_FILENAMES,
    EXPORT_FORMATS,
    ExportError,
    export_alpaca_json,
    export_chat_jsonl,
    export_hf_dataset,
    export_records,
)

RECORDS = [
    {"id": "gen-000000-00", "instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat well.\n2. Sleep.\n3. Move.", "score": 5.0},
    {"id": "gen-000000-01", "instruction": "Translate the sentence to French.", "input": "Good morning {friend}",
     "output": "Bonjour {ami} \u2014 \u00e7a va?"},
    {"instruction": "Name a prime number greater than 10.", "output": "11"},  # no input field at all
]
EXPECTED = [
    {"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]} for r in RECORDS
]


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def _failing_records(after: int):
    """Yields `after` good records, then fails (a generator whose source breaks mid-export)."""
    for record in RECORDS[:after]:
        yield record
    raise RuntimeError("source failed mid-export")


# ------------------------------------------------------------------ alpaca JSON

def test_alpaca_json_round_trip_and_layout(tmp_path):
    path = tmp_path / "alpaca_data.json"
    assert export_alpaca_json(RECORDS, path) == 3
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == EXPECTED
    # Byte for byte what json.dump(..., indent=4) writes, as in Alpaca's data file.
    assert text == json.dumps(EXPECTED, indent=4, ensure_ascii=False) + "\n"
    assert list(json.loads(text)[0]) == ["instruction", "input", "output"]
    assert _leftovers(tmp_path) == []


def test_alpaca_json_empty_and_generator(tmp_path):
    path = tmp_path / "empty.json"
    assert export_alpaca_json(iter([]), path) == 0
    assert json.loads(path.read_text()) == []
    assert export_alpaca_json((r for r in RECORDS), path) == 3
    assert json.loads(path.read_text()) == EXPECTED


def test_alpaca_json_readable_by_record_reader(tmp_path):
    from core.records import read_records

    path = tmp_path / "a.json"
    export_alpaca_json(RECORDS, path)
    assert read_records(path, required=("instruction", "input", "output")) == EXPECTED


# ------------------------------------------------------------------ chat JSONL

def test_chat_jsonl_roles_and_contents(tmp_path):
    path = tmp_path / "chat.jsonl"
    assert export_chat_jsonl(RECORDS, path) == 3
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3
    for row, record in zip(rows, EXPECTED):
        assert list(row) == ["messages"]
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert row["messages"][1]["content"] == record["output"]
    assert rows[0]["messages"][0]["content"] == "Give three tips for staying healthy."
    assert rows[1]["messages"][0]["content"] == "Translate the sentence to French.\n\nGood morning {friend}"
    assert _leftovers(tmp_path) == []


def test_chat_jsonl_system_prompt(tmp_path):
    path = tmp_path / "chat.jsonl"
    export_chat_jsonl(RECORDS, path, system_prompt="You are a helpful assistant.")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert row["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}


def test_chat_jsonl_is_conversational_for_trl(tmp_path):
    """The file loads with datasets' json loader into a single `messages` column of turns."""
    import datasets

    path = tmp_path / "chat.jsonl"
    export_chat_jsonl(RECORDS, path)
    loaded = datasets.load_dataset("json", data_files=str(path), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    assert loaded.column_names == ["messages"]
    assert loaded[1]["messages"][1] == {"role": "assistant", "content": RECORDS[1]["output"]}


# ------------------------------------------------------------------ HF dataset

def test_hf_dataset_round_trip(tmp_path):
    import datasets

    target = tmp_path / "hf_dataset"
    assert export_hf_dataset(RECORDS, target) == 3
    loaded = datasets.load_from_disk(str(target))
    assert loaded.column_names == ["instruction", "input", "output"]
    assert loaded.to_list() == EXPECTED
    assert all(v.dtype == "string" for v in loaded.features.values())
    assert _leftovers(tmp_path) == []


def test_hf_dataset_empty(tmp_path):
    import datasets

    target = tmp_path / "hf_dataset"
    assert export_hf_dataset([], target) == 0
    loaded = datasets.load_from_disk(str(target))
    assert len(loaded) == 0 and loaded.column_names == ["instruction", "input", "output"]


def test_hf_dataset_replaces_earlier_export(tmp_path):
    import datasets

    target = tmp_path / "hf_dataset"
    export_hf_dataset(RECORDS, target)
    export_hf_dataset(RECORDS[:1], target)
    assert datasets.load_from_disk(str(target)).to_list() == EXPECTED[:1]
    assert _leftovers(tmp_path) == []
    # An empty directory may be replaced too.
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    export_hf_dataset(RECORDS, empty)
    assert len(datasets.load_from_disk(str(empty))) == 3


def test_hf_dataset_refuses_to_replace_foreign_directory(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="refusing to replace"):
        export_hf_dataset(RECORDS, target)
    assert (target / "notes.txt").read_text() == "keep me"
    file_target = tmp_path / "a_file"
    file_target.write_text("keep me too")
    with pytest.raises(ExportError):
        export_hf_dataset(RECORDS, file_target)
    assert file_target.read_text() == "keep me too"
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------ atomicity

@pytest.mark.parametrize("fmt", ["alpaca", "chat", "hf"])
def test_failed_export_leaves_earlier_export_intact(tmp_path, fmt):
    path = tmp_path / DEFAULT_FILENAMES[fmt]
    export_records(RECORDS, fmt, path)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    with pytest.raises(RuntimeError, match="mid-export"):
        export_records(_failing_records(after=2), fmt, path)
    bad = RECORDS[:1] + [{"instruction": "No output here."}]
    with pytest.raises(ExportError, match="record 1: field 'output' is missing"):
        export_records(bad, fmt, path)
    with pytest.raises(ExportError, match="record 0: field 'input' is a int"):
        export_records([{"instruction": "x", "input": 3, "output": "y"}], fmt, path)

    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before
    assert _leftovers(tmp_path) == []


def test_failed_rename_restores_earlier_hf_export(tmp_path, monkeypatch):
    """If moving the new dataset into place fails, the earlier one is put back."""
    import datasets

    import finetune.export as export

    target = tmp_path / "hf_dataset"
    export_hf_dataset(RECORDS, target)
    real_replace = os.replace

    def flaky_replace(src, dst):
        if str(dst) == str(target) and str(src).endswith(os.sep + "dataset") and ".tmp" in str(src):
            raise OSError("disk went away")
        return real_replace(src, dst)

    monkeypatch.setattr(export.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk went away"):
        export_hf_dataset(RECORDS[:1], target)
    monkeypatch.setattr(export.os, "replace", real_replace)
    assert datasets.load_from_disk(str(target)).to_list() == EXPECTED
    assert _leftovers(tmp_path) == []


def test_failed_write_cleans_temp_file(tmp_path, monkeypatch):
    """A failure at the fsync / rename step removes the temporary file and keeps the old one."""
    import finetune.export as export

    path = tmp_path / "alpaca_data.json"
    export_alpaca_json(RECORDS, path)
    original = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(export.os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename refused"):
        export_alpaca_json(RECORDS[:1], path)
    assert path.read_bytes() == original
    assert _leftovers(tmp_path) == []


def test_export_records_dispatch(tmp_path):
    assert set(EXPORT_FORMATS) == {"alpaca", "chat", "hf"} == set(DEFAULT_FILENAMES)
    export_records(RECORDS, "alpaca", tmp_path / "a.json")
    export_records(RECORDS, "chat", tmp_path / "c.jsonl", system_prompt="Be brief.")
    export_records(RECORDS, "hf", tmp_path / "hf")
    assert json.loads((tmp_path / "a.json").read_text()) == EXPECTED
    first = json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])
    assert first["messages"][0] == {"role": "system", "content": "Be brief."}
    assert (tmp_path / "hf" / "dataset_info.json").is_file()
    with pytest.raises(ExportError, match="unknown export format"):
        export_records(RECORDS, "parquet", tmp_path / "x")
