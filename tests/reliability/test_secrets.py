"""A planted API key reaches no file of the run directory, no log and no Prefect artifact; and
nothing in the project loads a pickle, runs remote code unasked, or writes weights unsafely.

The key test runs the whole pipeline (`distill run`: real Prefect in ephemeral mode, real
trl/peft steps on the embedded student) against a scripted OpenAI-compatible teacher and judge
that requires the key: a real remote teacher cannot be reached from here.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sqlite3
from pathlib import Path

import pytest

from cli_runs import REPO, openai_teacher, run_distill, write_config
from scripted_server import ScriptedServer, distinct_task

SECRET = "sk-test-PLANTED-9f8e7d6c5b4a39281706"


def teacher_and_judge(body: dict) -> str:
    """Scripted replies by prompt: new tasks, top ratings, tied verdicts, short answers."""
    prompt = body["messages"][-1]["content"]
    if prompt.startswith("You are helping to assemble"):
        return distinct_task(body)
    if prompt.startswith("You are reviewing one example"):
        return '{"score": 5, "explanation": "Accurate and helpful."}'
    if prompt.startswith("You are comparing two"):
        return "Both answers are equally good. [[C]]"
    return "A short, plain answer."


@pytest.mark.e2e
def test_a_planted_key_reaches_no_file_log_or_prefect_artifact(tmp_path, student_cache_dir):
    prefect_home = Path(os.environ["PREFECT_HOME"])  # the tests' own (tests/conftest.py)
    with ScriptedServer(teacher_and_judge) as server:
        config = write_config(
            tmp_path / "keyed.yaml",
            teacher=openai_teacher(server.base_url, api_key_env="DISTILL_PLANTED_KEY"),
            generate={"max_requests": 6, "target_records": 6, "requests_per_shard": 3, "max_tokens": 64},
            finetune={"max_steps": 1, "batch_size": 2, "max_length": 128, "heldout_records": 1},
            evaluate={"sets": ["heldout"], "max_prompts": 1, "max_new_tokens": 8, "compare_base": False})
        run_dir = tmp_path / "run"
        result = run_distill("run", str(config), "--run-dir", str(run_dir), "--cache-dir", str(student_cache_dir),
                             env={"DISTILL_PLANTED_KEY": SECRET}, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        # The key was really in play: every request carried it.
        assert server.authorizations == {f"Bearer {SECRET}"} and server.requests >= 6 + 5
    assert SECRET not in result.stdout + result.stderr

    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.parent.name == "logs" for p in files) or (run_dir / "logs").is_dir()
    assert len(files) > 20
    prefect_files = [p for p in prefect_home.rglob("*") if p.is_file()]  # database (+ WAL), logs
    for path in files + prefect_files:
        assert SECRET.encode() not in path.read_bytes(), path

    # The search above covered the flow run's artifacts and logs: they are there, in the database.
    database = prefect_home / "prefect.db"
    with sqlite3.connect(database) as db:
        artifacts = db.execute("SELECT key, data FROM artifact WHERE key LIKE 'distill-%'").fetchall()
        logs = db.execute("SELECT message FROM log").fetchall()
    assert {"distill-report", "distill-headline"} <= {key for key, _ in artifacts}
    assert any(str(run_dir) in (data or "") for _, data in artifacts)
    assert any("generate: done" in message for (message,) in logs)
    assert not any(SECRET in (data or "") for _, data in artifacts)
    assert not any(SECRET in message for (message,) in logs)


# ----------------------------------------------------------------------------- unsafe loading
PACKAGES = ("backends", "distill", "flows", "selfinstruct", "quality", "finetune", "eval", "bench")
PICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def project_sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def is_constant(node: ast.expr | None, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_loading(path: Path) -> list[str]:
    """What in one source file could load a pickle, run remote code unasked, or save weights unsafely."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: imports {a.name}" for a in node.names if a.name.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLING_MODULES:
            found.append(f"{where}: imports from {node.module}")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name.endswith("torch.load") and not is_constant(keyword(node, "weights_only"), True):
                found.append(f"{where}: torch.load without weights_only=True")
            if name.endswith(("np.load", "numpy.load")) and not is_constant(keyword(node, "allow_pickle"), False):
                if keyword(node, "allow_pickle") is not None:
                    found.append(f"{where}: np.load with allow_pickle")
            if is_constant(keyword(node, "trust_remote_code"), True):
                found.append(f"{where}: trust_remote_code=True (it must come from the config)")
            if is_constant(keyword(node, "safe_serialization"), False):
                found.append(f"{where}: safe_serialization=False (weights as a pickle)")
            if name.endswith("from_pretrained") and is_constant(keyword(node, "use_safetensors"), False):
                found.append(f"{where}: use_safetensors=False")
    return found


def test_no_source_loads_a_pickle_or_runs_remote_code_unasked():
    sources = project_sources()
    assert len(sources) > 30
    assert [problem for path in sources for problem in unsafe_loading(path)] == []


def test_the_checker_finds_what_it_looks_for(tmp_path):
    # The check above can fail: each pattern it forbids is found in a file that has it.
    bad = tmp_path / "unsafe.py"
    bad.write_text("import pickle\nimport torch\nfrom joblib import load\ntorch.load('x.pt')\n"
                   "torch.load('y.pt', weights_only=False)\nm = A.from_pretrained('d', trust_remote_code=True)\n"
                   "m.save_pretrained('o', safe_serialization=False)\n")
    problems = unsafe_loading(bad)
    assert len(problems) == 6, problems


def test_remote_code_is_off_unless_the_config_says_so_and_the_trainer_loads_no_pickle():
    from finetune.config import FinetuneConfig

    assert FinetuneConfig().trust_remote_code is False
    # Resuming from a checkpoint loads the trainer's optimizer, scheduler and RNG state: the
    # installed transformers must read every one of them with weights_only=True.
    import transformers.trainer

    source = Path(transformers.trainer.__file__).read_text(encoding="utf-8")
    calls = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
             and ast.unparse(node.func) == "torch.load"]
    assert calls and all(is_constant(keyword(call, "weights_only"), True) for call in calls)


def test_the_student_and_its_adapter_are_safetensors(student_cache_dir):
    from student.embedded import ensure_plain_student

    student = ensure_plain_student(student_cache_dir)
    weights = sorted(p.name for p in student.iterdir() if re.search(r"\.(safetensors|bin|pt|pth|pkl)$", p.name))
    assert weights == ["model.safetensors"]
    config = json.loads((student / "config.json").read_text())
    assert "auto_map" not in config  # no code of its own to run
