"""`distill select-compare`: one generated pool, selected by each strategy at the same budget K,
a student trained and evaluated on each, and the comparison in the report.

The end-to-end test runs the real command on the embedded default (configs/demo.yaml: the real
llama.cpp teacher and judge, real trl training steps, the real evaluate stage), with small sizes:
Magpie fills the pool (its yield is high on the 135M teacher, so a few requests give a pool),
one training step, one evaluation prompt. The other tests need no model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.rundir import RunDir
from pipeline.config import load_config
from pipeline.report_select import select_compare_cells
from pipeline.select_compare import compare_row, fidelity_of, strategy_config

REPO = Path(__file__).resolve().parents[2]
DISTILL = str(Path(sys.executable).parent / "distill")
SMALL = [
    "--set", "generate.strategy=magpie",
    "--set", "generate.max_requests=10",
    "--set", "generate.requests_per_shard=5",
    "--set", "generate.magpie.answer_max_tokens=192",
    "--set", "finetune.heldout_records=1",
    "--set", "finetune.max_steps=1",
    "--set", "evaluate.sets=[heldout]",
    "--set", "evaluate.max_prompts=1",
    "--set", "evaluate.max_new_tokens=16",
]
STRATEGIES = ["longest_k", "complexity_quality"]


def distill(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DISTILL, *args], cwd=REPO, capture_output=True, text=True, timeout=2400,
                          env=os.environ.copy())


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_each_strategy_gets_the_base_config_with_its_selection_at_k(tmp_path):
    config = load_config(REPO / "configs" / "demo.yaml")
    heldout = tmp_path / "select" / "heldout.jsonl"
    longest = strategy_config(config, "longest_k", 5, heldout)
    assert (longest.filter.selection, longest.filter.top_k) == ("longest_k", 5)
    assert longest.finetune.heldout_records == 0 and not longest.compress.enabled
    assert longest.evaluate.sets == [str(heldout), "vicuna_80"] and not longest.evaluate.compare_base
    assert longest.filter.minhash_dedup == config.filter.minhash_dedup  # the rest is the config's own
    ifd = strategy_config(config, "ifd", 5, None)
    assert ifd.filter.ifd.enabled and ifd.filter.ifd.mode == "instead_of_judge" and ifd.filter.ifd.top_k == 5
    assert ifd.evaluate.sets == ["vicuna_80"]
    bare = config.model_copy(update={"evaluate": config.evaluate.model_copy(update={"sets": ["heldout"]})})
    assert strategy_config(bare, "random_k", 3, None).evaluate.sets == ["vicuna_80"]  # nothing else to evaluate on


def test_fidelity_columns_are_filled_from_the_evaluate_summary_when_it_has_them(tmp_path):
    run = RunDir(tmp_path / "run").create()
    evaluate = {"win_rate": 0.25, "win_rate_ci95": [0.1, 0.4], "judge_diagnostics": {"informative": False},
                "contestants": {"student": {"kind": "student", "quality": {"win_rate": 0.25},
                                            "fidelity": {"teacher_answer_nll": 1.875, "answer_similarity": 0.62,
                                                         "answer_rouge_l": 0.31, "nll_tokens": 400},
                                            "efficiency": {}}}}
    run.mark_done("evaluate", evaluate)
    run.mark_done("filter", {"kept": 3, "rated": 9, "prompt_tokens": 100, "completion_tokens": 20})
    row = compare_row("top_k", run)
    assert row["fidelity"] == {"teacher_answer_nll": 1.875, "answer_similarity": 0.62, "answer_rouge_l": 0.31}
    assert row["judge_informative"] is False and row["judge_tokens"] == 120
    assert select_compare_cells(row, str)[-3:] == ["1.875", "0.62", "0.31"]
    # Inside the efficiency entry (where a version may put it), or not at all.
    assert fidelity_of({"efficiency": {"fidelity": {"teacher_answer_nll": 2.0}}})["teacher_answer_nll"] == 2.0
    assert fidelity_of({"quality": {}, "efficiency": {}}) is None
    assert select_compare_cells({"strategy": "x"}, str)[-3:] == ["not measured"] * 3


def test_unknown_strategies_and_a_bad_k_are_refused_before_any_work(tmp_path):
    run_dir = tmp_path / "run"
    result = distill("select-compare", "configs/demo.yaml", "--run-dir", str(run_dir), "--strategies",
                     "longest_k,threshold", "--k", "3")
    assert result.returncode == 2 and "unknown ['threshold']" in result.stderr and "not a budget" in result.stderr
    result = distill("select-compare", "configs/demo.yaml", "--run-dir", str(run_dir), "--strategies", "random_k",
                     "--k", "0")
    assert result.returncode == 2 and "--k must be a positive" in result.stderr
    assert not run_dir.exists()


@pytest.fixture(scope="module")
def compared(tmp_path_factory, student_cache_dir):
    run_dir = tmp_path_factory.mktemp("select") / "run"
    result = distill("select-compare", "configs/demo.yaml", "--run-dir", str(run_dir), "--cache-dir",
                     str(student_cache_dir), "--strategies", ",".join(STRATEGIES), "--k", "2", *SMALL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return run_dir, result


@pytest.mark.e2e
@pytest.mark.server
def test_select_compare_on_the_embedded_default(compared):
    run_dir, result = compared
    comparison = json.loads((run_dir / "select" / "compare.json").read_text())
    assert comparison["k"] == 2 and comparison["strategies"] == STRATEGIES
    assert [row["strategy"] for row in comparison["rows"]] == STRATEGIES

    # One generate stage, in the run directory; each strategy's run has the same pool (less the
    # common held-out prompt) and sent no generation request of its own.
    generated = lines(run_dir / "generated.jsonl")
    heldout = lines(run_dir / "select" / "heldout.jsonl")
    assert len(heldout) == 1 and heldout[0] in generated
    pool = [record for record in generated if record != heldout[0]]
    assert comparison["pool"] == len(pool) >= 1
    runs = {name: run_dir / "select" / name for name in STRATEGIES}
    for name, run in runs.items():
        assert lines(run / "generated.jsonl") == pool
        assert not (run / "work" / "generate_requests.jsonl").exists()
        filtered, train = lines(run / "filtered.jsonl"), lines(run / "train.jsonl")
        assert 1 <= len(filtered) <= 2 and train == filtered and all(r in pool for r in filtered)
        # Evaluated on the same prompt, the held-out one, which no strategy trained on.
        prompts = lines(run / "eval" / "prompts.jsonl")
        assert [p["instruction"] for p in prompts] == [heldout[0]["instruction"]]
        assert json.loads((run / "stages" / "filter.json").read_text())["selection"] == name
    assert (run_dir / "work" / "generate_requests.jsonl").is_file()

    rows = {row["strategy"]: row for row in comparison["rows"]}
    # Longest-K asks no judge; complexity x quality pays for its ratings.
    assert rows["longest_k"]["judge_tokens"] == 0 and not (runs["longest_k"] / "work" / "rate_requests.jsonl").exists()
    assert rows["complexity_quality"]["judge_tokens"] > 0 and rows["complexity_quality"]["rated"] >= 1
    longest_kept = lines(runs["longest_k"] / "filtered.jsonl")
    assert min(len(r["output"].split()) for r in longest_kept) >= max(
        [len(r["output"].split()) for r in pool if r not in longest_kept], default=0)
    for row in rows.values():
        assert row["win_rate"] is not None and row["judged"] == 1 and row["train_records"] == row["kept"]
        # The evaluate stage measures every local student's fidelity to the teacher.
        assert row["fidelity"] is not None and row["fidelity"]["teacher_answer_nll"] > 0

    # The report: a section with the table (fidelity columns filled) and the plot.
    markdown = (run_dir / "report.md").read_text()
    assert "## Data selection strategies compared" in markdown and "teacher-answer NLL" in markdown
    assert all(f"| {name} | {rows[name]['kept']} |" in markdown for name in STRATEGIES)
    assert (run_dir / "select" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (run_dir / "report.html").read_text()
    assert "Data selection strategies compared" in page and page.count("data:image/png;base64,") >= 2
    assert json.loads((run_dir / "report.json").read_text())["select_compare"] == comparison
    for run in runs.values():  # each strategy's run has its own report
        assert (run / "report.md").is_file()
    assert "Report:" in result.stdout and "longest_k: kept" in result.stdout


@pytest.mark.e2e
@pytest.mark.server
def test_a_rerun_resumes_and_another_k_is_refused(compared, student_cache_dir):
    run_dir, _ = compared
    journals = {path: path.read_bytes() for path in run_dir.rglob("*_requests.jsonl")}
    filtered = {path: path.read_bytes() for path in run_dir.rglob("filtered.jsonl")}
    result = distill("select-compare", "configs/demo.yaml", "--run-dir", str(run_dir), "--cache-dir",
                     str(student_cache_dir), "--strategies", ",".join(STRATEGIES), "--k", "2", *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("already finished") >= 1 + 3 * len(STRATEGIES)
    assert {path: path.read_bytes() for path in run_dir.rglob("*_requests.jsonl")} == journals
    assert {path: path.read_bytes() for path in run_dir.rglob("filtered.jsonl")} == filtered

    result = distill("select-compare", "configs/demo.yaml", "--run-dir", str(run_dir), "--strategies",
                     ",".join(STRATEGIES), "--k", "3", *SMALL)
    assert result.returncode == 2 and "different config" in result.stderr and "select/longest_k" in result.stderr
    assert {path: path.read_bytes() for path in run_dir.rglob("filtered.jsonl")} == filtered
