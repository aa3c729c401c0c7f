"""The report's shared wording: how numbers are shown, and the sentences about fidelity and the
judge that report.md, report.html and the terminal headline all use."""

from __future__ import annotations

from pathlib import Path

FIDELITY_KEYS = ("teacher_answer_nll", "answer_similarity", "answer_rouge_l")


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def set_label(name: str) -> str:
    """An evaluation set as the report names it: a shipped set by its name, a file by its stem."""
    return Path(name).stem if name.endswith(".jsonl") or "/" in name else name


def set_labels(names) -> str:
    return ", ".join(set_label(str(name)) for name in names or [])


def fidelity_sentence(head: dict) -> str | None:
    """The student's fidelity to the teacher in words, the base student's beside it."""
    student = (head.get("fidelity") or {}).get("student")
    if not student:
        return None
    base = (head.get("fidelity") or {}).get("base_student") or {}

    def pair(key: str) -> str:
        shown = fmt(student.get(key))
        return f"{shown} (base student {fmt(base.get(key))})" if base else shown

    return (f"fidelity to the teacher: NLL of the teacher's answers {pair('teacher_answer_nll')} nats/token "
            f"(lower is closer), answer similarity {pair('answer_similarity')}, "
            f"ROUGE-L {pair('answer_rouge_l')}")


def judge_verdict(head: dict) -> str | None:
    """A plain warning when the judge is not informative; None when it is."""
    if head.get("judge_informative", True):
        return None
    return ("The judge is not informative: " + "; ".join(head.get("judge_warnings") or ["see its diagnostics"])
            + ". Its win rate says nothing about the models; fidelity to the teacher, which needs no judge, "
              "leads instead.")


def headline_parts(head: dict, number=fmt, bold=lambda text: text) -> dict | None:
    """The pieces of a headline (the win rate, the cost ratios, fidelity, the judge's warning), each
    number shown by `number` and the key ones marked by `bold`: the same words in report.md and
    report.html. None before any evaluation."""
    if head.get("win_rate") is None:
        return None
    low, high = head.get("win_rate_ci95") or [None, None]
    return {
        "win": (f"win rate {bold(number(head['win_rate']))} (95% CI {number(low)} – {number(high)}; "
                f"length-controlled {number(head.get('lc_win_rate'))})"),
        "cost": (f"cost per 1,000 answers, student / teacher: {bold(number(head.get('cost_ratio_student_teacher')))}; "
                 f"peak memory, student / teacher: {bold(number(head.get('memory_ratio_student_teacher')))}."),
        "fidelity": fidelity_sentence(head), "warning": judge_verdict(head),
    }


TRADEOFF_HEADER = ("model", "runs on", "parameters (of the teacher's)", "peak memory, MB (x teacher)",
                   "USD per 1,000 answers (x teacher)", "NLL of the teacher's answers")
TRADEOFF_NOTE = ("Every row is measured on this machine in this run. The teacher and the GGUF variants are served by "
                 "llama.cpp; the student and the base student answer through transformers in float32 (the form they "
                 "are trained in), so the GGUF rows are the like-for-like comparison with the teacher's own serving. "
                 "Cost: measured seconds per answer at evaluate.local_hourly_usd; answers of different lengths cost "
                 "differently. NLL: lower is closer to the teacher.")


def runtime_of(row: dict) -> str:
    """What serves a model of the report: llama.cpp, transformers, PyTorch int8, an endpoint."""
    eff, fidelity = row.get("efficiency") or {}, row.get("fidelity") or {}
    identity = str(eff.get("identity") or "")
    if row.get("label") == "teacher":
        return ("llama.cpp server (GGUF)" if "llama.cpp" in identity + str(eff.get("peak_memory_method"))
                else identity or "endpoint")
    if row.get("kind") == "student":
        return f"{fidelity.get('nll_runtime') or 'transformers'}, float32"
    if fidelity.get("nll_runtime") == "llama.cpp" or "gguf" in identity:
        return "llama.cpp (GGUF)"
    return "PyTorch dynamic int8" if "int8" in identity else identity or "n/a"


def _against(value, reference):
    return round(value / reference, 4) if value and reference else None


def tradeoff_rows(models: list[dict]) -> list[dict]:
    """Per model of the report: what serves it, its parameters, peak memory and cost per 1,000 answers
    (each also as a multiple of the teacher's) and the NLL of the teacher's answers under it."""
    teacher = next((row["efficiency"] for row in models if row["label"] == "teacher"), {})
    rows = []
    for row in models:
        eff = row.get("efficiency") or {}
        rows.append({
            "model": row["label"], "runtime": runtime_of(row), "parameters": eff.get("parameters"),
            "parameters_vs_teacher": _against(eff.get("parameters"), teacher.get("parameters")),
            "peak_memory_bytes": eff.get("peak_memory_bytes"),
            "memory_vs_teacher": _against(eff.get("peak_memory_bytes"), teacher.get("peak_memory_bytes")),
            "cost_per_1k_answers_usd": eff.get("cost_per_1k_answers_usd"),
            "cost_vs_teacher": _against(eff.get("cost_per_1k_answers_usd"), teacher.get("cost_per_1k_answers_usd")),
            "teacher_answer_nll": (row.get("fidelity") or {}).get("teacher_answer_nll"),
        })
    return rows


def tradeoff_cells(row: dict, number=fmt) -> list[str]:
    """One trade-off row as the report's cells (numbers shown by `number`)."""
    def share(value):
        return f" ({value:.0%})" if value is not None else ""

    def times(value):
        return f" ({value:.2f}x)" if value is not None else ""

    memory = row["peak_memory_bytes"]
    nll = row["teacher_answer_nll"]
    return [row["model"], row["runtime"], number(row["parameters"]) + share(row["parameters_vs_teacher"]),
            number(memory / 1e6 if memory else None) + times(row["memory_vs_teacher"]),
            number(row["cost_per_1k_answers_usd"], 4) + times(row["cost_vs_teacher"]),
            "(reference)" if row["model"] == "teacher" and nll is None else number(nll)]


def tradeoff_sentence(rows: list[dict]) -> str | None:
    """The student's cost against the teacher's in words: as it was trained (transformers) and in
    its cheapest form served like the teacher (a llama.cpp GGUF variant), each named."""
    student = next((row for row in rows if row["model"] == "student"), None)
    if student is None or student["cost_vs_teacher"] is None:
        return None
    served = [row for row in rows if row["runtime"].startswith("llama.cpp (") and row["cost_vs_teacher"] is not None]
    words = (f"Per answer, the student costs {student['cost_vs_teacher']:.0%} of the teacher in transformers "
             f"(float32, as trained)")
    if served:
        best = min(served, key=lambda row: row["cost_vs_teacher"])
        words += (f" and {best['cost_vs_teacher']:.0%} served by llama.cpp like the teacher ({best['model']}, "
                  f"{fmt(best['teacher_answer_nll'])} nats/token of the teacher's answers)")
    return words + "."


def score_spread_warning(spread: dict | None) -> str | None:
    """The sentence for a filter judge that gave nearly every record the same score
    (`filters.judge.score_spread`); None when its scores do rank the records."""
    if not spread or spread.get("informative", True):
        return None
    return (f"the filter's judge barely ranks the records: it gave {spread['most_common_count']} of "
            f"{spread['scored']} scored records the score {spread['most_common_score']:g} ({spread['distinct_scores']} distinct scores), so top K keeps a "
            "near-random subset and a threshold keeps nearly all of them or none. A stronger judge (`judge:`) "
            "would rank them.")
