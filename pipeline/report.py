"""The run report: counts at every stage, tokens and time per stage, quality and cost side by side."""

from __future__ import annotations

import json

from core.records import write_atomic, write_json
from core.rundir import RunDir
from eval.efficiency import pareto_front
from pipeline.report_select import (
    COMPARE_PLOT,
    SELECT_COMPARE_COLUMNS,
    SELECT_DIR,
    load_select_compare,
    select_compare_cells,
    select_compare_notes,
)

QUALITY_KEYS = ("wins", "ties", "losses", "invalid", "win_rate", "win_rate_ci95", "lc_win_rate", "judged", "per_set")


def model_rows(evaluate: dict) -> list[dict]:
    """One row per model evaluated: the teacher (win rate 0.5 against itself by definition),
    then every contestant judged against it, each with its quality and its cost."""
    if not evaluate.get("teacher"):
        return []
    rows = [{"label": "teacher", "kind": "teacher", "win_rate": 0.5, "quality": None,
             "efficiency": evaluate["teacher"]}]
    contestants = evaluate.get("contestants") or {
        label: {"kind": "student", "efficiency": evaluate.get(label),
                "quality": ({key: evaluate.get(key) for key in QUALITY_KEYS} if label == "student"
                            else evaluate.get("base_student_quality"))}
        for label in ("student", "base_student") if evaluate.get(label)}
    for label, entry in contestants.items():
        rows.append({"label": label, "kind": entry["kind"], "win_rate": (entry["quality"] or {}).get("win_rate"),
                     "quality": entry["quality"], "efficiency": entry["efficiency"] or {}})
    return rows


def quality_against_cost(rows: list[dict]) -> dict:
    """The Pareto front of win rate against cost (cost per 1,000 answers where every model has
    one, else peak memory), and a plain sentence of what it means."""
    axis = "cost_per_1k_answers_usd"
    if any(row["efficiency"].get(axis) is None for row in rows):
        axis = "peak_memory_bytes"
    points = {row["label"]: (row["efficiency"].get(axis), row["win_rate"]) for row in rows
              if row["efficiency"].get(axis) is not None and row["win_rate"] is not None}
    return {"axis": axis, "points": points, "pareto_front": pareto_front(points) if points else [],
            "recommendation": recommendation(rows)}


def _ratio(numerator, denominator) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def recommendation(rows: list[dict]) -> str | None:
    """One sentence a person can act on: what the cheapest good-enough model keeps, and at what cost."""
    by_label = {row["label"]: row for row in rows}
    student, teacher = by_label.get("student"), by_label.get("teacher")
    if not student or student["win_rate"] is None or not teacher:
        return None
    variants = [row for row in rows if row["kind"] == "variant" and row["win_rate"] is not None
                and row["efficiency"].get("peak_memory_bytes")]
    if variants and student["win_rate"]:
        best = max(variants, key=lambda row: (row["win_rate"], -row["efficiency"]["peak_memory_bytes"]))
        kept = _ratio(best["win_rate"], student["win_rate"])
        memory = _ratio(best["efficiency"]["peak_memory_bytes"], student["efficiency"].get("peak_memory_bytes"))
        if memory is not None:
            return (f"The {best['label']} variant keeps {kept:.0%} of the student's win rate at {memory:.0%} "
                    f"of its peak memory.")
    cost = _ratio(student["efficiency"].get("cost_per_1k_answers_usd"),
                  teacher["efficiency"].get("cost_per_1k_answers_usd"))
    memory = _ratio(student["efficiency"].get("peak_memory_bytes"), teacher["efficiency"].get("peak_memory_bytes"))
    parts = [f"The student wins {student['win_rate']:.0%} against the teacher (50% = as good)"]
    if cost is not None:
        parts.append(f"at {cost:.0%} of the teacher's cost per 1,000 answers")
    if memory is not None:
        parts.append(f"and {memory:.0%} of its peak memory")
    base = by_label.get("base_student")
    if base and base["win_rate"] is not None:
        parts.append(f"(the base student without the adapter: {base['win_rate']:.0%})")
    return " ".join(parts) + "."


def model_table_rows(report: dict) -> list[dict]:
    """Every model's quality and cost as flat rows (for a table artifact or a spreadsheet)."""
    front = set((report.get("quality_vs_cost") or {}).get("pareto_front") or [])
    rows = []
    for row in report.get("models") or []:
        eff, quality = row["efficiency"], row.get("quality") or {}
        ci = quality.get("win_rate_ci95") or [None, None]
        rows.append({
            "model": row["label"], "identity": eff.get("identity"), "win_rate": row.get("win_rate"),
            "ci95_low": ci[0], "ci95_high": ci[1], "lc_win_rate": quality.get("lc_win_rate"),
            "wins": quality.get("wins"), "ties": quality.get("ties"), "losses": quality.get("losses"),
            "parameters": eff.get("parameters"), "size_on_disk_bytes": eff.get("size_on_disk_bytes"),
            "peak_memory_bytes": eff.get("peak_memory_bytes"), "p50_latency_s": eff.get("p50_latency_s"),
            "p95_latency_s": eff.get("p95_latency_s"), "p50_ttft_s": eff.get("p50_ttft_s"),
            "tokens_per_s": eff.get("tokens_per_s"), "cost_per_1k_answers_usd": eff.get("cost_per_1k_answers_usd"),
            "pareto_front": row["label"] in front,
        })
    return rows


def load_examples(rundir: RunDir) -> dict:
    """Example answers where each contestant and the teacher differ most (eval/examples.json)."""
    path = rundir.eval_dir / "examples.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def build_report(rundir: RunDir) -> dict:
    """Gather every finished stage's summary into one report."""
    from pipeline.session import finished_summary
    from pipeline.stages import STAGES
    from pipeline.stages.evaluate import EvaluateSummary
    from pipeline.stages.filter import FilterSummary
    from pipeline.stages.finetune import FinetuneSummary
    from pipeline.stages.generate import GenerateSummary

    stages = {stage.name: finished_summary(rundir, stage) for stage in STAGES}
    generate = stages.get("generate") or GenerateSummary(tasks_parsed=None)
    filtered = stages.get("filter") or FilterSummary()
    finetune = stages.get("finetune") or FinetuneSummary()
    evaluate = stages.get("evaluate") or EvaluateSummary()
    ran = {name: summary is not None for name, summary in stages.items()}
    report = {
        "run_dir": str(rundir.root),
        "counts": {
            "generation_requests": generate.requests if ran.get("generate") else None,
            "tasks_parsed": generate.tasks_parsed,
            "generated": generate.kept if ran.get("generate") else None,
            "generate_dropped": generate.dropped if ran.get("generate") else None,
            "rated": filtered.rated if ran.get("filter") else None,
            "filtered": filtered.kept if ran.get("filter") else None,
            "filter_dropped": filtered.dropped if ran.get("filter") else None,
            "score_histogram": {k.split(":", 1)[1]: v for k, v in filtered.counts.items() if k.startswith("score:")},
            "train": finetune.train_records if ran.get("finetune") else None,
            "heldout": finetune.heldout_records if ran.get("finetune") else None,
            "evaluated_prompts": evaluate.prompts if ran.get("evaluate") else None,
        },
        "tokens": {
            stage.name: {"prompt": getattr(stages[stage.name], "prompt_tokens", 0) or 0,
                         "completion": getattr(stages[stage.name], "completion_tokens", 0) or 0}
            for stage in STAGES if stage.sends_requests
        },
        "seconds": {name: summary.seconds if summary is not None else None for name, summary in stages.items()},
        "quality": {key: getattr(evaluate, key) if ran.get("evaluate") else None for key in
                    ("wins", "ties", "losses", "invalid", "win_rate", "win_rate_ci95", "lc_win_rate", "per_set")},
        "base_student_quality": evaluate.base_student_quality,
        "efficiency": {"student": evaluate.student, "base_student": evaluate.base_student,
                       "teacher": evaluate.teacher},
        "training": {key: getattr(finetune, key) for key in ("steps", "train_loss", "tokens_seen", "trainable_params")},
        "filter": {key: getattr(filtered, key) if ran.get("filter") else None
                   for key in ("selection", "threshold", "top_k", "histogram", "filters")},
        "diversity": generate.diversity,
        "stages_finished": [name for name, summary in stages.items() if summary is not None],
    }
    evaluate = evaluate.to_json() if ran.get("evaluate") else {}
    rows = model_rows(evaluate)
    student, teacher = (next((r["efficiency"] for r in rows if r["label"] == label), {}) for label in ("student", "teacher"))
    report["models"] = rows
    report["quality_vs_cost"] = quality_against_cost(rows) if rows else None
    report["headline"] = {
        "win_rate": evaluate.get("win_rate"), "win_rate_ci95": evaluate.get("win_rate_ci95"),
        "cost_ratio_student_teacher": _ratio(student.get("cost_per_1k_answers_usd"),
                                             teacher.get("cost_per_1k_answers_usd")),
        "memory_ratio_student_teacher": _ratio(student.get("peak_memory_bytes"), teacher.get("peak_memory_bytes")),
    }
    report["examples"] = load_examples(rundir)
    report["select_compare"] = load_select_compare(rundir)
    return report


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_markdown(report: dict) -> str:
    """The report as a page a person reads."""
    counts, quality = report["counts"], report["quality"]
    lines = ["# Distillation run report", "", f"Run directory: `{report['run_dir']}`", ""]
    head = report.get("headline") or {}
    if head.get("win_rate") is not None:
        ci = head.get("win_rate_ci95") or [None, None]
        lines += [f"**Win rate {_fmt(head['win_rate'])}** (95% CI {_fmt(ci[0])} – {_fmt(ci[1])}); "
                  f"cost per 1,000 answers, student / teacher: {_fmt(head.get('cost_ratio_student_teacher'))}; "
                  f"peak memory, student / teacher: {_fmt(head.get('memory_ratio_student_teacher'))}.", ""]
    if (report.get("quality_vs_cost") or {}).get("recommendation"):
        lines += [report["quality_vs_cost"]["recommendation"], ""]
    lines += ["## Quality against the teacher", ""]
    lines += ["| model | set | wins | ties | losses | invalid | win rate | 95% CI | length-controlled |",
              "|---|---|---|---|---|---|---|---|---|"]
    rows = [(row["label"], row["quality"]) for row in report.get("models") or [] if row["quality"]]
    if not rows:
        rows = [("student", quality), ("base_student", report.get("base_student_quality"))]
    for label, q in rows:
        if not q:
            continue
        for set_name, numbers in [("all", q), *sorted((q.get("per_set") or {}).items())]:
            ci = numbers.get("win_rate_ci95") or [None, None]
            lines.append(
                f"| {label} | {set_name} | {_fmt(numbers.get('wins'))} | {_fmt(numbers.get('ties'))} | "
                f"{_fmt(numbers.get('losses'))} | {_fmt(numbers.get('invalid'))} | {_fmt(numbers.get('win_rate'))} | "
                f"{_fmt(ci[0])} – {_fmt(ci[1])} | {_fmt(numbers.get('lc_win_rate'))} |")
    lines += [
        "", "Each prompt is judged twice, with the answers in both orders; a verdict that flips with the order is a tie.",
        "", "## Cost, measured on this machine in this run", "",
        "| model | parameters | size on disk (MB) | peak memory (MB) | p50 / p95 latency (s) | p50 time to first token (s) "
        "| tokens/s | cost per 1,000 answers (USD) |", "|---|---|---|---|---|---|---|---|",
    ]
    for row in report.get("models") or []:
        eff = row["efficiency"]
        size, peak = eff.get("size_on_disk_bytes"), eff.get("peak_memory_bytes")
        lines.append(
            f"| {row['label']}: {eff.get('identity', 'n/a')} | {_fmt(eff.get('parameters'))} | "
            f"{_fmt(size / 1e6 if size else None)} | {_fmt(peak / 1e6 if peak else None)} | "
            f"{_fmt(eff.get('p50_latency_s'))} / {_fmt(eff.get('p95_latency_s'))} | {_fmt(eff.get('p50_ttft_s'))} | "
            f"{_fmt(eff.get('tokens_per_s'))} | {_fmt(eff.get('cost_per_1k_answers_usd'))} |"
        )
    bases = {row["efficiency"].get("cost_basis") for row in report.get("models") or []} - {None}
    memory = {row["efficiency"].get("peak_memory_method") for row in report.get("models") or []} - {None}
    lines += [""] + [f"- Cost: {basis}." for basis in sorted(bases)] + [f"- Peak memory: {m}." for m in sorted(memory)]
    lines += ["", "## Counts at every stage", "", "| step | records |", "|---|---|"]
    for key in ("generation_requests", "tasks_parsed", "generated", "rated", "filtered", "train", "heldout",
                "evaluated_prompts"):
        lines.append(f"| {key.replace('_', ' ')} | {_fmt(counts.get(key))} |")
    for title, key, column in (("Dropped in generation", "generate_dropped", "reason"),
                               ("Dropped by the filter", "filter_dropped", "reason"),
                               ("Judge scores", "score_histogram", "score")):
        if counts.get(key):
            lines += ["", f"### {title}", "", f"| {column} | count |", "|---|---|"]
            lines += [f"| {reason} | {n} |" for reason, n in counts[key].items()]
    steps = (report.get("filter") or {}).get("filters")
    if steps:
        lines += ["", f"Filter steps, in order: {' → '.join(steps)}."]
    if report.get("diversity"):
        d = report["diversity"]
        lines += ["", "## Diversity of the generated set", "",
                  f"{_fmt(d.get('distinct_verbs'))} distinct root verbs (parser: {d.get('parser')}); "
                  f"{_fmt(d.get('share_with_input'))} of records have an input. "
                  "Verbs and objects, lengths and ROUGE-L to the nearest seed: `diversity.json`.", "",
                  "![Diversity](diversity.png)"]
    if report.get("filter", {}).get("histogram"):
        lines += ["", "![Judge scores](score_histogram.png)", "",
                  "Example records for each score: `score_examples.json`."]
    lines += select_compare_markdown(report.get("select_compare"))
    lines += ["", "## Tokens and time per stage", "", "| stage | prompt tokens | completion tokens | seconds |",
              "|---|---|---|---|"]
    for name, seconds in report["seconds"].items():
        tokens = report["tokens"].get(name, {})
        lines.append(f"| {name} | {_fmt(tokens.get('prompt'))} | {_fmt(tokens.get('completion'))} | {_fmt(seconds)} |")
    return "\n".join(lines) + "\n"


def select_compare_markdown(comparison: dict | None) -> list[str]:
    """The report's section on `distill select-compare`, as markdown lines (none without one)."""
    if not comparison:
        return []
    lines = ["", "## Data selection strategies compared", ""] + [note + "\n" for note in select_compare_notes(comparison)]
    lines += ["| " + " | ".join(SELECT_COMPARE_COLUMNS) + " |", "|" + "---|" * len(SELECT_COMPARE_COLUMNS)]
    lines += ["| " + " | ".join(select_compare_cells(row, _fmt)) + " |" for row in comparison["rows"]]
    lines += ["", f"Each strategy's run: `{SELECT_DIR}/<strategy>/` (its own report.md)."]
    plot = f"{SELECT_DIR}/{COMPARE_PLOT}"
    return lines + ["", f"![Selection strategies]({plot})"]


def write_report(rundir: RunDir) -> dict:
    """Write report.json, report.md and report.html; return the report."""
    from pipeline.report_html import render_html

    report = build_report(rundir)
    write_json(rundir.report_json, report)
    write_atomic(rundir.report_md, render_markdown(report))
    write_atomic(rundir.root / "report.html", render_html(report, rundir.root))
    return report


def headline(report: dict) -> str:
    """One line for the terminal."""
    q = report["quality"]
    student = report["efficiency"].get("student") or {}
    teacher = report["efficiency"].get("teacher") or {}
    ci = q.get("win_rate_ci95") or [None, None]
    return (f"win rate {_fmt(q.get('win_rate'))} (95% CI {_fmt(ci[0])}–{_fmt(ci[1])}; "
            f"W/T/L {q.get('wins')}/{q.get('ties')}/{q.get('losses')}); "
            f"kept {report['counts'].get('filtered')} of {report['counts'].get('generated')} generated; "
            f"mean latency student {_fmt(student.get('mean_latency_s'))} s vs teacher {_fmt(teacher.get('mean_latency_s'))} s; "
            f"cost per answer student/teacher {_fmt((report.get('headline') or {}).get('cost_ratio_student_teacher'))}")
