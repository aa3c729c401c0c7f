"""Teacher fidelity (eval.fidelity) on real parts: the embedded student in transformers and the
same weights in llama.cpp (the embedded GGUF it is dequantized from) score the same teacher
answers alike; answers are tokenized as training tokenizes them; similarity uses the real
all-MiniLM-L6-v2."""

import pytest

from eval.fidelity import answer_sequences, gguf_teacher_answer_nll, similarity_to_teacher, teacher_answer_nll

ITEMS = [{"id": "a", "instruction": "Name three primary colors.", "input": ""},
         {"id": "b", "instruction": "Translate to French.", "input": "Good morning"},
         {"id": "c", "instruction": "Say nothing.", "input": ""}]
TEACHER = {"a": {"answer": "Red, blue and yellow.", "finished": True},
           "b": {"answer": "Bonjour", "finished": False},  # cut at the token limit: no end token scored
           "c": {"answer": "  ", "finished": True}}  # nothing to score


@pytest.fixture(scope="module")
def student(student_cache_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from student.embedded import ensure_plain_student

    torch.set_num_threads(1)
    path = ensure_plain_student(student_cache_dir)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_answer_tokens_follow_the_training_template(student):
    from student.prompt_format import render_student_prompt

    _, tokenizer = student
    sequences = answer_sequences(tokenizer, ITEMS, TEACHER, "alpaca")
    assert len(sequences) == 2  # the blank answer is left out
    (first, start_a), (second, start_b) = sequences
    prompt = render_student_prompt("Name three primary colors.", "", "alpaca")
    assert first[:start_a] == tokenizer(text=prompt)["input_ids"]
    assert tokenizer.decode(first[start_a:]) == "Red, blue and yellow." + tokenizer.eos_token
    assert tokenizer.decode(second[start_b:]) == "Bonjour"


def test_transformers_and_llama_cpp_score_the_same_answers_alike(student):
    from core.embedded_model import find_embedded_gguf

    model, tokenizer = student
    hf = teacher_answer_nll(model, tokenizer, ITEMS, TEACHER, "alpaca", batch_size=2)
    gguf = gguf_teacher_answer_nll(find_embedded_gguf(), tokenizer, ITEMS, TEACHER, "alpaca", threads=1)
    assert hf["nll_answers"] == gguf["nll_answers"] == 2 and hf["nll_tokens"] == gguf["nll_tokens"] > 5
    # The same weights (the GGUF's, dequantized for transformers): llama.cpp's quantized
    # activations move the figure by well under 2%.
    assert 0 < hf["teacher_answer_nll"] == pytest.approx(gguf["teacher_answer_nll"], rel=0.02)


def test_a_models_own_greedy_answer_is_likelier_than_a_scrambled_one(student):
    from student.generation import answer_prompts

    model, tokenizer = student
    own = answer_prompts(model, tokenizer, ITEMS[:1], "alpaca", 16)[0]["answer"]
    scrambled = " ".join(reversed(own.split()))
    likely = teacher_answer_nll(model, tokenizer, ITEMS[:1], {"a": {"answer": own, "finished": False}}, "alpaca")
    unlikely = teacher_answer_nll(model, tokenizer, ITEMS[:1], {"a": {"answer": scrambled, "finished": False}},
                                  "alpaca")
    assert likely["teacher_answer_nll"] < unlikely["teacher_answer_nll"]


def test_similarity_to_the_teacher():
    teacher = {"a": "Paris is the capital of France.", "b": "Water boils at 100 degrees Celsius at sea level."}
    same = similarity_to_teacher(dict(teacher), teacher)
    assert same["answer_similarity"] == pytest.approx(1.0, abs=1e-5) and same["answer_rouge_l"] == 1.0
    other = similarity_to_teacher({"a": "The capital of France is Paris.", "b": "I like trains."}, teacher)
    assert 0 < other["answer_rouge_l"] < 1 and other["answer_similarity"] < same["answer_similarity"]
    assert other["similarity_prompts"] == 2
    assert similarity_to_teacher({}, teacher)["answer_similarity"] is None
