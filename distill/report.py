"""The run report: counts at every stage, tokens and time per stage, quality and cost side by side."""

from __future__ import annotations

from distill.records import write_atomic, write_json
from distill.rundir import STAGES, RunDir


def build_report(rundir: RunDir) -> dict:
    """Gather every finished stage's summary into one report."""
    stages = {name: rundir.stage_summary(name) for name in STAGES}
    generate, filtered, finetune, evaluate = (stages[name] or {} for name in STAGES)
    report = {
        "run_dir": str(rundir.root),
        "counts": {
            "generation_requests": generate.get("requests"),
            "tasks_parsed": generate.get("tasks_parsed"),
            "generated": generate.get("kept"),
            "generate_dropped": generate.get("dropped"),
            "rated": filtered.get("rated"),
            "filtered": filtered.get("kept"),
            "filter_dropped": filtered.get("dropped"),
            "score_histogram": {k.split(":", 1)[1]: v for k, v in (filtered.get("counts") or {}).items()
                                if k.startswith("score:")},
            "train": finetune.get("train_records"),
            "heldout": finetune.get("heldout_records"),
            "evaluated_prompts": evaluate.get("prompts"),
        },
        "tokens": {
            name: {"prompt": (stages[name] or {}).get("prompt_tokens", 0),
                   "completion": (stages[name] or {}).get("completion_tokens", 0)}
            for name in ("generate", "filter", "evaluate")
        },
        "seconds": {name: (stages[name] or {}).get("seconds") for name in STAGES},
        "quality": {key: evaluate.get(key) for key in
                    ("wins", "ties", "losses", "invalid", "win_rate", "win_rate_ci95", "lc_win_rate", "per_set")},
        "base_student_quality": evaluate.get("base_student_quality"),
        "efficiency": {"student": evaluate.get("student"), "base_student": evaluate.get("base_student"),
                       "teacher": evaluate.get("teacher")},
        "training": {key: finetune.get(key) for key in ("steps", "train_loss", "tokens_seen", "trainable_params")},
        "filter": {key: filtered.get(key) for key in ("selection", "threshold", "top_k", "histogram")},
        "diversity": generate.get("diversity"),
        "stages_finished": [name for name in STAGES if stages[name] is not None],
    }
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
    lines = ["# Distillation run report", "", f"Run directory: `{report['run_dir']}`", "", "## Quality: student vs teacher", ""]
    lines += ["| against the teacher | set | wins | ties | losses | invalid | win rate | 95% CI | length-controlled |",
              "|---|---|---|---|---|---|---|---|---|"]
    rows = [("fine-tuned student", quality), ("base student (no adapter)", report.get("base_student_quality"))]
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
        "", "## Cost: student vs teacher", "",
        "| model | parameters | size on disk (MB) | mean latency (s) | p95 latency (s) | tokens/s |", "|---|---|---|---|---|---|",
    ]
    for role in ("student", "base_student", "teacher"):
        eff = report["efficiency"].get(role)
        if not eff:
            continue
        size = eff.get("size_on_disk_bytes")
        lines.append(
            f"| {role}: {eff.get('identity', 'n/a')} | {_fmt(eff.get('parameters'))} | "
            f"{_fmt(size / 1e6 if size else None)} | {_fmt(eff.get('mean_latency_s'))} | "
            f"{_fmt(eff.get('p95_latency_s'))} | {_fmt(eff.get('tokens_per_s'))} |"
        )
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
    lines += ["", "## Tokens and time per stage", "", "| stage | prompt tokens | completion tokens | seconds |",
              "|---|---|---|---|"]
    for name, seconds in report["seconds"].items():
        tokens = report["tokens"].get(name, {})
        lines.append(f"| {name} | {_fmt(tokens.get('prompt'))} | {_fmt(tokens.get('completion'))} | {_fmt(seconds)} |")
    return "\n".join(lines) + "\n"


def write_report(rundir: RunDir) -> dict:
    """Write report.json and report.md; return the report."""
    report = build_report(rundir)
    write_json(rundir.report_json, report)
    write_atomic(rundir.report_md, render_markdown(report))
    return report


def headline(report: dict) -> str:
    """One line for the terminal."""
    q = report["quality"]
    student = report["efficiency"].get("student") or {}
    teacher = report["efficiency"].get("teacher") or {}
    return (f"win rate {_fmt(q.get('win_rate'))} (W/T/L {q.get('wins')}/{q.get('ties')}/{q.get('losses')}); "
            f"kept {report['counts'].get('filtered')} of {report['counts'].get('generated')} generated; "
            f"student {_fmt(student.get('mean_latency_s'))} s/answer vs teacher {_fmt(teacher.get('mean_latency_s'))} s/answer")
