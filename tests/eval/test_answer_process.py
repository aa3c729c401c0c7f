"""Answering in a child process: the real embedded student, its peak memory, and a clear failure."""

import pytest

from eval.answer_process import answer_in_child
from eval.contestants import AnswerJob
from eval.sets import load_eval_set


def test_student_answers_in_its_own_process(tmp_path, student_cache_dir):
    from student.embedded import ensure_plain_student

    items = load_eval_set("vicuna_80", tmp_path / "none")[:3]
    job = AnswerJob(kind="student", label="base_student", base_model=str(ensure_plain_student(student_cache_dir)),
                    adapter=None, batch_size=2, items=items, prompt_format="alpaca", max_new_tokens=8, threads=1,
                    cache_dir=str(student_cache_dir),
                    teacher_answers={items[0]["id"]: {"answer": "Quantum computers use qubits.", "finished": True},
                                     items[1]["id"]: {"answer": "Plan your day.", "finished": False}})
    answers, measured = answer_in_child(job, tmp_path / "work")
    assert [a["id"] for a in answers] == [item["id"] for item in items]
    assert all(a["answer"] and 1 <= a["completion_tokens"] <= 8 for a in answers)
    # SmolLM2-135M in float32 is ~540 MB of weights: the child's high-water mark holds them.
    assert 540_000_000 < measured["peak_memory_bytes"] < 6_000_000_000
    assert measured["parameters"] > 100_000_000 and measured["answer_wall_s"] > 0
    # Then the same process scored the teacher's answers (after its peak memory was read).
    fidelity = measured["fidelity"]
    assert fidelity["teacher_answer_nll"] > 0 and fidelity["nll_answers"] == 2 and fidelity["nll_runtime"] == "transformers"


def test_a_failing_child_says_why(tmp_path):
    job = AnswerJob(kind="student", label="student", base_model=str(tmp_path / "no-such-model"), adapter=None,
                    items=[{"id": "x", "instruction": "Hi"}], prompt_format="alpaca", max_new_tokens=4,
                    cache_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match=r"answering with student failed \(exit 1\)"):
        answer_in_child(job, tmp_path / "work")


@pytest.mark.server
def test_a_gguf_variant_is_timed_on_its_answers_alone(tmp_path):
    """The embedded teacher's own GGUF file as a variant, in a child: its answering time is its
    answering loop's (not the llama.cpp server's start or stop), and the server runs with the
    threads the evaluate stage passes on (the teacher's)."""
    from core.embedded_model import find_embedded_gguf

    items = load_eval_set("vicuna_80", tmp_path / "none")[:2]
    variant = {"kind": "gguf", "label": "gguf_teacher", "path": str(find_embedded_gguf()), "server_threads": 1}
    job = AnswerJob(kind="variant", label="gguf_teacher", variant=variant, items=items, prompt_format="alpaca",
                    max_new_tokens=8, cache_dir=str(tmp_path))
    answers, measured = answer_in_child(job, tmp_path / "work")
    assert [a["id"] for a in answers] == [item["id"] for item in items]
    assert measured["server_threads"] == 1 and measured["load_s"] > 0
    latencies = sum(a["latency_s"] for a in answers)
    assert latencies <= measured["answer_wall_s"] < latencies + 0.5, (measured, latencies)
