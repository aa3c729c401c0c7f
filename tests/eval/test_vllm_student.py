"""Students answering through vLLM (`evaluate.student_backend: vllm`): the adapter as a LoRA
request, the student's own prompt, greedy, every prompt handed to the engine at once.

vLLM cannot run on this CPU-only machine, so its engine is the stand-in of
tests/vllm_standin.py (see its docstring); the batched transformers path is tested for real
in test_student.py.
"""

import pytest
from vllm_standin import install_vllm_standin

from eval.answer_process import _answer_with_vllm
from eval.contestants import AnswerJob
from student.prompt_format import render_student_prompt


def test_student_answers_through_vllm_with_its_adapter(monkeypatch, tmp_path):
    install_vllm_standin(monkeypatch)
    items = [{"id": "a", "instruction": "Name a colour.", "input": ""},
             {"id": "b", "instruction": "Add the numbers.", "input": "2 and 3"}]
    job = AnswerJob(label="student", kind="student", base_model="/models/base", adapter=str(tmp_path / "adapter"),
                    items=items, prompt_format="alpaca", max_new_tokens=16, cache_dir=str(tmp_path),
                    vllm_engine_args={"gpu_memory_utilization": 0.5})
    answers, efficiency, fidelity = _answer_with_vllm(job)
    assert [a["id"] for a in answers] == ["a", "b"]
    assert all(a["answer"] == "partial answer" and a["completion_tokens"] == 2 for a in answers)
    assert efficiency["batch_size"] == 2 and efficiency["served_by"] == "vllm:/models/base+lora:adapter"
    assert fidelity()["teacher_answer_nll"] is None and "vLLM" in fidelity()["nll_not_measured"]


def test_the_engine_gets_the_students_prompt_greedy_and_the_lora_request(monkeypatch, tmp_path):
    install_vllm_standin(monkeypatch)
    from backends import vllm_inprocess

    engines = []
    original = vllm_inprocess.VLLMInProcessBackend.__init__

    def remember(self, *args, **kwargs):
        original(self, *args, **kwargs)
        engines.append(self._engine)

    monkeypatch.setattr(vllm_inprocess.VLLMInProcessBackend, "__init__", remember)
    item = {"id": "b", "instruction": "Add the numbers.", "input": "2 and 3"}
    _answer_with_vllm(AnswerJob(label="student", kind="student", base_model="/models/base",
                                adapter=str(tmp_path / "adapter"), items=[item], prompt_format="alpaca",
                                max_new_tokens=16, cache_dir=str(tmp_path)))
    (engine,) = engines
    assert engine.args == {"model": "/models/base", "enable_lora": True, "max_lora_rank": 64}
    (call,) = engine.calls
    assert call["prompt"] == render_student_prompt(item["instruction"], item["input"], "alpaca")
    assert call["params"][1]["temperature"] == 0.0 and call["params"][1]["max_tokens"] == 16
    assert call["lora"] == ("LoRARequest", "adapter", 1, str(tmp_path / "adapter"))


def test_engine_args_without_vllm_are_refused():
    from eval.config import EvaluateConfig

    with pytest.raises(ValueError, match="student_backend vllm"):
        EvaluateConfig(vllm_engine_args={"tensor_parallel_size": 2})
    assert EvaluateConfig(student_backend="vllm", vllm_engine_args={"tensor_parallel_size": 2}).student_backend == "vllm"
