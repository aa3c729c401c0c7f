"""Bad input through the real `distill` command: a clear message naming the file, line and
field (or the config key), a non-zero exit, and nothing already in the run directory changed.

The run directory holds a finished filter stage (rated, filtered, exports, journal, summary),
made once by rating five records with a scripted judge (a stand-in: the real judge would only
make this setup slower); then each case breaks one input and reruns the stage.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from cli_runs import REPO, SEEDS, file_hashes, openai_teacher, run_distill, write_config
from core.records import MAX_LINE_BYTES
from scripted_server import ScriptedServer

RECORDS = [{"id": f"r{i}", "instruction": f"Name a colour number {i}.", "input": "", "output": "Blue."}
           for i in range(5)]
GOOD = "".join(json.dumps(r) + "\n" for r in RECORDS)


@pytest.fixture(scope="module")
def judge():
    with ScriptedServer(lambda body: '{"score": 5, "explanation": "Accurate."}') as server:
        yield server


@pytest.fixture(scope="module")
def finished_run(judge, tmp_path_factory):
    """(config, run directory) after a successful filter stage."""
    root = tmp_path_factory.mktemp("finished")
    config = write_config(root / "bad-input.yaml", teacher=openai_teacher(judge.base_url))
    (root / "run").mkdir()
    (root / "run" / "generated.jsonl").write_text(GOOD)
    result = run_distill("filter", str(config), "--run-dir", str(root / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((root / "run" / "filtered.jsonl").read_text().splitlines()) == 5
    return config, root / "run"


@pytest.fixture
def run_copy(finished_run, tmp_path):
    config, run_dir = finished_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return config, copy


GENERATED_CASES = {
    "malformed_json": (GOOD.replace('"r2", ', '"r2" ').encode(), r"generated.jsonl:3: malformed JSON"),
    "wrong_type": (GOOD.replace('"Name a colour number 1."', "17").encode(),
                   "generated.jsonl:2: field 'instruction' must be a string, got int"),
    "missing_field": (GOOD.replace(', "output": "Blue."}\n{"id": "r4"', '}\n{"id": "r4"').encode(),
                      "generated.jsonl:4: missing field 'output'"),
    "not_an_object": (GOOD.encode() + b'["a list", "not a record"]\n', "generated.jsonl:6: expected a JSON object"),
    "empty": (b"", "generated.jsonl: no records (the file is empty)"),
    "not_utf8": (GOOD.replace("colour", "colo\u00fcr").encode("latin-1"), "generated.jsonl:1: not UTF-8"),
}


@pytest.mark.parametrize("case", list(GENERATED_CASES))
def test_bad_generated_records_stop_filter_clearly_and_damage_nothing(case, run_copy):
    config, run_dir = run_copy
    content, message = GENERATED_CASES[case]
    (run_dir / "generated.jsonl").write_bytes(content)
    before = file_hashes(run_dir)
    result = run_distill("filter", str(config), "--run-dir", str(run_dir))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and str(run_dir) in result.stderr
    assert "Traceback" not in result.stderr
    assert file_hashes(run_dir) == before


def test_a_corrupt_journal_line_is_named_and_the_journal_kept_as_it_is(run_copy):
    config, run_dir = run_copy
    journal = run_dir / "work" / "rate_requests.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text(lines[0] + '{"key": "broken", \n' + "".join(lines[1:]))
    (run_dir / "stages" / "filter.json").unlink()  # so that the stage runs again
    before = file_hashes(run_dir)
    result = run_distill("filter", str(config), "--run-dir", str(run_dir))
    assert result.returncode == 2
    assert f"{journal}:2: malformed JSON" in result.stderr
    assert file_hashes(run_dir) == before


# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the forking parent (here
# pytest, which has just written 100 MB) across exec, while VmHWM starts afresh with the program.
PEAK_RSS = ("import re, sys\nfrom pathlib import Path\nfrom distill.cli import main\ncode = main(sys.argv[1:])\n"
            "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', Path('/proc/self/status').read_text()).group(1)\n"
            "print('peak_rss_kb', hwm, file=sys.stderr)\nsys.exit(code)\n")


def peak_rss_mb(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run the CLI's main in a fresh interpreter; return the result and its peak memory."""
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("peak_rss_kb")]
    return result, int(line.split()[1]) / 1024


def test_a_100_mb_line_is_refused_without_reading_it_whole(run_copy):
    config, run_dir = run_copy
    generated = run_dir / "generated.jsonl"
    generated.write_bytes(b"x")  # the same run, once with a small broken file: the baseline
    small, baseline_mb = peak_rss_mb("filter", str(config), "--run-dir", str(run_dir))
    assert small.returncode == 2 and "generated.jsonl:1: malformed JSON" in small.stderr
    with generated.open("wb") as handle:  # one record, then a 100 MB line with no end
        handle.write(GOOD.splitlines(keepends=True)[0].encode())
        handle.write(b'{"instruction": "' + b"a" * (100 * 1024 * 1024))
    before = file_hashes(run_dir)
    result, peak_mb = peak_rss_mb("filter", str(config), "--run-dir", str(run_dir))
    assert result.returncode == 2
    assert f"{generated}:2: line longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB" in result.stderr
    # Reading the line whole would hold it at least twice (bytes, then text): 200 MB and more.
    assert peak_mb - baseline_mb < 40, (baseline_mb, peak_mb)
    assert file_hashes(run_dir) == before


def test_bad_seed_tasks_stop_generate_naming_file_line_and_field(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    good = SEEDS.read_text().splitlines(keepends=True)
    seeds.write_text(good[0] + good[1].replace('"instances": [', '"instances": [], "was": [') )
    config = write_config(tmp_path / "seeds.yaml", teacher=openai_teacher("http://127.0.0.1:9/v1"))
    config.write_text(config.read_text().replace(str(SEEDS), str(seeds)))
    result = run_distill("generate", str(config), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert f"{seeds}:2: field 'instances' must be a non-empty list of objects" in result.stderr


CONFIG_CASES = {
    "misspelt_key": ({"filter": {"treshold": 4.0}}, [],
                     "unknown key 'filter.treshold', did you mean 'threshold'?"),
    "misspelt_section": ({"generat": {"target_records": 5}}, [], "unknown key 'generat', did you mean 'generate'?"),
    "unknown_key": ({"teacher": {"backend": "openai", "colour": "blue"}}, [], "unknown key 'teacher.colour'"),
    "threshold_out_of_range": ({}, ["--set", "filter.threshold=7"],
                               "key 'filter.threshold': Input should be less than or equal to 5 (got 7)"),
    "negative_rouge_threshold": ({"generate": {"rouge_threshold": -0.1}}, [], "key 'generate.rouge_threshold'"),
    "wrong_type": ({"generate": {"max_requests": "many"}}, [], "key 'generate.max_requests'"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_stops_before_any_work_naming_the_key(case, run_copy, tmp_path):
    _, run_dir = run_copy
    sections, overrides, message = CONFIG_CASES[case]
    config = write_config(tmp_path / "bad.yaml", **sections)
    before = file_hashes(run_dir)
    for command in ("filter", "run"):
        result = run_distill(command, str(config), "--run-dir", str(run_dir), *overrides)
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stderr and str(config) in result.stderr
    assert file_hashes(run_dir) == before


def test_a_config_that_is_not_utf8_or_not_yaml_is_named(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(f"name: caf\xe9\nseed_tasks: {SEEDS}\n".encode("latin-1"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nteacher: [unclosed\n")
    for path, message in ((latin, "not UTF-8"), (broken, "not valid YAML")):
        result = run_distill("generate", str(path), "--run-dir", str(tmp_path / "run"))
        assert result.returncode == 2 and f"{path}: {message}" in result.stderr
    assert not (tmp_path / "run").exists()
