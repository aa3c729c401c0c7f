"""Students answering through vLLM (`evaluate.student_backend: vllm`): the evaluate stage's child
process (`python -m eval.answer_process JOB`) runs in the vLLM environment, serves the base model
in-process with the adapter as a LoRA request, and gives the answers the transformers path gives
(float32, greedy), with the engine-core process's memory counted in the peak."""

from __future__ import annotations

from eval.answer_process import answer_in_child
from eval.contestants import AnswerJob
from eval.sets import load_eval_set


def test_a_student_answers_through_vllm_as_through_transformers(vllm_py, student_dir, lora_adapter, tmp_path):
    items = load_eval_set("vicuna_80", tmp_path / "none")[:4]
    job = dict(kind="student", base_model=str(student_dir), adapter=str(lora_adapter), items=items,
               prompt_format="alpaca", max_new_tokens=24, threads=1, cache_dir=str(tmp_path))
    through_vllm, measured = answer_in_child(
        AnswerJob(label="student_vllm", student_backend="vllm", vllm_engine_args={"dtype": "float32"}, **job),
        tmp_path / "work")
    through_transformers, _ = answer_in_child(AnswerJob(label="student", batch_size=4, **job), tmp_path / "work")
    assert [a["id"] for a in through_vllm] == [item["id"] for item in items]
    assert [a["answer"] for a in through_vllm] == [a["answer"] for a in through_transformers]
    assert all(a["completion_tokens"] > 0 for a in through_vllm)
    assert measured["served_by"] == f"vllm:{student_dir}+lora:{lora_adapter.name}"
    assert measured["batch_size"] == 4 and measured["answer_wall_s"] > 0
    # Weights (~540 MB in float32) and the 2 GiB KV cache live in the engine-core process.
    assert "engine-core" in measured["peak_memory_method"]
    assert 1_000_000_000 < measured["peak_memory_bytes"] < 16_000_000_000
