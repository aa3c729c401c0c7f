"""One line a person reads for each stage of `distill run`: "[2/5] filter: ..." when it starts,
and when it finishes its time and main numbers, instead of the stage summary's raw fields."""

from __future__ import annotations

from typing import Callable


def _number(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def _generate(summary: dict) -> str:
    return (f"{_number(summary.get('kept'))} records kept of {_number(summary.get('tasks_parsed'))} read, "
            f"from {_number(summary.get('requests'))} requests ({summary.get('strategy', 'self_instruct')})")


def _filter(summary: dict) -> str:
    rated = f", {_number(summary['rated'])} rated by the judge" if summary.get("rated") else ""
    return (f"{_number(summary.get('kept'))} of {_number(summary.get('input'))} records kept "
            f"(selection {summary.get('selection')}){rated}")


def _finetune(summary: dict) -> str:
    return (f"trained on {_number(summary.get('train_records'))} records, {_number(summary.get('steps'))} steps, "
            f"loss {_number(summary.get('train_loss'))}")


def _compress(summary: dict) -> str:
    return "variants " + (", ".join(summary.get("variants") or {}) or "none")


def _evaluate(summary: dict) -> str:
    return (f"student win rate {_number(summary.get('win_rate'))} on {_number(summary.get('judged'))} judged prompts "
            f"(W/T/L {summary.get('wins')}/{summary.get('ties')}/{summary.get('losses')})")


# What each stage's line says; a stage not named here reports its time alone.
DONE_LINES: dict[str, Callable[[dict], str]] = {
    "generate": _generate, "filter": _filter, "finetune": _finetune, "compress": _compress, "evaluate": _evaluate,
}


def stage_started_line(position: int, count: int, name: str, description: str) -> str:
    return f"[{position}/{count}] {name}: {description}"


def stage_done_line(position: int, count: int, name: str, summary: dict) -> str:
    """The stage's time and main numbers, from its summary (as written to stages/<name>.json)."""
    seconds = summary.get("seconds")
    line = f"[{position}/{count}] {name}: done in {_number(seconds, 4)} s"
    describe = DONE_LINES.get(name)
    return f"{line}; {describe(summary)}" if describe and summary else line
