"""Evaluation prompt sets: the held-out split of the run's own data, the public sets that ship
with the project (one registry entry each, their files read as package data), and any JSONL
file the user names.

Adding a shipped set is its JSONL file in `eval/data/` and one line in `EVAL_SETS` (with a
loader that turns the file's rows into prompts); `evaluate.sets` then accepts its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from core.records import check_fields, iter_jsonl, read_records

HELDOUT = "heldout"


def load_vicuna(path: Path) -> list[dict]:
    """Vicuna's 80 questions: the first turn of each is the prompt."""
    items = []
    for number, value in iter_jsonl(path):
        turns = value.get("turns") if isinstance(value, dict) else None
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise ValueError(f"{path}:{number}: field 'turns' must be a non-empty list of strings")
        items.append({"id": f"vicuna_80-{value.get('question_id', number)}", "instruction": turns[0], "input": "",
                      "category": value.get("category")})
    return items


def load_self_instruct_252(path: Path) -> list[dict]:
    """Self-Instruct's 252 user-oriented instructions, each with its first instance's input."""
    items = []
    for number, value in iter_jsonl(path):
        check_fields(path, str(number), value, required=("instruction",))
        instances = value.get("instances") or [{}]
        items.append({"id": f"self_instruct_252-{value.get('id', number)}", "instruction": value["instruction"],
                      "input": (instances[0] or {}).get("input", "") or "", "category": value.get("motivation_app")})
    return items


def load_instruction_rows(path: Path) -> list[dict]:
    """A set in the project's own layout: one {"instruction", "input" (optional)} object per line."""
    name = Path(path).stem
    records = read_records(path, required=("instruction",), optional=("input",))
    return [{"id": f"{name}-{i:04d}", "instruction": r["instruction"], "input": r.get("input", "")}
            for i, r in enumerate(records)]


@dataclass(frozen=True)
class EvalSet:
    """A shipped evaluation set: its data file (in eval/data) and how its rows become prompts."""

    name: str
    filename: str  # in the package's eval/data folder (an absolute path is taken as it is)
    load_rows: Callable[[Path], list[dict]]
    description: str

    @property
    def path(self) -> Path:
        """The set's file, from the installed package."""
        if Path(self.filename).is_absolute():
            return Path(self.filename)
        return Path(str(resources.files("eval") / "data" / self.filename))

    def prompts(self) -> list[dict]:
        return self.load_rows(self.path)


EVAL_SETS: dict[str, EvalSet] = {eval_set.name: eval_set for eval_set in (
    EvalSet("vicuna_80", "vicuna_80.jsonl", load_vicuna, "the 80 Vicuna benchmark questions (FastChat)"),
    EvalSet("self_instruct_252", "self_instruct_user_oriented_252.jsonl", load_self_instruct_252,
            "Self-Instruct's 252 user-oriented instructions"),
)}
# Kept for callers that want the files by name.
BUILTIN_SETS = {name: eval_set.path for name, eval_set in EVAL_SETS.items()}


def is_named_set(name: str) -> bool:
    """True for 'heldout' and the shipped sets' names (anything else must be a JSONL file)."""
    return name == HELDOUT or name in EVAL_SETS


def load_eval_set(name: str, heldout_path: Path) -> list[dict]:
    """Prompts {id, instruction, input, set} of one set: 'heldout', a shipped set's name, or a JSONL path."""
    if name == HELDOUT:
        records = read_records(heldout_path, required=("instruction",), optional=("input", "output"))
        items = [{"id": r.get("id") or f"heldout-{i:04d}", "instruction": r["instruction"], "input": r.get("input", "")}
                 for i, r in enumerate(records)]
    elif name in EVAL_SETS:
        items = EVAL_SETS[name].prompts()
    else:
        items = load_instruction_rows(Path(name))
    return [{**item, "set": name if is_named_set(name) else Path(name).stem} for item in items]
