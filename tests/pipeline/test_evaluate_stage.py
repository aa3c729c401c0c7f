"""Who the evaluate stage judges against the teacher: the student, the base student and each
compressed variant in compress/variants.json; a broken variants file is refused by name."""

import json

import pytest

from pipeline.config import load_config
from core.rundir import RunDir
from pipeline.stages.evaluate import answer_job, evaluation_contestants
from core.errors import StageInputError


@pytest.fixture
def config(repo_root):
    return load_config(repo_root / "configs" / "demo.yaml")


def test_evaluation_contestants_are_student_base_and_each_variant(tmp_path, config):
    rundir = RunDir(tmp_path / "run")
    finetuned = {"base_model": str(tmp_path / "base"), "adapter": str(tmp_path / "adapter")}
    assert [c.label for c in evaluation_contestants(config, rundir, finetuned)] == ["student", "base_student"]

    (rundir.root / "compress").mkdir(parents=True)
    (rundir.root / "compress" / "variants.json").write_text(json.dumps([
        {"label": "int8 dynamic", "kind": "torch_int8", "path": "x", "size_on_disk_bytes": 10},
        {"label": "student", "kind": "gguf", "path": "y", "size_on_disk_bytes": 5},
    ]))
    contestants = evaluation_contestants(config, rundir, finetuned)
    assert [c.label for c in contestants] == ["student", "base_student", "int8_dynamic", "variant_student"]
    assert contestants[2].kind == "variant" and contestants[2].variant["kind"] == "torch_int8"
    assert answer_job(contestants[0], [], config, tmp_path).batch_size == config.evaluate.batch_size
    gpu = config.model_copy(update={"evaluate": config.evaluate.model_copy(
        update={"static_cache": True, "static_cache_bucket": 64, "static_cache_prefill_rows": 32})})
    job = answer_job(contestants[0], [], gpu, tmp_path)
    assert (job.static_cache, job.cache_bucket, job.prefill_rows) == (True, 64, 32)
    assert contestants[1].adapter is None


def test_a_broken_variants_file_is_named(tmp_path, config):
    rundir = RunDir(tmp_path / "run")
    (rundir.root / "compress").mkdir(parents=True)
    variants = rundir.root / "compress" / "variants.json"
    variants.write_text(json.dumps([{"label": "ok"}, {"kind": "gguf"}]))
    with pytest.raises(StageInputError, match=r"variants\.json: variant 2: field 'label' must be a string"):
        evaluation_contestants(config, rundir, {"base_model": "b", "adapter": "a"})
    variants.write_text('[\n{"label": "ok"},\n{"label": }\n]')
    with pytest.raises(StageInputError, match=r"variants\.json:3: not valid JSON"):
        evaluation_contestants(config, rundir, {"base_model": "b", "adapter": "a"})
    variants.write_text('{"label": "not a list"}')
    with pytest.raises(StageInputError, match=r"variants\.json: expected a JSON list"):
        evaluation_contestants(config, rundir, {"base_model": "b", "adapter": "a"})


def test_a_compressed_variant_is_judged_and_reported_like_the_student(tmp_path, repo_root, student_cache_dir):
    """The whole evaluate stage on real parts: the embedded student with a (fresh, untrained)
    peft LoRA adapter, the base student, a dynamic-int8 variant made by the compress package
    from the embedded student and answered through compress.answer, the real llama.cpp teacher
    and judge."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from compress.torch_int8 import save_torch_int8
    from core.measure import size_on_disk
    from pipeline.report import write_report
    from pipeline.session import run_stage_in
    from student.embedded import ensure_plain_student

    torch.set_num_threads(1)
    # The second judge is configured like the teacher, so it shares the teacher's llama.cpp server.
    config = load_config(repo_root / "configs" / "demo.yaml", [
        "evaluate.sets=[vicuna_80]", "evaluate.max_prompts=2", "evaluate.max_new_tokens=12",
        "evaluate.judge_max_tokens=48", "evaluate.second_judge={backend: embedded, max_in_flight: 2}"])
    base = ensure_plain_student(student_cache_dir)
    adapter = tmp_path / "adapter"
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj"]))
    lora.save_pretrained(adapter)
    rundir = RunDir(tmp_path / "run")
    rundir.stages.mkdir(parents=True)
    rundir.mark_done("finetune", {"base_model": str(base), "adapter": str(adapter)})
    int8 = save_torch_int8(base, tmp_path / "int8")
    (rundir.root / "compress").mkdir()
    (rundir.root / "compress" / "variants.json").write_text(json.dumps([
        {"label": "torch_int8", "kind": "torch_int8", "path": str(int8), "size_on_disk_bytes": size_on_disk(int8)}]))

    summary = run_stage_in(rundir, config, "evaluate", cache_dir=student_cache_dir).to_json()

    variant = summary["contestants"]["torch_int8"]
    assert variant["kind"] == "variant" and variant["quality"]["judged"] == 2
    lines = (rundir.eval_dir / "judgments_torch_int8.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert all(json.loads(line)["outcome"] in ("win", "tie", "loss", "invalid") for line in lines)
    assert variant["efficiency"]["identity"] == "torch_int8 (torch_int8)"
    assert 0 < variant["efficiency"]["peak_memory_bytes"] < summary["base_student"]["peak_memory_bytes"] * 2
    assert variant["efficiency"]["cost_per_1k_answers_usd"] > 0 and variant["efficiency"]["p50_ttft_s"] > 0
    assert summary["teacher"]["peak_memory_bytes"] > 50_000_000

    # Fidelity to the teacher, for every local contestant: its NLL of the teacher's answers
    # (scored in its own answering process, after its peak memory was read), similarity, ROUGE-L.
    for label in ("student", "base_student", "torch_int8"):
        fidelity = summary["contestants"][label]["fidelity"]
        assert fidelity["teacher_answer_nll"] > 0 and fidelity["nll_answers"] >= 1, label
        assert -1 <= fidelity["answer_similarity"] <= 1 and 0 <= fidelity["answer_rouge_l"] <= 1, label
    assert summary["contestants"]["torch_int8"]["fidelity"]["nll_runtime"] == "transformers"
    teacher_answers = [json.loads(line) for line in (rundir.eval_dir / "teacher_answers.jsonl").read_text().splitlines()]
    assert all(a["finish_reason"] in ("stop", "length") for a in teacher_answers)
    diagnostics = summary["judge_diagnostics"]
    assert diagnostics["pairs"] == 6 and diagnostics["verdicts"] == 12
    assert set(diagnostics["per_contestant"]) == {"student", "base_student", "torch_int8"}
    assert 0 <= diagnostics["invalid_rate"] <= 1 and isinstance(diagnostics["informative"], bool)
    assert summary["evaluation"]["name"] is None and summary["evaluation"]["folder"] == "eval"
    second = diagnostics["second_judge"]
    assert second["identity"] and 0 <= second["pairs"] <= 6
    assert second["agreement"] is None or 0 <= second["agreement"] <= 1
    assert len((rundir.eval_dir / "second_judgments_torch_int8.jsonl").read_text().splitlines()) == 2

    report = write_report(rundir)
    assert [row["label"] for row in report["models"]] == ["teacher", "student", "base_student", "torch_int8"]
    assert all(set(row["fidelity"]) >= {"teacher_answer_nll", "answer_similarity", "answer_rouge_l"}
               for row in report["models"])
    assert report["judge_diagnostics"]["pairs"] == 6
    assert "NLL of the teacher's answers" in (rundir.root / "report.md").read_text()
    assert "torch_int8" in report["quality_vs_cost"]["points"]
    assert "torch_int8" in (rundir.root / "report.html").read_text()


def test_a_remote_teachers_cost_comes_from_its_prices(repo_root):
    from backends.openai_compat import OpenAICompatibleBackend
    from pipeline.stages.evaluate import teacher_costs

    config = load_config(repo_root / "configs" / "demo.yaml", [
        "teacher.backend=openai", "teacher.base_urls=[http://10.0.0.7:8000/v1]", "teacher.model=big",
        "teacher.price_input_per_mtok=1.0", "teacher.price_output_per_mtok=4.0"])
    teacher = OpenAICompatibleBackend("big", ["http://10.0.0.7:8000/v1"])  # never contacted here
    answers = [{"prompt_tokens": 400, "completion_tokens": 100}, {"prompt_tokens": 600, "completion_tokens": 300}]
    costs = teacher_costs(config, teacher, answers, wall_s=6.0)
    # mean 500 prompt + 200 completion tokens: 0.0005 + 0.0008 USD an answer
    assert costs["cost_per_1k_answers_usd"] == pytest.approx(1.3)
    assert costs["peak_memory_bytes"] is None and "not measurable" in costs["peak_memory_method"]
    assert costs["seconds_per_answer"] == 3.0

    unpriced = load_config(repo_root / "configs" / "demo.yaml", [
        "teacher.backend=openai", "teacher.base_urls=[http://10.0.0.7:8000/v1]"])
    costs = teacher_costs(unpriced, teacher, answers, wall_s=6.0)
    assert costs["cost_per_1k_answers_usd"] is None and "no price" in costs["cost_basis"]


def test_a_cache_bucket_needs_the_static_cache():
    from eval.config import EvaluateConfig

    with pytest.raises(ValueError, match="static_cache_bucket applies to the static cache"):
        EvaluateConfig(static_cache_bucket=64)
    with pytest.raises(ValueError, match="static_cache_prefill_rows applies to the static cache"):
        EvaluateConfig(static_cache_prefill_rows=32)
    assert EvaluateConfig(static_cache=True, static_cache_bucket=64).static_cache_bucket == 64
