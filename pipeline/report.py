"""The run report: counts at every stage, tokens and time per stage, quality and cost side by side."""

from __future__ import annotations

import json

from core.records import write_atomic, write_json
from core.rundir import RunDir
from eval.efficiency import pareto_front
from pipeline.report_words import (
    FIDELITY_KEYS,
    TRADEOFF_HEADER,
    TRADEOFF_NOTE,
    fidelity_sentence,
    headline_parts,
    score_spread_warning,
    set_labels,
    tradeoff_cells,
    tradeoff_rows,
    tradeoff_sentence,
)
from pipeline.report_words import fmt as _fmt
from pipeline.report_select import (
    COMPARE_PLOT,
    SELECT_COMPARE_COLUMNS,
    SELECT_DIR,
    load_select_compare,
    select_compare_cells,
    select_compare_notes,
)

QUALITY_KEYS = ("wins", "ties", "losses", "invalid", "win_rate", "win_rate_ci95", "lc_win_rate", "judged", "per_set")
# The teacher is the reference its contestants are measured against.
TEACHER_FIDELITY = {"teacher_answer_nll": None, "answer_similarity": 1.0, "answer_rouge_l": 1.0,
                    "note": "the reference: its own answers"}
NOT_MEASURED = {key: None for key in FIDELITY_KEYS}


def model_rows(evaluate: dict) -> list[dict]:
    """One row per model evaluated: the teacher (win rate 0.5 against itself by definition),
    then every contestant judged against it, each with its quality and its cost."""
    if not evaluate.get("teacher"):
        return []
    rows = [{"label": "teacher", "kind": "teacher", "win_rate": 0.5, "quality": None,
             "fidelity": TEACHER_FIDELITY, "efficiency": evaluate["teacher"]}]
    contestants = evaluate.get("contestants") or {
        label: {"kind": "student", "efficiency": evaluate.get(label),
                "quality": ({key: evaluate.get(key) for key in QUALITY_KEYS} if label == "student"
                            else evaluate.get("base_student_quality"))}
        for label in ("student", "base_student") if evaluate.get(label)}
    for label, entry in contestants.items():
        rows.append({"label": label, "kind": entry["kind"], "win_rate": (entry["quality"] or {}).get("win_rate"),
                     "quality": entry["quality"], "fidelity": entry.get("fidelity") or NOT_MEASURED,
                     "efficiency": entry["efficiency"] or {}})
    return rows


def quality_against_cost(rows: list[dict], judge_informative: bool = True) -> dict:
    """The Pareto front of win rate against cost (cost per 1,000 answers where every model has
    one, else peak memory), and a plain sentence of what it means (in fidelity when the judge
    is not informative)."""
    axis = "cost_per_1k_answers_usd"
    if any(row["efficiency"].get(axis) is None for row in rows):
        axis = "peak_memory_bytes"
    points = {row["label"]: (row["efficiency"].get(axis), row["win_rate"]) for row in rows
              if row["efficiency"].get(axis) is not None and row["win_rate"] is not None}
    return {"axis": axis, "points": points, "pareto_front": pareto_front(points) if points else [],
            "recommendation": recommendation(rows) if judge_informative else fidelity_recommendation(rows)}


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


def fidelity_recommendation(rows: list[dict]) -> str | None:
    """The recommendation in terms of fidelity to the teacher, for when the judge's win rates mean nothing."""
    by_label = {row["label"]: row for row in rows}
    student, teacher = by_label.get("student"), by_label.get("teacher")

    def nll(row: dict | None) -> float | None:
        return ((row or {}).get("fidelity") or {}).get("teacher_answer_nll")

    if not student or nll(student) is None or not teacher:
        return None
    variants = [row for row in rows if row["kind"] == "variant" and nll(row) is not None
                and row["efficiency"].get("peak_memory_bytes")]
    memory_of = student["efficiency"].get("peak_memory_bytes")
    if variants and memory_of:
        best = min(variants, key=lambda row: (nll(row), row["efficiency"]["peak_memory_bytes"]))
        return (f"Judged by fidelity (the judge is not informative), the {best['label']} variant scores the "
                f"teacher's answers at an NLL of {_fmt(nll(best))} nats/token against the student's "
                f"{_fmt(nll(student))} (lower is closer to the teacher), at "
                f"{best['efficiency']['peak_memory_bytes'] / memory_of:.0%} of its peak memory.")
    parts = [f"The student scores the teacher's answers at an NLL of {_fmt(nll(student))} nats/token"]
    if nll(by_label.get("base_student")) is not None:
        parts.append(f"(the base student without the adapter: {_fmt(nll(by_label['base_student']))}; lower is "
                     "closer to the teacher)")
    cost = _ratio(student["efficiency"].get("cost_per_1k_answers_usd"),
                  teacher["efficiency"].get("cost_per_1k_answers_usd"))
    if cost is not None:
        parts.append(f"at {cost:.0%} of the teacher's cost per 1,000 answers")
    return " ".join(parts) + "."


def model_table_rows(report: dict) -> list[dict]:
    """Every model's quality and cost as flat rows (for a table artifact or a spreadsheet)."""
    front = set((report.get("quality_vs_cost") or {}).get("pareto_front") or [])
    rows = []
    for row in report.get("models") or []:
        eff, quality, fidelity = row["efficiency"], row.get("quality") or {}, row.get("fidelity") or {}
        ci = quality.get("win_rate_ci95") or [None, None]
        rows.append({
            "model": row["label"], "identity": eff.get("identity"), "win_rate": row.get("win_rate"),
            "ci95_low": ci[0], "ci95_high": ci[1], "lc_win_rate": quality.get("lc_win_rate"),
            **{key: fidelity.get(key) for key in FIDELITY_KEYS},
            "wins": quality.get("wins"), "ties": quality.get("ties"), "losses": quality.get("losses"),
            "parameters": eff.get("parameters"), "size_on_disk_bytes": eff.get("size_on_disk_bytes"),
            "peak_memory_bytes": eff.get("peak_memory_bytes"), "p50_latency_s": eff.get("p50_latency_s"),
            "p95_latency_s": eff.get("p95_latency_s"), "p50_ttft_s": eff.get("p50_ttft_s"),
            "tokens_per_s": eff.get("tokens_per_s"), "cost_per_1k_answers_usd": eff.get("cost_per_1k_answers_usd"),
            "pareto_front": row["label"] in front,
        })
    return rows


def load_examples(folder) -> dict:
    """Example answers where each contestant and the teacher differ most (examples.json of an
    evaluation's folder; a RunDir means the run's first evaluation, eval/)."""
    folder = folder.eval_dir if isinstance(folder, RunDir) else folder
    path = folder / "examples.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def headline_of(evaluate: dict, rows: list[dict]) -> dict:
    """What a report leads with: the student's win rate and interval, its fidelity to the teacher
    (and the base student's), whether the judge is informative (when it is not, fidelity leads),
    and the student / teacher ratios of cost and peak memory."""
    student, teacher = (next((r for r in rows if r["label"] == label), None) for label in ("student", "teacher"))
    student_eff, teacher_eff = (row["efficiency"] if row else {} for row in (student, teacher))
    diagnostics = evaluate.get("judge_diagnostics") or {}
    informative = diagnostics.get("informative", True)
    return {
        "win_rate": evaluate.get("win_rate"), "win_rate_ci95": evaluate.get("win_rate_ci95"),
        "lc_win_rate": evaluate.get("lc_win_rate"),
        "fidelity": {row["label"]: {key: row["fidelity"].get(key) for key in FIDELITY_KEYS}
                     for row in rows if row["label"] in ("student", "base_student")},
        "judge_informative": informative, "judge_warnings": diagnostics.get("warnings") or [],
        "leads_with": "win_rate" if informative else "fidelity",
        "cost_ratio_student_teacher": _ratio(student_eff.get("cost_per_1k_answers_usd"),
                                             teacher_eff.get("cost_per_1k_answers_usd")),
        "memory_ratio_student_teacher": _ratio(student_eff.get("peak_memory_bytes"), teacher_eff.get("peak_memory_bytes")),
    }


def evaluation_section(evaluate: dict, folder) -> dict:
    """One evaluation of the run as the report shows it: its models (quality, fidelity, cost), the
    Pareto front, the judge diagnostics, the headline, examples and training overlap."""
    rows = model_rows(evaluate)
    about = evaluate.get("evaluation") or {}
    return {"name": about.get("name"), "folder": about.get("folder", "eval"), "sets": evaluate.get("sets"),
            "prompts": evaluate.get("prompts"), "models": rows,
            "quality_vs_cost": (quality_against_cost(rows, (evaluate.get("judge_diagnostics") or {}).get(
                "informative", True)) if rows else None),
            "judge_diagnostics": evaluate.get("judge_diagnostics"), "headline": headline_of(evaluate, rows),
            "training_overlap": evaluate.get("training_overlap"), "examples": load_examples(folder)}


def evaluation_sections(rundir: RunDir, first: dict | None) -> list[dict]:
    """Every evaluation of the run: the first (eval/), then each other one (eval/<name>/), by name."""
    from pipeline.stages.evaluate import other_evaluations

    sections = [evaluation_section(first, rundir.eval_dir)] if first else []
    for path in other_evaluations(rundir):
        sections.append(evaluation_section(json.loads(path.read_text(encoding="utf-8")), path.parent))
    return sections


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
                   for key in ("selection", "threshold", "top_k", "histogram", "filters", "score_spread")},
        "diversity": generate.diversity,
        "decontamination": filtered.decontamination if ran.get("filter") else None,
        "stages_finished": [name for name, summary in stages.items() if summary is not None],
    }
    sections = evaluation_sections(rundir, evaluate.to_json() if ran.get("evaluate") else None)
    primary = sections[0] if sections else evaluation_section({}, rundir.eval_dir)
    if not ran.get("evaluate") and sections:  # only named evaluations: the first of them leads
        lead = EvaluateSummary.from_json(json.loads((rundir.root / primary["folder"] / "summary.json").read_text(
            encoding="utf-8")))
        report["quality"] = {key: getattr(lead, key) for key in report["quality"]}
        report["base_student_quality"] = lead.base_student_quality
        report["efficiency"] = {"student": lead.student, "base_student": lead.base_student, "teacher": lead.teacher}
    report["models"] = primary["models"]
    report["quality_vs_cost"] = primary["quality_vs_cost"]
    report["judge_diagnostics"] = primary["judge_diagnostics"]
    report["headline"] = primary["headline"]
    report["examples"] = primary["examples"]
    report["evaluations"] = [{key: value for key, value in section.items() if key != "examples"}
                             for section in sections]
    from pipeline.estimate import cost_against_estimate

    report["cost"] = cost_against_estimate(rundir)
    report["tradeoff"] = tradeoff_rows(report["models"]) if report.get("models") else []
    report["select_compare"] = load_select_compare(rundir)
    return report


def _headline_lines(head: dict) -> list[str]:
    parts = headline_parts(head)
    if parts is None:
        return []
    win, fidelity = parts["win"], parts["fidelity"]
    if parts["warning"] is None:
        return [f"**{win[0].upper() + win[1:]}**" + (f"; {fidelity}" if fidelity else "") + f"; {parts['cost']}", ""]
    fidelity = fidelity or "fidelity to the teacher: not measured"
    return [f"**{parts['warning']}**", "", f"**{fidelity[0].upper() + fidelity[1:]}.** The judge's {win}; "
            f"{parts['cost']}", ""]


def _quality_lines(rows: list[dict]) -> list[str]:
    lines = ["| model | set | wins | ties | losses | invalid | win rate | 95% CI | length-controlled "
             "| NLL of the teacher's answers | answer similarity | ROUGE-L |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        fidelity = row.get("fidelity") or {}
        cells = " | ".join(_fmt(fidelity.get(key)) for key in FIDELITY_KEYS)
        q = row.get("quality")
        if not q:
            lines.append(f"| {row['label']} | all | | | | | (reference) | | | {cells} |")
            continue
        for set_name, numbers in [("all", q), *sorted((q.get("per_set") or {}).items())]:
            ci = numbers.get("win_rate_ci95") or [None, None]
            lines.append(
                f"| {row['label']} | {set_name} | {_fmt(numbers.get('wins'))} | {_fmt(numbers.get('ties'))} | "
                f"{_fmt(numbers.get('losses'))} | {_fmt(numbers.get('invalid'))} | {_fmt(numbers.get('win_rate'))} | "
                f"{_fmt(ci[0])} – {_fmt(ci[1])} | {_fmt(numbers.get('lc_win_rate'))} | "
                + (cells if set_name == "all" else " | ".join(["", "", ""])) + " |")
    return lines + [
        "", "Each prompt is judged twice, with the answers in both orders; a verdict that flips with the order is a "
        "tie. Length-controlled: AlpacaEval 2's GLM, read at equal answer length (no instruction difficulty: "
        "every prompt counts as equally hard; n/a under 5 judged prompts). Fidelity (no judge): the mean NLL per "
        "token of the teacher's own answers under the model, in the student's training template (local models "
        "only); the mean all-MiniLM-L6-v2 cosine similarity and ROUGE-L F of its answers to the teacher's."]


def _diagnostics_lines(diagnostics: dict | None) -> list[str]:
    if not diagnostics:
        return []
    second = diagnostics.get("second_judge") or {}
    lines = ["| judge | position flip rate | first-position win rate | length-win correlation | invalid rate "
             "| Cohen's kappa with the second judge |", "|---|---|---|---|---|---|",
             f"| {diagnostics.get('judge', 'n/a')} | {_fmt(diagnostics.get('position_flip_rate'))} | "
             f"{_fmt(diagnostics.get('first_position_win_rate'))} | {_fmt(diagnostics.get('length_win_correlation'))} | "
             f"{_fmt(diagnostics.get('invalid_rate'))} | "
             + (f"{_fmt(second.get('cohen_kappa'))} ({second.get('identity')}, {_fmt(second.get('pairs'))} pairs)"
                if second else "no second judge (evaluate.second_judge)") + " |", ""]
    verdict = "informative" if diagnostics.get("informative") else "**not informative**"
    lines.append(f"The judge is {verdict}" + (": " + "; ".join(diagnostics["warnings"]) if diagnostics.get("warnings")
                                                else ".") + ("." if diagnostics.get("warnings") else ""))
    return lines


def _overlap_line(overlap: dict | None) -> list[str]:
    if overlap is None:
        return []
    return ["", "Training records that copy a prompt of this evaluation (13-word overlap or ROUGE-L): "
            + ", ".join(f"{name} {_fmt(count)}" for name, count in overlap.items()) + "."]


def _section_lines(section: dict, title_level: str = "##") -> list[str]:
    """An evaluation's quality, fidelity and judge diagnostics."""
    lines = [f"{title_level} Quality and fidelity against the teacher", ""] + _quality_lines(section["models"])
    lines += _overlap_line(section.get("training_overlap"))
    if section.get("judge_diagnostics"):
        lines += ["", f"{title_level} Judge diagnostics", ""] + _diagnostics_lines(section["judge_diagnostics"])
    return lines


def _score_spread_lines(spread: dict | None) -> list[str]:
    sentence = score_spread_warning(spread)
    return ["", f"**Warning:** {sentence}"] if sentence else []


def _decontamination_lines(decontamination: dict | None) -> list[str]:
    if not decontamination:
        return []
    if not decontamination.get("against"):
        return ["", "Decontamination: no evaluation set to check against (evaluate.sets holds only heldout)."]
    per_set = decontamination.get("dropped_per_set") or {}
    return ["", f"Decontamination: {_fmt(decontamination.get('checked'))} records checked against "
            f"{_fmt(decontamination.get('prompts'))} evaluation prompts ({decontamination.get('rule')}); dropped: "
            + ", ".join(f"{name} {_fmt(count)}" for name, count in per_set.items()) + "."]


def render_markdown(report: dict) -> str:
    """The report as a page a person reads."""
    counts = report["counts"]
    lines = ["# Distillation run report", "", f"Run directory: `{report['run_dir']}`", ""]
    if report.get("tradeoff"):
        lines += ["## The trade-off: each model against the teacher", "",
                  "| " + " | ".join(TRADEOFF_HEADER) + " |", "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(tradeoff_cells(row)) + " |" for row in report["tradeoff"]]
        sentence = tradeoff_sentence(report["tradeoff"])
        lines += [""] + ([f"**{sentence}**", ""] if sentence else []) + [TRADEOFF_NOTE, ""]
    lines += _headline_lines(report.get("headline") or {})
    if (report.get("quality_vs_cost") or {}).get("recommendation"):
        lines += [report["quality_vs_cost"]["recommendation"], ""]
    evaluations = report.get("evaluations") or []
    if len(evaluations) > 1:
        lines += [f"This run was evaluated {len(evaluations)} times; the first evaluation leads, each other one has "
                  "its section below: " + "; ".join(f"`{e['folder']}/` ({set_labels(e.get('sets'))})"
                                                    for e in evaluations) + ".", ""]
    primary = evaluations[0] if evaluations else {"models": report.get("models") or []}
    lines += _section_lines({**primary, "models": report.get("models") or []})
    lines += [
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
    for section in evaluations[1:]:
        lines += ["", f"## Evaluation `{section['name']}` (`{section['folder']}/`: "
                  f"{set_labels(section.get('sets'))}; {_fmt(section.get('prompts'))} prompts)", ""]
        lines += _headline_lines(section.get("headline") or {}) + _section_lines(section, "###")
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
    lines += _score_spread_lines((report.get("filter") or {}).get("score_spread"))
    steps = (report.get("filter") or {}).get("filters")
    if steps:
        lines += ["", f"Filter steps, in order: {' → '.join(steps)}."]
    lines += _decontamination_lines(report.get("decontamination"))
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
    from pipeline.estimate import cost_markdown

    lines += cost_markdown(report.get("cost"))
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
    """One line for the terminal: the win rate, or, when the judge is not informative, fidelity first."""
    q = report["quality"]
    head = report.get("headline") or {}
    student = report["efficiency"].get("student") or {}
    teacher = report["efficiency"].get("teacher") or {}
    ci = q.get("win_rate_ci95") or [None, None]
    win = (f"win rate {_fmt(q.get('win_rate'))} (95% CI {_fmt(ci[0])}–{_fmt(ci[1])}; "
           f"W/T/L {q.get('wins')}/{q.get('ties')}/{q.get('losses')})")
    fidelity = fidelity_sentence(head)
    if not head.get("judge_informative", True):
        reasons = head.get("judge_warnings") or ["see its diagnostics"]
        lead = f"judge not informative ({reasons[0]}); {fidelity or 'fidelity not measured'}; {win}, not meaningful"
    else:
        lead = win + (f"; {fidelity}" if fidelity else "")
    return (f"{lead}; kept {report['counts'].get('filtered')} of {report['counts'].get('generated')} generated; "
            f"mean latency student {_fmt(student.get('mean_latency_s'))} s vs teacher {_fmt(teacher.get('mean_latency_s'))} s; "
            f"cost per answer student/teacher {_fmt(head.get('cost_ratio_student_teacher'))}")
