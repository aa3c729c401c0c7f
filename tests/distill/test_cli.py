"""The `distill` command's handling of bad input: a clear message, exit 2, nothing written."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def distill(*args, cwd=REPO):
    return subprocess.run([str(Path(sys.executable).parent / "distill"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_unknown_key_stops_before_any_work(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f"name: bad\nseed_tasks: {REPO / 'data' / 'seed_tasks.jsonl'}\ngenerate:\n  temprature: 0.5\n")
    run_dir = tmp_path / "run"
    result = distill("run", str(config), "--run-dir", str(run_dir))
    assert result.returncode == 2
    assert str(config) in result.stderr and "generate.temprature" in result.stderr
    assert not run_dir.exists()


def test_malformed_seed_line_is_named(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    good = json.dumps({"instruction": "Say hello.", "instances": [{"input": "", "output": "Hello"}]})
    seeds.write_text(good + "\n" + good + "\n{broken\n")
    config = tmp_path / "c.yaml"
    config.write_text("name: c\nseed_tasks: seeds.jsonl\n")
    result = distill("generate", str(config), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2
    assert f"{seeds}:3: malformed JSON" in result.stderr


def test_dedup_command_on_real_records(tmp_path):
    records = json.loads((REPO.parent / "shared" / "data" / "alpaca_5000.json").read_text())[:200]
    doubled = records + [dict(r, instruction=r["instruction"] + " Please.") for r in records[:50]]
    source = tmp_path / "in.json"
    source.write_text(json.dumps(doubled))
    out, rejected = tmp_path / "out.jsonl", tmp_path / "rejected.jsonl"
    result = distill("dedup", str(source), "-o", str(out), "--seeds", str(REPO / "data" / "seed_tasks.jsonl"),
                     "--rejected", str(rejected))
    assert result.returncode == 0, result.stderr
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    dropped = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert len(kept) + len(dropped) == len(doubled)
    assert len(dropped) >= 50  # every edited copy is a near-duplicate of its original
    assert all(d["rouge_l"] > 0.7 and d["nearest"] for d in dropped)
    assert kept == [r for r in doubled if r in kept]  # input order, records unchanged


def test_dedup_bad_input(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"instruction": "ok"}\n{"output": "no instruction"}\n')
    result = distill("dedup", str(source), "-o", str(tmp_path / "out.jsonl"))
    assert result.returncode == 2 and f"{source}:2: missing field 'instruction'" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_export_command(tmp_path):
    source = tmp_path / "filtered.jsonl"
    source.write_text(json.dumps({"instruction": "Name a colour.", "input": "", "output": "Blue"}) + "\n")
    out = tmp_path / "chat.jsonl"
    result = distill("export", str(source), "--format", "chat", "-o", str(out))
    assert result.returncode == 0, result.stderr
    messages = json.loads(out.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[1]["content"] == "Blue"


def test_export_gguf_bad_input(tmp_path):
    """`distill export-gguf` refuses what is not a convertible model directory, naming it, and writes nothing."""
    result = distill("export-gguf", str(tmp_path / "no-model"), "-o", str(tmp_path / "out.gguf"))
    assert result.returncode == 2 and f"error: model directory not found: {tmp_path / 'no-model'}" in result.stderr
    (tmp_path / "empty").mkdir()
    result = distill("export-gguf", str(tmp_path / "empty"), "-o", str(tmp_path / "out.gguf"), "--type", "q4_k_m")
    assert result.returncode == 2 and "not a Hugging Face model directory (no config.json)" in result.stderr
    result = distill("export-gguf", str(tmp_path / "empty"), "-o", str(tmp_path / "out.gguf"), "--type", "q3_k")
    assert result.returncode == 2 and "invalid choice: 'q3_k'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_decontaminate_command_drops_copies_of_evaluation_prompts(tmp_path):
    from eval.sets import EVAL_SETS

    records = json.loads((REPO.parent / "shared" / "data" / "alpaca_5000.json").read_text())[:300]
    vicuna = EVAL_SETS["vicuna_80"].prompts()
    mine = tmp_path / "my_prompts.jsonl"
    mine.write_text(json.dumps({"instruction": "Describe the smell of rain on hot asphalt in one vivid paragraph."})
                    + "\n")
    copies = [{"instruction": vicuna[0]["instruction"].upper(), "input": "", "output": "copied"},
              {"instruction": "A quick question. " + vicuna[5]["instruction"], "input": "", "output": "copied"},
              {"instruction": "describe the smell of rain on hot asphalt, in one vivid paragraph", "output": "x"}]
    mixed = records[:100] + copies[:1] + records[100:200] + copies[1:] + records[200:]
    source, out, rejected = tmp_path / "in.json", tmp_path / "out.jsonl", tmp_path / "rejected.jsonl"
    source.write_text(json.dumps(mixed))
    result = distill("decontaminate", str(source), "--against", f"vicuna_80,{mine}", "-o", str(out),
                     "--rejected", str(rejected))
    assert result.returncode == 0, result.stderr
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    dropped = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert kept == records  # every real record kept, unchanged, in input order
    assert [d["matched_prompt_id"] for d in dropped] == [vicuna[0]["id"], vicuna[5]["id"], "my_prompts-0000"]
    assert [d["matched_set"] for d in dropped] == ["vicuna_80", "vicuna_80", "my_prompts"]
    assert dropped[1]["matched_prompt"] == vicuna[5]["instruction"] and dropped[1]["output"] == "copied"
    assert "kept 300 of 303" in result.stdout and "vicuna_80 2, my_prompts 1" in result.stdout


def test_decontaminate_bad_input(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"instruction": "ok"}\n')
    result = distill("decontaminate", str(source), "--against", "vicuna_81", "-o", str(tmp_path / "out.jsonl"))
    assert result.returncode == 2 and "vicuna_81: not a known evaluation set" in result.stderr
    result = distill("decontaminate", str(source), "--against", "heldout", "-o", str(tmp_path / "out.jsonl"))
    assert result.returncode == 2 and "'heldout' is a split of a run's own records" in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_decontaminate_imports_no_model_library_or_orchestrator(tmp_path):
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"instruction": "Name three colours of the rainbow."}) + "\n")
    code = ("import json, sys\nfrom distill.cli import main\n"
            f"main(['decontaminate', {str(records)!r}, '--against', 'vicuna_80,self_instruct_252', '-o', "
            f"{str(tmp_path / 'kept.jsonl')!r}])\n"
            "print(json.dumps(sorted(m for m in ('openai', 'torch', 'prefect', 'transformers', 'httpx', "
            "'pydantic', 'datasets', 'sklearn') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
