import json

import pytest

from core.records import (Journal, RecordError, read_records, read_seed_tasks, repair_torn_tail, write_jsonl)


def test_malformed_line_is_named(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"instruction": "a"}\n{"instruction": \n')
    with pytest.raises(RecordError, match=r"r\.jsonl:2: malformed JSON"):
        read_records(path)


def test_missing_and_wrong_type_fields(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"instruction": "a"}\n{"input": "b"}\n')
    with pytest.raises(RecordError, match=r":2: missing field 'instruction'"):
        read_records(path)
    path.write_text('{"instruction": 3}\n')
    with pytest.raises(RecordError, match=r":1: field 'instruction' must be a string"):
        read_records(path)


def test_empty_and_non_utf8_files(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(RecordError, match="empty"):
        read_records(empty)
    latin = tmp_path / "l.jsonl"
    latin.write_bytes('{"instruction": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(RecordError, match=r"l\.jsonl:1: not UTF-8"):
        read_records(latin)


def test_json_list_input(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    assert read_records(path)[0]["output"] == "b"
    path.write_text(json.dumps([{"instruction": "a"}, {"output": "b"}]))
    with pytest.raises(RecordError, match="item 1: missing field 'instruction'"):
        read_records(path)


def test_seed_tasks_shipped(repo_root):
    seeds = read_seed_tasks(repo_root / "data" / "seed_tasks.jsonl")
    assert len(seeds) == 175
    assert all(s["instruction"] and "output" in s for s in seeds)


def test_seed_task_malformed_line_is_named(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"instruction": "x", "instances": [{"input": "", "output": "y"}]}\n{"instruction": "z"}\n')
    with pytest.raises(RecordError, match=r"s\.jsonl:2: field 'instances'"):
        read_seed_tasks(path)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])

    def broken():
        yield {"a": 2}
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert path.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_torn_tail_is_cut_and_journal_resumes(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.append({"key": "a", "v": 1})
        journal.append({"key": "b", "v": 2})
    with path.open("a") as handle:
        handle.write('{"key": "c", "v"')  # a kill in the middle of a write
    with Journal(path) as journal:
        assert "a" in journal and "b" in journal and "c" not in journal
        assert journal.get("b") == {"key": "b", "v": 2}
        journal.append({"key": "c", "v": 3})
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b", "c"]
    assert repair_torn_tail(path) == 0


def test_a_torn_tail_that_parses_as_json_is_still_cut_never_read(tmp_path):
    # A kill can stop a write right after the closing brace, before the newline: the line
    # looks whole, but only a newline-terminated line was ever finished.
    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "a", "v": 1}\n{"key": "b", "v": 2}')
    with Journal(path) as journal:
        assert "a" in journal and "b" not in journal and len(journal) == 1
    assert path.read_text() == '{"key": "a", "v": 1}\n'


def test_an_overlong_line_is_refused_naming_file_and_line(tmp_path, monkeypatch):
    import core.records as records

    monkeypatch.setattr(records, "MAX_LINE_BYTES", 64)
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a", "instruction": "short"}\n{"key": "b", "instruction": "' + "x" * 200 + '"}\n')
    with pytest.raises(RecordError, match=r"r\.jsonl:2: line longer than"):
        read_records(path)
    with pytest.raises(RecordError, match=r"r\.jsonl:2: line longer than"):
        Journal(path)
    assert path.read_text().endswith('"}\n')  # refused, not cut


def test_a_journal_entry_without_a_key_is_named(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "a"}\n["not", "an", "entry"]\n')
    with pytest.raises(RecordError, match=r"j\.jsonl:2: journal entry without a string field 'key'"):
        Journal(path)
