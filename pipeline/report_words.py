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
