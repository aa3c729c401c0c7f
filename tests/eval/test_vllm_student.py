"""The evaluate settings of students answering through vLLM (`evaluate.student_backend: vllm`).

The answering itself runs against the real engine in tests/vllm_engine/test_vllm_student_answers.py
(marked `vllm`, in the vLLM environment).
"""

import pytest


def test_engine_args_without_vllm_are_refused():
    from eval.config import EvaluateConfig

    with pytest.raises(ValueError, match="student_backend vllm"):
        EvaluateConfig(vllm_engine_args={"tensor_parallel_size": 2})
    assert EvaluateConfig(student_backend="vllm", vllm_engine_args={"tensor_parallel_size": 2}).student_backend == "vllm"
