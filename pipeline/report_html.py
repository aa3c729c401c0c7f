"""report.html: the run report as one self-contained page (plots embedded as base64 PNG).

Every piece of text that comes from the run (instructions, answers, model names, reasons)
is escaped, so an answer holding HTML or a script shows as text and runs nothing.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from pipeline.report_words import (
    FIDELITY_KEYS,
    TRADEOFF_HEADER,
    TRADEOFF_NOTE,
    headline_parts,
    score_spread_warning,
    set_labels,
    tradeoff_cells,
    tradeoff_sentence,
)
from pipeline.report_plots import outcomes_per_set_png, quality_cost_png

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 70rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
/* Tables fit the page: a long unbroken value (a model's identity, a path) wraps anywhere inside
   its cell instead of widening the table past the page; a table wider than the page all the
   same scrolls inside its own box, and the page does not. */
.ident, code { overflow-wrap: anywhere; }
.table-box { max-width: 100%; overflow-x: auto; }
th { background: #f5f5f5; }
.headline { font-size: 1.3rem; background: #e3f2fd; padding: 0.8rem 1rem; border-radius: 6px; }
.warning { font-size: 1.1rem; background: #fff3e0; border-left: 4px solid #ef6c00; padding: 0.8rem 1rem; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.pair pre { white-space: pre-wrap; background: #fafafa; border: 1px solid #eee; padding: 0.5rem; margin: 0; }
img { max-width: 100%; }
"""


def _text(value, digits: int = 3) -> str:
    """A value as escaped text: numbers rounded, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return escape(f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}")
    if isinstance(value, int):
        return escape(f"{value:,}")
    return escape(str(value))


def _share(value) -> str:
    return "n/a" if value is None else escape(f"{value:.0%}")


def _megabytes(value) -> str:
    return "n/a" if not value else escape(f"{value / 1e6:,.0f}")


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; `header` is escaped here, the cells must already be escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<div class="table-box"><table><tr>{head}</tr>{body}</table></div>'


def _headline(head: dict, recommendation: str | None = None) -> str:
    parts = headline_parts(head, number=_text, bold=lambda text: f"<b>{text}</b>")
    if parts is None:
        return "<p>No evaluation in this run yet.</p>"
    win, fidelity, cost = parts["win"], parts["fidelity"], parts["cost"]
    if parts["warning"] is None:
        html = (f'<p class="headline">Student {win} against the teacher' + (f"; {escape(fidelity)}" if fidelity else "")
                + f"; {cost}</p>")
    else:
        fidelity = fidelity or "fidelity to the teacher: not measured"
        html = (f'<p class="warning">{escape(parts["warning"])}</p>'
                f'<p class="headline"><b>{escape(fidelity[0].upper() + fidelity[1:])}</b>.</p>'
                f"<p>The judge's {win}; {cost}</p>")
    return html + (f"<p>{escape(recommendation)}</p>" if recommendation else "")


def _models_table(rows: list[dict], front: list[str]) -> str:
    """Two tables of the same models, so that each fits the page: quality (the judge's verdicts
    and fidelity to the teacher), then size and cost."""
    quality_cells, cost_cells = [], []
    for row in rows:
        eff, quality, fidelity = row["efficiency"], row.get("quality") or {}, row.get("fidelity") or {}
        low, high = quality.get("win_rate_ci95") or [None, None]
        name = escape(row["label"]) + (" ★" if row["label"] in front else "")
        quality_cells.append([
            name, f'<span class="ident">{_text(eff.get("identity"))}</span>',
            _text(row.get("win_rate")), f"{_text(low)} – {_text(high)}" if quality else "(reference)",
            _text(quality.get("lc_win_rate")), *(_text(fidelity.get(key)) for key in FIDELITY_KEYS),
        ])
        cost_cells.append([
            name, _text(eff.get("parameters")), _megabytes(eff.get("size_on_disk_bytes")),
            _megabytes(eff.get("peak_memory_bytes")),
            f"{_text(eff.get('p50_latency_s'))} / {_text(eff.get('p95_latency_s'))}", _text(eff.get("p50_ttft_s")),
            _text(eff.get("tokens_per_s")), _text(eff.get("cost_per_1k_answers_usd"), 4),
        ])
    return (_table(["model", "identity", "win rate", "95% CI", "length-controlled", "NLL of the teacher's answers",
                    "answer similarity", "ROUGE-L"], quality_cells)
            + _table(["model", "parameters", "size on disk (MB)", "peak memory (MB)", "p50 / p95 latency (s)",
                      "p50 first token (s)", "tokens/s", "USD per 1,000 answers"], cost_cells))


def _diagnostics(diagnostics: dict | None) -> str:
    if not diagnostics:
        return ""
    second = diagnostics.get("second_judge") or {}
    kappa = (f"{_text(second.get('cohen_kappa'))} ({_text(second.get('identity'))}, {_text(second.get('pairs'))} pairs)"
             if second else "no second judge (evaluate.second_judge)")
    table = _table(["judge", "position flip rate", "first-position win rate", "length-win correlation",
                    "invalid rate", "Cohen's kappa with the second judge"],
                   [[_text(diagnostics.get("judge")), _text(diagnostics.get("position_flip_rate")),
                     _text(diagnostics.get("first_position_win_rate")),
                     _text(diagnostics.get("length_win_correlation")), _text(diagnostics.get("invalid_rate")), kappa]])
    verdict = "informative" if diagnostics.get("informative") else "<b>not informative</b>"
    reasons = "; ".join(escape(w) for w in diagnostics.get("warnings") or [])
    return table + f"<p>The judge is {verdict}" + (f": {reasons}.</p>" if reasons else ".</p>")


def _overlap(overlap: dict | None) -> str:
    if overlap is None:
        return ""
    return ("<p>Training records that copy a prompt of this evaluation (13-word overlap or ROUGE-L): "
            + escape(", ".join(f"{name} {count}" for name, count in overlap.items())) + ".</p>")


def _decontamination(decontamination: dict | None) -> str:
    if not decontamination:
        return ""
    if not decontamination.get("against"):
        return "<p>Decontamination: no evaluation set to check against (evaluate.sets holds only heldout).</p>"
    return (f"<h3>Decontamination</h3><p>{_text(decontamination.get('checked'))} records checked against "
            f"{_text(decontamination.get('prompts'))} evaluation prompts ({escape(str(decontamination.get('rule')))}).</p>"
            + _table(["evaluation set", "records dropped"],
                     [[escape(str(name)), _text(count)]
                      for name, count in (decontamination.get("dropped_per_set") or {}).items()]))


def _notes(rows: list[dict]) -> str:
    notes = sorted({f"Cost: {row['efficiency']['cost_basis']}" for row in rows if row["efficiency"].get("cost_basis")}
                   | {f"Peak memory: {row['efficiency']['peak_memory_method']}" for row in rows
                      if row["efficiency"].get("peak_memory_method")})
    return "<ul>" + "".join(f"<li>{escape(note)}.</li>" for note in notes) + "</ul>" if notes else ""


def _counts(counts: dict) -> str:
    keys = ("generation_requests", "tasks_parsed", "generated", "rated", "filtered", "train", "heldout",
            "evaluated_prompts")
    html = _table(["step", "records"], [[escape(key.replace("_", " ")), _text(counts.get(key))] for key in keys])
    for title, key in (("Dropped in generation", "generate_dropped"), ("Dropped by the filter", "filter_dropped")):
        if counts.get(key):
            html += f"<h3>{escape(title)}</h3>" + _table(
                ["reason", "count"], [[escape(str(reason)), _text(n)] for reason, n in counts[key].items()])
    return html


def _examples(examples: dict) -> str:
    parts = []
    for label, shown in examples.items():
        for example in shown:
            prompt = example["instruction"] + (f"\n\n{example['input']}" if example.get("input") else "")
            parts.append(
                f"<h3>{escape(label)} vs teacher — {escape(example['set'])}, judged: {escape(example['outcome'])} "
                f"(word overlap {_text(example.get('word_overlap'))})</h3><pre>{escape(prompt)}</pre>"
                f'<div class="pair"><div><b>{escape(label)}</b><pre>{escape(example["student"])}</pre></div>'
                f'<div><b>teacher</b><pre>{escape(example["teacher"])}</pre></div></div>')
    return "".join(parts) or "<p>No examples.</p>"


def _run_image(run_root: Path, name: str, alt: str) -> str:
    path = run_root / name
    return _img(path.read_bytes(), alt) if path.is_file() else ""


def render_html(report: dict, run_root: Path) -> str:
    """The whole report as one HTML page; images of the run directory are embedded too."""
    rows = report.get("models") or []
    comparison = report.get("quality_vs_cost") or {}
    front = comparison.get("pareto_front") or []
    sections = [f"<h1>Distillation run report</h1><p>Run directory: <code>{escape(report['run_dir'])}</code></p>"]
    if report.get("tradeoff"):
        sections += ["<h2>The trade-off: each model against the teacher</h2>",
                     _table(list(TRADEOFF_HEADER), [[escape(cell) for cell in tradeoff_cells(row)]
                                                    for row in report["tradeoff"]]),
                     f"<p><b>{escape(tradeoff_sentence(report['tradeoff']) or '')}</b> {escape(TRADEOFF_NOTE)}</p>"]
    sections += [_headline(report.get("headline") or {}, comparison.get("recommendation"))]
    evaluations = report.get("evaluations") or []
    if rows:
        sections += ["<h2>Quality, fidelity and cost per model</h2>",
                     "<p>Each prompt is judged twice, with the answers in both orders; a verdict that flips with "
                     "the order is a tie. Length-controlled: AlpacaEval 2's GLM at equal answer length (no instruction "
                     "difficulty). Fidelity needs no judge: the mean NLL per token of the teacher's own answers under "
                     "the model (local models), the mean all-MiniLM-L6-v2 similarity and ROUGE-L of its answers to the "
                     "teacher's. ★ marks the Pareto front (no other model is both cheaper and better).</p>",
                     _models_table(rows, front), _notes(rows),
                     _overlap((evaluations[0] if evaluations else {}).get("training_overlap"))]
        if report.get("judge_diagnostics"):
            sections += ["<h2>Judge diagnostics</h2>", _diagnostics(report["judge_diagnostics"])]
        sections += ["<h2>Win / tie / loss per set</h2>", _img(outcomes_per_set_png([r for r in rows if r["quality"]]),
                                                               "win, tie and loss per set")]
        if comparison.get("points"):
            sections += ["<h2>Quality against cost</h2>",
                         _img(quality_cost_png({k: tuple(v) for k, v in comparison["points"].items()}, front,
                                               comparison["axis"]), "win rate against cost")]
    for section in evaluations[1:]:
        other = section.get("quality_vs_cost") or {}
        sections += [f"<h2>Evaluation <code>{escape(str(section['name']))}</code> "
                     f"(<code>{escape(section['folder'])}/</code>: {escape(set_labels(section.get('sets')))})"
                     "</h2>", _headline(section.get("headline") or {}, other.get("recommendation")),
                     _models_table(section["models"], other.get("pareto_front") or []),
                     _overlap(section.get("training_overlap")), _diagnostics(section.get("judge_diagnostics"))]
    sections += ["<h2>Counts at every stage</h2>", _counts(report.get("counts") or {}),
                 _decontamination(report.get("decontamination"))]
    histogram = _run_image(run_root, "score_histogram.png", "judge score histogram")
    spread = score_spread_warning((report.get("filter") or {}).get("score_spread"))
    if histogram or spread:
        sections += ["<h2>Filter: judge scores</h2>", f"<p><b>Warning:</b> {escape(spread)}</p>" if spread else "",
                     histogram or ""]
    diversity = _run_image(run_root, "diversity.png", "diversity of the generated set")
    if diversity:
        sections += ["<h2>Diversity of the generated set</h2>", diversity]
    sections += _select_compare(report.get("select_compare"), run_root)
    sections += ["<h2>Where the student and the teacher differ most</h2>", _examples(report.get("examples") or {})]
    seconds = report.get("seconds") or {}
    tokens = report.get("tokens") or {}
    sections += ["<h2>Tokens and time per stage</h2>", _table(
        ["stage", "prompt tokens", "completion tokens", "seconds"],
        [[escape(name), _text((tokens.get(name) or {}).get("prompt")), _text((tokens.get(name) or {}).get("completion")),
          _text(value)] for name, value in seconds.items()])]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Distillation run report</title>"
            f"<style>{STYLE}</style></head><body>" + "\n".join(sections) + "</body></html>\n")


def _select_compare(comparison: dict | None, run_root: Path) -> list[str]:
    """`distill select-compare`'s table and plot (nothing without one)."""
    from pipeline.report_select import (
        COMPARE_PLOT,
        SELECT_COMPARE_COLUMNS,
        SELECT_DIR,
        select_compare_cells,
        select_compare_notes,
    )

    if not comparison:
        return []
    rows = [select_compare_cells(row, _text) for row in comparison["rows"]]
    return (["<h2>Data selection strategies compared</h2>"]
            + [f"<p>{escape(note)}</p>" for note in select_compare_notes(comparison)]
            + [_table(list(SELECT_COMPARE_COLUMNS), rows),
               _run_image(run_root, f"{SELECT_DIR}/{COMPARE_PLOT}", "win rate and fidelity per selection strategy")])
