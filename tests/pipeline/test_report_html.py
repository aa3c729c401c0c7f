"""report.html / report.md / report.json from an evaluate summary: escaping, plots, Pareto front, headline."""

import base64
import html
import json
import re

from pipeline.report import write_report
from core.rundir import RunDir


def quality(win_rate, wins, ties, losses):
    return {"wins": wins, "ties": ties, "losses": losses, "invalid": 0, "win_rate": win_rate,
            "win_rate_ci95": [max(0, win_rate - 0.2), min(1, win_rate + 0.2)], "lc_win_rate": win_rate, "judged": 4,
            "per_set": {"vicuna_80": {"wins": wins, "ties": ties, "losses": losses, "invalid": 0, "win_rate": win_rate,
                                      "win_rate_ci95": [0, 1], "lc_win_rate": None, "judged": 4}}}


def cost(identity, peak_mb, usd):
    return {"identity": identity, "parameters": 134_515_008, "size_on_disk_bytes": 270_000_000,
            "peak_memory_bytes": peak_mb * 1_000_000, "p50_latency_s": 1.5, "p95_latency_s": 2.0, "p50_ttft_s": 0.1,
            "tokens_per_s": 20.0, "cost_per_1k_answers_usd": usd, "cost_basis": "measured seconds x 0.1 USD/h",
            "peak_memory_method": "VmHWM <of a process>"}


def test_report_files_agree_and_escape_everything(tmp_path):
    rundir = RunDir(tmp_path / "run")
    rundir.stages.mkdir(parents=True)
    student, base, int4 = quality(0.375, 1, 1, 2), quality(0.125, 0, 1, 3), quality(0.375, 1, 1, 2)
    summary = {
        "prompts": 4, "judged": 4, **{k: student[k] for k in student},
        "base_student_quality": base, "student": cost("smol+lora", 900, 0.05), "base_student": cost("smol", 880, 0.05),
        "teacher": {**cost("llama.cpp:<b>teacher</b>", 300, 0.2), "peak_memory_method": "VmHWM of the server"},
        "contestants": {"student": {"kind": "student", "quality": student, "efficiency": cost("smol+lora", 900, 0.05)},
                        "base_student": {"kind": "student", "quality": base, "efficiency": cost("smol", 880, 0.05)},
                        "int4": {"kind": "variant", "quality": int4, "efficiency": cost("int4 (gguf)", 450, 0.03)}},
    }
    rundir.mark_done("evaluate", summary)
    rundir.eval_dir.mkdir()
    hostile = "<script>alert('x')</script> & </pre>"
    (rundir.eval_dir / "examples.json").write_text(json.dumps({"student": [
        {"id": "v-1", "set": "vicuna_80", "instruction": "Say <hi>", "input": "", "student": hostile,
         "teacher": "Hello & welcome", "outcome": "loss", "word_overlap": 0.0}]}))

    report = write_report(rundir)
    page = (rundir.root / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;/pre&gt;" in page
    assert "llama.cpp:&lt;b&gt;teacher&lt;/b&gt;" in page and "Say &lt;hi&gt;" in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)

    # Quality against cost: int4 is cheaper than the student at the same win rate; the teacher is best.
    comparison = report["quality_vs_cost"]
    assert comparison["axis"] == "cost_per_1k_answers_usd"
    assert comparison["pareto_front"] == ["int4", "teacher"]
    assert comparison["recommendation"] == "The int4 variant keeps 100% of the student's win rate at 50% of its peak memory."
    assert report["headline"]["cost_ratio_student_teacher"] == 0.25
    assert report["headline"]["memory_ratio_student_teacher"] == 3.0
    assert [row["label"] for row in report["models"]] == ["teacher", "student", "base_student", "int4"]

    # The three files say the same.
    assert json.loads((rundir.root / "report.json").read_text())["quality_vs_cost"]["pareto_front"] == ["int4", "teacher"]
    markdown = (rundir.root / "report.md").read_text()
    assert comparison["recommendation"] in markdown and html.escape(comparison["recommendation"]) in page
    assert "| int4 | all | 1 | 1 | 2 | 0 | 0.375 |" in markdown
    assert "int4 ★" in page and "student ★" not in page


def fidelity(nll, similarity, rouge):
    return {"teacher_answer_nll": nll, "answer_similarity": similarity, "answer_rouge_l": rouge}


def test_an_uninformative_judge_is_said_in_words_and_fidelity_leads(tmp_path):
    """A judge that always picks the first answer: every pair is a tie, the win rate 0.5. The
    report says the judge is not informative and leads with fidelity; a second evaluation of the
    run gets its own section, and the first is kept."""
    from pipeline.report import headline

    rundir = RunDir(tmp_path / "run")
    rundir.stages.mkdir(parents=True)
    ties = quality(0.5, 0, 4, 0)
    diagnostics = {"position_flip_rate": 1.0, "first_position_win_rate": 1.0, "length_win_correlation": None,
                   "invalid_rate": 0.0, "cohen_kappa": None, "second_judge": None, "informative": False,
                   "warnings": ["its verdict changed with the order of the answers on 100% of the pairs: it follows "
                                "the position, not the answers"], "judge": "llama.cpp:<judge>", "pairs": 8}

    def summary(folder, name, sets, student_nll):
        contestants = {"student": {"kind": "student", "quality": ties, "efficiency": cost("smol+lora", 900, 0.05),
                                   "fidelity": fidelity(student_nll, 0.81, 0.42)},
                       "base_student": {"kind": "student", "quality": ties, "efficiency": cost("smol", 880, 0.05),
                                        "fidelity": fidelity(2.5, 0.7, 0.3)}}
        return {"prompts": 4, "judged": 4, **ties, "sets": sets, "base_student_quality": ties,
                "student": cost("smol+lora", 900, 0.05), "base_student": cost("smol", 880, 0.05),
                "teacher": cost("teacher", 300, 0.2), "contestants": contestants, "judge_diagnostics": diagnostics,
                "training_overlap": {sets[0]: 0}, "evaluation": {"name": name, "folder": folder}}

    rundir.mark_done("evaluate", summary("eval", None, ["vicuna_80"], 1.9))
    other = rundir.eval_dir / "mine-1234abcd"
    other.mkdir(parents=True)
    (other / "summary.json").write_text(json.dumps(summary("eval/mine-1234abcd", "mine-1234abcd", ["mine"], 1.7)))

    report = write_report(rundir)
    assert report["headline"]["leads_with"] == "fidelity" and report["headline"]["judge_informative"] is False
    assert report["headline"]["fidelity"]["student"]["teacher_answer_nll"] == 1.9
    assert [e["folder"] for e in report["evaluations"]] == ["eval", "eval/mine-1234abcd"]
    assert report["models"][1]["fidelity"]["answer_similarity"] == 0.81
    assert report["models"][0]["fidelity"]["answer_similarity"] == 1.0  # the teacher: the reference
    assert report["judge_diagnostics"]["position_flip_rate"] == 1.0

    markdown = (rundir.root / "report.md").read_text()
    first_lines = markdown.split("## Quality and fidelity")[0]
    assert "The judge is not informative: its verdict changed with the order" in first_lines
    assert "**Fidelity to the teacher: NLL of the teacher's answers 1.9 (base student 2.5)" in first_lines
    assert first_lines.index("not informative") < first_lines.index("win rate 0.5")
    assert "| student | all | 0 | 4 | 0 | 0 | 0.5 | 0.3 – 0.7 | 0.5 | 1.9 | 0.81 | 0.42 |" in markdown
    assert "## Evaluation `mine-1234abcd` (`eval/mine-1234abcd/`: mine; 4 prompts)" in markdown
    assert "NLL of the teacher's answers 1.7" in markdown.split("## Evaluation `mine-1234abcd`")[1]
    assert "## Judge diagnostics" in markdown and "| llama.cpp:<judge> | 1 | 1 | n/a | 0 |" in markdown

    page = (rundir.root / "report.html").read_text()
    assert 'class="warning">The judge is not informative' in page and "llama.cpp:&lt;judge&gt;" in page
    assert "Evaluation <code>mine-1234abcd</code>" in page and "NLL of the teacher&#x27;s answers" in page

    line = headline(report)
    assert line.startswith("judge not informative (its verdict changed") and "fidelity to the teacher" in line
    assert "win rate 0.5 (95% CI" in line
