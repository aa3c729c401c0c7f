"""The layers hold, and the worked examples of docs/architecture.md work as written.

The import contract is import-linter's (`lint-imports`, contracts in pyproject.toml), checked
again here by a graph of our own that counts every import, inside functions too; the
examples are the page's own code blocks, run here (a canned backend answers as teacher and
judge, so no model is needed for them).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("distill", "flows", "pipeline", "eval", "compress", "finetune", "selfinstruct", "filters",
            "student", "similarity", "backends", "core", "prompts")
ARCHITECTURE = REPO / "docs" / "architecture.md"


# --------------------------------------------------------------------------- the contract
def test_lint_imports_passes():
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def _module_imports() -> dict[str, set[str]]:
    """Every project module and the project modules it imports, anywhere in it (functions too),
    leaving out `if TYPE_CHECKING:` blocks, which never run."""
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for node in ast.walk(block)}
        found = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    return result


def test_no_import_cycle_between_modules_or_packages_counting_imports_in_functions():
    graph = _module_imports()
    assert len(graph) > 80
    assert _cycles(graph) == []
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(module.split(".")[0], set()).update(t.split(".")[0] for t in targets)
    for package, targets in packages.items():
        targets.discard(package)
    assert _cycles(packages) == []


def test_components_never_import_the_pipeline_or_the_entry_points():
    graph = _module_imports()
    upper = ("pipeline", "flows", "distill")
    for module, targets in graph.items():
        if module.split(".")[0] not in upper:
            assert not [t for t in targets if t.split(".")[0] in upper], module


def test_dedup_imports_no_model_library_or_orchestrator(tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"instruction": f"Name {n} colours of the rainbow."}) + "\n"
                               for n in range(20)))
    code = ("import json, sys\nfrom distill.cli import main\n"
            f"main(['dedup', {str(records)!r}, '-o', {str(tmp_path / 'kept.jsonl')!r}])\n"
            "print(json.dumps(sorted(m for m in ('openai', 'torch', 'prefect', 'transformers', 'httpx', "
            "'pydantic', 'datasets') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# --------------------------------------------------------------------------- the worked examples
def example(tag: str) -> dict:
    """Run the page's code block tagged `tag` as a module; return its namespace."""
    blocks = re.findall(r"```python " + re.escape(tag) + r"\n(.*?)```", ARCHITECTURE.read_text(encoding="utf-8"),
                        re.S)
    assert len(blocks) == 1, f"docs/architecture.md has {len(blocks)} blocks tagged {tag}"
    module = types.ModuleType(f"architecture_example_{tag.replace('-', '_')}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(blocks[0], f"docs/architecture.md[{tag}]", "exec"), module.__dict__)
    return module.__dict__


# A chat teacher's reply in Alpaca's numbered format: two tasks, the first request's next index is 4.
CANNED_TASKS = ("4. Instruction: Name three colours of the rainbow.\n4. Input:\n<noinput>\n4. Output:\n"
                "Red, orange and yellow are three of them.\n###\n"
                "5. Instruction: Give a synonym for the word happy.\n5. Input:\n<noinput>\n5. Output:\nJoyful.\n###\n")
CANNED_RATING = '{"score": 5, "explanation": "correct and helpful"}'


def canned_config(tmp_path: Path, model: str, **sections):
    from pipeline.config import load_config

    path = tmp_path / "canned.yaml"
    path.write_text(yaml.safe_dump({"name": "canned", "seed_tasks": str(REPO / "data" / "seed_tasks.jsonl"),
                                    "teacher": {"backend": "canned", "model": model}, **sections}))
    return load_config(path)


@pytest.fixture
def canned_backend(monkeypatch):
    from backends.registry import BACKENDS

    kind = example("example-backend")["CannedKind"]()
    monkeypatch.setitem(BACKENDS, "canned", kind)
    return kind


def test_the_backend_example_generates_records(canned_backend, tmp_path):
    from core.records import iter_jsonl
    from core.rundir import RunDir
    from pipeline.session import run_stage_in

    config = canned_config(tmp_path, CANNED_TASKS, generate={"max_requests": 1, "requests_per_shard": 1,
                                                               "target_records": 10})
    rundir = RunDir(tmp_path / "run")
    summary = run_stage_in(rundir, config, "generate")
    kept = [record["instruction"] for _, record in iter_jsonl(rundir.generated)]
    assert kept == ["Name three colours of the rainbow.", "Give a synonym for the word happy."]
    assert summary.teacher == "canned" and summary.requests == 1


def test_the_filter_example_drops_short_outputs_and_the_report_counts_them(canned_backend, monkeypatch, tmp_path):
    import filters.registry
    from core.records import iter_jsonl, write_jsonl
    from core.rundir import RunDir
    from pipeline.report import write_report
    from pipeline.session import run_stage_in

    step = example("example-filter")["MinOutputWords"](3)
    monkeypatch.setattr(filters.registry, "FILTERS", (step, *filters.registry.FILTERS))
    config = canned_config(tmp_path, CANNED_RATING)
    rundir = RunDir(tmp_path / "run").create()
    write_jsonl(rundir.generated, [
        {"id": "long", "instruction": "Name three primary colours.", "input": "", "output": "Red, blue and yellow."},
        {"id": "short", "instruction": "Give a synonym for happy.", "input": "", "output": "Joyful."},
    ])
    summary = run_stage_in(rundir, config, "filter")
    assert summary.filters == ["min_output_words", "decontaminate", "judge"]  # decontaminate: on by default
    assert summary.dropped == {"output_too_short": 1} and summary.kept == 1
    assert [r["id"] for _, r in iter_jsonl(rundir.filtered)] == ["long"]
    (rejection,) = [r for _, r in iter_jsonl(rundir.rejected)]
    assert rejection["reason"] == "output_too_short" and rejection["words"] == 1 and rejection["id"] == "short"
    write_report(rundir)
    assert "| output_too_short | 1 |" in rundir.report_md.read_text(encoding="utf-8")


def test_the_eval_set_example_is_accepted_by_the_config_and_loaded(monkeypatch, tmp_path):
    from eval.sets import EVAL_SETS, load_eval_set
    from pipeline.config import load_config

    my_set = example("example-eval-set")["MY_SET"]
    data = tmp_path / "my_set.jsonl"
    data.write_text(json.dumps({"instruction": "Describe a sunset.", "input": ""}) + "\n"
                    + json.dumps({"instruction": "Translate to French.", "input": "Good night"}) + "\n")
    monkeypatch.setitem(EVAL_SETS, "my_set", dataclasses.replace(my_set, filename=str(data)))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"name": "sets", "seed_tasks": str(REPO / "data" / "seed_tasks.jsonl"),
                                    "evaluate": {"sets": ["heldout", "my_set"]}}))
    assert load_config(path).evaluate.sets == ["heldout", "my_set"]
    items = load_eval_set("my_set", tmp_path / "no-heldout.jsonl")
    assert [(i["id"], i["set"], i["input"]) for i in items] == [("my_set-0000", "my_set", ""),
                                                               ("my_set-0001", "my_set", "Good night")]


def test_the_stage_example_is_a_command_runs_resumes_and_is_reported(canned_backend, monkeypatch, tmp_path):
    import pipeline.stages
    from core.records import write_jsonl
    from core.rundir import RunDir
    from distill.cli import build_parser
    from pipeline.report import write_report
    from pipeline.session import run_stage_in, stages_to_run

    stage = example("example-stage")["LengthsStage"]()
    stages = list(pipeline.stages.STAGES)
    stages.insert(pipeline.stages.stage_names().index("filter") + 1, stage)
    monkeypatch.setattr(pipeline.stages, "STAGES", tuple(stages))
    assert build_parser().parse_args(["lengths", "c.yaml", "--run-dir", "r"]).command == "lengths"
    assert [s.name for s in stages_to_run(["lengths", "generate"])] == ["generate", "lengths"]

    config = canned_config(tmp_path, CANNED_RATING)
    rundir = RunDir(tmp_path / "run").create()
    write_jsonl(rundir.filtered, [{"instruction": "a", "output": "one two three"}, {"instruction": "b", "output": "x"}])
    summary = run_stage_in(rundir, config, "lengths")
    assert (summary.records, summary.mean_output_words) == (2, 2.0)
    assert json.loads((rundir.root / "lengths.json").read_text()) == [3, 1]
    assert json.loads((rundir.stages / "lengths.json").read_text())["records"] == 2
    (rundir.root / "lengths.json").unlink()
    assert run_stage_in(rundir, config, "lengths").records == 2  # finished: skipped, not redone
    assert not (rundir.root / "lengths.json").exists()
    report = write_report(rundir)
    assert "lengths" in report["stages_finished"] and "lengths" in report["seconds"]
