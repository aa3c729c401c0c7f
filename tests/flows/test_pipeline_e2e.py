"""The whole pipeline, end to end, through the real `distill` command: real Prefect (ephemeral),
the real embedded teacher (llama.cpp serving SmolLM2-135M), real trl/peft training steps.

Sizes are small so CI stays within its time; every file of the run directory is checked, and
the counts must add up from stage to stage.
"""

import base64
import hashlib
import html
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.server]

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "--set", "generate.max_requests=20",
    "--set", "generate.target_records=24",
    "--set", "generate.requests_per_shard=4",
    "--set", "finetune.max_steps=3",
    "--set", "finetune.heldout_records=2",
    "--set", "evaluate.max_prompts=2",
    "--set", "evaluate.max_new_tokens=48",
    "--set", "compress.variants=[gguf_q8_0,gguf_q4_0]",
]
VARIANTS = ["gguf_q8_0", "gguf_q4_0"]


def distill(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "distill"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=2400, env=os.environ.copy())


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "logs" not in p.parts}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, student_cache_dir):
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    result = distill("run", "configs/demo.yaml", "--run-dir", str(run_dir), "--cache-dir", str(student_cache_dir),
                     *SMALL)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return run_dir, result


def test_every_file_is_written(finished_run):
    run_dir, result = finished_run
    for name in ("generated.jsonl", "rejected.jsonl", "rated.jsonl", "filtered.jsonl", "train.jsonl",
                 "heldout.jsonl", "report.json", "report.md", "report.html", "manifest.json", "diversity.json", "diversity.png"):
        assert (run_dir / name).is_file(), name
    # the demo fully fine-tunes its cut-down student: the whole model is saved, no adapter
    trained = run_dir / "finetune" / "model"
    assert (trained / "model.safetensors").is_file() and (trained / "config.json").is_file()
    for name in ("prompts.jsonl", "student_answers.jsonl", "base_student_answers.jsonl", "teacher_answers.jsonl",
                 "judgments.jsonl", "judgments_base_student.jsonl",
                 *(f"{v}_answers.jsonl" for v in VARIANTS), *(f"judgments_{v}.jsonl" for v in VARIANTS)):
        assert (run_dir / "eval" / name).is_file(), name
    # The compressed students: GGUF files at 8 and 4 bits, smaller than the merged student.
    variants = json.loads((run_dir / "compress" / "variants.json").read_text())
    assert [v["label"] for v in variants] == VARIANTS
    assert all(Path(v["path"]).is_file() and Path(v["path"]).suffix == ".gguf" for v in variants)
    assert variants[1]["size_on_disk_bytes"] < variants[0]["size_on_disk_bytes"]
    assert "report.md" in result.stdout and "win rate" in result.stdout
    # One line per stage when it is done (its time and numbers), no trainer log dictionaries.
    assert "{'loss'" not in result.stdout + result.stderr and "[3/5] finetune: done in" in result.stderr


def test_counts_add_up(finished_run):
    run_dir, _ = finished_run
    report = json.loads((run_dir / "report.json").read_text())
    generated, rated, filtered = (lines(run_dir / n) for n in ("generated.jsonl", "rated.jsonl", "filtered.jsonl"))
    rejected = lines(run_dir / "rejected.jsonl")
    counts = report["counts"]
    gen_summary = json.loads((run_dir / "stages" / "generate.json").read_text())

    # generate: every parsed task is kept, dropped with a reason, or beyond the target.
    gen_rejected = [r for r in rejected if r["stage"] == "generate"]
    assert all(r["reason"] for r in gen_rejected)
    task_drops = [r for r in gen_rejected if not r["reason"].startswith(("parse:", "request_failed"))]
    assert counts["generated"] == len(generated) == gen_summary["kept"]
    assert gen_summary["tasks_parsed"] == len(generated) + len(task_drops) + gen_summary["beyond_target"]
    assert sum(gen_summary["dropped"].values()) == len(gen_rejected)
    assert len({r["id"] for r in generated}) == len(generated)
    assert gen_summary["requests"] <= 20 and gen_summary["stop_reason"] in ("max_requests", "target_reached")
    assert gen_summary["strategy"] == "magpie"  # the demo generates with Magpie

    # filter: every record left after MinHash dedup is rated (or unscored); the demo keeps the
    # best top_k by score (AlpaGasus' budget mode): no dropped score beats a kept one.
    filter_summary = json.loads((run_dir / "stages" / "filter.json").read_text())
    assert len(rated) == filter_summary["after_dedup"] <= len(generated)
    top_k = json.loads((run_dir / "manifest.json").read_text())["config"]["filter"]["top_k"]
    scored = [r for r in rated if r["score"] is not None]
    assert len(filtered) == min(top_k, len(scored)) == counts["filtered"]
    kept_keys = {(r["instruction"], r["output"]) for r in filtered}
    kept_scores = [r["score"] for r in scored if (r["instruction"], r["output"]) in kept_keys]
    dropped_scores = [r["score"] for r in scored if (r["instruction"], r["output"]) not in kept_keys]
    assert not dropped_scores or min(kept_scores) >= max(dropped_scores)
    filter_rejected = [r for r in rejected if r["stage"] == "filter"]
    assert len(filtered) + len(filter_rejected) == len(generated)
    assert sum(filter_summary["dropped"].values()) == len(filter_rejected)
    assert (run_dir / "score_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "export" / "alpaca_data.json").is_file() and (run_dir / "export" / "chat.jsonl").is_file()

    # finetune: train + held out = filtered, with no overlap.
    train, heldout = lines(run_dir / "train.jsonl"), lines(run_dir / "heldout.jsonl")
    assert len(train) + len(heldout) == len(filtered) and len(train) >= 1
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in heldout}

    # evaluate: every judged prompt has both orders and one outcome.
    judgments = lines(run_dir / "eval" / "judgments.jsonl")
    quality = report["quality"]
    assert quality["wins"] + quality["ties"] + quality["losses"] + quality["invalid"] == len(judgments)
    assert all(j["outcome"] in ("win", "tie", "loss", "invalid") for j in judgments)
    assert all("student_first" in j and "teacher_first" in j for j in judgments)
    prompts = lines(run_dir / "eval" / "prompts.jsonl")
    assert {p["set"] for p in prompts} == {"heldout", "vicuna_80"}
    assert set(quality["per_set"]) == {"heldout", "vicuna_80"}
    assert sum(q["judged"] for q in quality["per_set"].values()) == len(judgments)
    assert not {p["instruction"] for p in prompts if p["set"] == "heldout"} & {r["instruction"] for r in train}
    base = report["base_student_quality"]
    assert base["wins"] + base["ties"] + base["losses"] + base["invalid"] == len(judgments)
    for role in ("student", "base_student", "teacher"):
        efficiency = report["efficiency"][role]
        assert efficiency["size_on_disk_bytes"] > 0 and efficiency["mean_latency_s"] > 0
    # the demo's student: the teacher cut to 18 of its 30 layers, at most 70% of its parameters
    teacher_parameters = report["efficiency"]["teacher"]["parameters"]
    assert teacher_parameters > 130_000_000
    for role in ("student", "base_student"):
        assert report["efficiency"][role]["parameters"] <= 0.7 * teacher_parameters, role

    # cost, measured in this run: each student's peak memory is the VmHWM of a process that only
    # loaded it and answered; the teacher's, that of the real llama.cpp server; time to first token,
    # tokens/s and cost per 1,000 answers (measured seconds x evaluate.local_hourly_usd) for each.
    models = {row["label"]: row for row in report["models"]}
    assert list(models) == ["teacher", "student", "base_student", *VARIANTS]
    for label, row in models.items():
        efficiency = row["efficiency"]
        assert 50_000_000 < efficiency["peak_memory_bytes"] < 8_000_000_000, label
        assert 0 < efficiency["p50_ttft_s"] <= efficiency["p95_ttft_s"], label
        assert efficiency["p50_latency_s"] <= efficiency["p95_latency_s"] and efficiency["tokens_per_s"] > 0
        assert efficiency["cost_per_1k_answers_usd"] > 0, label
    assert "llama.cpp server" in models["teacher"]["efficiency"]["peak_memory_method"]
    # the student's float32 weights alone are ~370 MB; its process holds at least that
    assert models["student"]["efficiency"]["peak_memory_bytes"] > 350_000_000
    student_answers = lines(run_dir / "eval" / "student_answers.jsonl")
    assert all(0 < a["ttft_s"] <= a["latency_s"] for a in student_answers)
    assert report["headline"]["cost_ratio_student_teacher"] == pytest.approx(
        models["student"]["efficiency"]["cost_per_1k_answers_usd"] / models["teacher"]["efficiency"]["cost_per_1k_answers_usd"])
    comparison = report["quality_vs_cost"]
    assert comparison["axis"] == "cost_per_1k_answers_usd" and comparison["pareto_front"]
    assert set(comparison["pareto_front"]) <= set(models) and comparison["recommendation"]

    # fidelity to the teacher for every local model (no judge needed): the NLL of the teacher's
    # answers under it (transformers for the students, llama.cpp's logits for the GGUF files),
    # similarity and ROUGE-L of its answers to the teacher's; the teacher is the reference.
    for label in ("student", "base_student", *VARIANTS):
        fidelity = models[label]["fidelity"]
        assert fidelity["teacher_answer_nll"] > 0 and -1 <= fidelity["answer_similarity"] <= 1, label
        assert 0 <= fidelity["answer_rouge_l"] <= 1, label
        assert fidelity["nll_runtime"] == ("llama.cpp" if label in VARIANTS else "transformers"), label
    assert models["teacher"]["fidelity"]["answer_similarity"] == 1.0
    # even a few steps of training on the teacher's data bring the cut-down student closer to it
    assert models["student"]["fidelity"]["teacher_answer_nll"] < models["base_student"]["fidelity"]["teacher_answer_nll"]
    # the report leads with the trade-off of every model against the teacher
    tradeoff = {row["model"]: row for row in report["tradeoff"]}
    assert list(tradeoff) == list(models) and tradeoff["student"]["parameters_vs_teacher"] <= 0.7
    assert tradeoff["gguf_q8_0"]["runtime"] == "llama.cpp (GGUF)" and tradeoff["student"]["runtime"] == "transformers, float32"
    # how far the judge can be trusted, from its own verdicts; with the 135M judge the report
    # says in words when it is not informative, and then leads with fidelity.
    diagnostics = report["judge_diagnostics"]
    assert diagnostics["pairs"] == len(judgments) * (len(models) - 1)  # every contestant's pairs
    for key in ("position_flip_rate", "first_position_win_rate", "invalid_rate"):
        assert diagnostics[key] is None or 0 <= diagnostics[key] <= 1, key
    markdown = (run_dir / "report.md").read_text()
    assert "## Judge diagnostics" in markdown and "NLL of the teacher's answers" in markdown
    if not diagnostics["informative"]:
        assert report["headline"]["leads_with"] == "fidelity"
        assert markdown.index("The judge is not informative") < markdown.index("## Quality and fidelity")
    # decontamination ran first, against vicuna_80 (heldout is drawn from the kept records later).
    assert filter_summary["filters"][0] == "decontaminate"
    assert filter_summary["decontamination"]["against"] == ["vicuna_80"]
    assert report["decontamination"]["dropped_per_set"] == {"vicuna_80": filter_summary["dropped"].get("contaminated", 0)}

    # tokens and time are reported for every stage.
    assert report["tokens"]["generate"]["prompt"] > 0 and report["tokens"]["filter"]["prompt"] > 0
    assert all(seconds is not None for seconds in report["seconds"].values())


def test_report_html_and_prefect_artifacts(finished_run):
    run_dir, _ = finished_run
    report = json.loads((run_dir / "report.json").read_text())
    page = (run_dir / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # win/tie/loss per set, quality against cost, the filter's histogram, the diversity plot
    assert len(images) == 4 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "<script" not in page and html.escape(report["quality_vs_cost"]["recommendation"]) in page
    examples = json.loads((run_dir / "eval" / "examples.json").read_text())
    assert set(examples) == {"student", "base_student", *VARIANTS} and examples["student"]
    assert html.escape(examples["student"][0]["student"]) in page

    # The flow run published the report, the headline and the per-model table as artifacts
    # (read from the Prefect database the real run wrote).
    database = Path(os.environ["PREFECT_HOME"]) / "prefect.db"
    with sqlite3.connect(database) as connection:
        artifacts = {key: (kind, json.loads(data)) for key, kind, data in connection.execute(
            "select key, type, data from artifact where key like 'distill-%'")}
    assert set(artifacts) == {"distill-report", "distill-headline", "distill-models"}
    assert artifacts["distill-report"][0] == "markdown" and artifacts["distill-models"][0] == "table"
    assert artifacts["distill-report"][1] == (run_dir / "report.md").read_text()
    table = artifacts["distill-models"][1]
    table = json.loads(table) if isinstance(table, str) else table
    assert [row["model"] for row in table] == ["teacher", "student", "base_student", *VARIANTS]
    assert "win rate" in artifacts["distill-headline"][1] and "95% CI" in artifacts["distill-headline"][1]
    assert "fidelity to the teacher" in artifacts["distill-headline"][1]
    assert table[1]["teacher_answer_nll"] > 0 and "answer_similarity" in table[1]


def test_manifest_records_config_prompts_versions_and_models(finished_run, repo_root):
    run_dir, _ = finished_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    prompts = sorted(p.name for p in (repo_root / "prompts").glob("*.txt"))
    assert sorted(manifest["prompts_sha256"]) == prompts
    assert manifest["config"]["name"] == "demo" and manifest["config"]["generate"]["max_requests"] == 20
    assert manifest["packages"]["prefect"].startswith("3.8") and manifest["packages"]["trl"]
    assert "SmolLM2-135M-Instruct" in manifest["teacher"] and manifest["student"]


def test_rerun_skips_finished_stages_and_changes_nothing(finished_run, student_cache_dir):
    run_dir, _ = finished_run
    before = digest(run_dir)
    result = distill("run", "configs/demo.yaml", "--run-dir", str(run_dir), "--cache-dir", str(student_cache_dir),
                     *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for stage in ("generate", "filter", "finetune", "compress", "evaluate"):
        assert f"{stage}: already finished" in output
    after = digest(run_dir)
    data_files = [name for name in before if name.endswith(".jsonl") or name == "report.json"]
    assert all(before[name] == after[name] for name in data_files)


def test_a_different_config_is_refused_and_the_run_is_untouched(finished_run):
    run_dir, _ = finished_run
    before = digest(run_dir)
    result = distill("run", "configs/demo.yaml", "--run-dir", str(run_dir), "--set", "filter.threshold=1")
    assert result.returncode == 2
    assert "different config" in result.stderr
    assert digest(run_dir) == before


def test_a_finished_run_is_evaluated_again_on_another_prompt_file(finished_run, student_cache_dir, tmp_path):
    """As a new user would: after the run, the same student on a prompt file of one's own, by
    `distill evaluate` with only evaluate.sets changed. Nothing else is redone; the new evaluation
    gets eval/<name>/ and its own section of the report; the first evaluation is kept."""
    run_dir, _ = finished_run
    (tmp_path / "my_prompts.jsonl").write_text(
        json.dumps({"instruction": "Name two things that float on water."}) + "\n"
        + json.dumps({"instruction": "Give a synonym for the word quick."}) + "\n")
    first_eval = {name: digest for name, digest in digest(run_dir).items() if name.startswith("eval/")}
    stages_before = {name: digest for name, digest in digest(run_dir).items() if name.startswith("stages/")}
    overrides = [part for flag, value in zip(SMALL[::2], SMALL[1::2]) if not value.startswith("evaluate.")
                 for part in (flag, value)]
    result = distill("evaluate", str(REPO / "configs" / "demo.yaml"), "--run-dir", str(run_dir), "--cache-dir",
                     str(student_cache_dir), *overrides, "--set", 'evaluate.sets=["my_prompts.jsonl"]',
                     "--set", "evaluate.max_new_tokens=24", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    after = digest(run_dir)
    assert all(after[name] == value for name, value in first_eval.items())  # the first evaluation is kept
    assert all(after[name] == value for name, value in stages_before.items())  # nothing else was redone
    (folder,) = [path.parent for path in (run_dir / "eval").glob("*/summary.json")]
    assert folder.name.startswith("my_prompts-")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["prompts"] == 2 and set(summary["per_set"]) == {"my_prompts"}
    assert summary["evaluation"]["name"] == folder.name and summary["training_overlap"] == {"my_prompts": 0}
    assert summary["contestants"]["student"]["fidelity"]["teacher_answer_nll"] > 0
    report = json.loads((run_dir / "report.json").read_text())
    assert [e["folder"] for e in report["evaluations"]] == ["eval", f"eval/{folder.name}"]
    assert report["quality"]["per_set"].keys() == {"heldout", "vicuna_80"}  # the first still leads
    assert f"## Evaluation `{folder.name}`" in (run_dir / "report.md").read_text()
