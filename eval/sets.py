"""Evaluation prompt sets: the held-out split of the run's own data, the two public sets
AlpaGasus reports on that ship with the project, and any JSONL file the user names."""

from __future__ import annotations

from pathlib import Path

from distill.records import check_fields, iter_jsonl, read_records

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "eval"
BUILTIN_SETS = {
    "vicuna_80": DATA_DIR / "vicuna_80.jsonl",
    "self_instruct_252": DATA_DIR / "self_instruct_user_oriented_252.jsonl",
}


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


def load_eval_set(name: str, heldout_path: Path) -> list[dict]:
    """Prompts {id, instruction, input, set} of one set: 'heldout', a built-in set's name, or a JSONL path."""
    if name == "heldout":
        records = read_records(heldout_path, required=("instruction",), optional=("input", "output"))
        items = [{"id": r.get("id") or f"heldout-{i:04d}", "instruction": r["instruction"], "input": r.get("input", "")}
                 for i, r in enumerate(records)]
    elif name == "vicuna_80":
        items = load_vicuna(BUILTIN_SETS[name])
    elif name == "self_instruct_252":
        items = load_self_instruct_252(BUILTIN_SETS[name])
    else:
        path = Path(name)
        records = read_records(path, required=("instruction",), optional=("input",))
        items = [{"id": f"{path.stem}-{i:04d}", "instruction": r["instruction"], "input": r.get("input", "")}
                 for i, r in enumerate(records)]
    return [{**item, "set": name if name in ("heldout", *BUILTIN_SETS) else Path(name).stem} for item in items]
