"""GGUF export of the merged embedded student and llama.cpp's quantizer, checked against the
Hugging Face model: the F16 file, run by llama.cpp, must give the same tokens and (nearly)
the same logits as transformers on the same merged weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")

from compress.gguf_export import (  # noqa: E402
    GGUFExportError,
    export_gguf,
    interleave_rotary_rows,
    quantize_gguf,
)
from student_prompts import PROMPTS  # noqa: E402
from student.embedded import find_embedded_gguf  # noqa: E402
from student.prompt_format import render_student_prompt  # noqa: E402

GREEDY_TOKENS = 16


@pytest.fixture(scope="module")
def hf_model(merged_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(merged_dir).eval(), AutoTokenizer.from_pretrained(merged_dir)


@pytest.fixture(scope="module")
def gguf_files(merged_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    f16 = export_gguf(merged_dir, out / "model-f16.gguf", "f16", tokenizer_gguf=find_embedded_gguf())
    return {"f16": f16, "q8_0": quantize_gguf(f16, out / "model-q8_0.gguf", "q8_0"),
            "q4_0": quantize_gguf(f16, out / "model-q4_0.gguf", "q4_0")}


def _llama(path):
    return llama_cpp.Llama(str(path), n_ctx=512, n_threads=1, logits_all=True, verbose=False)


def _prompt_texts():
    return [render_student_prompt(p["instruction"], p["input"], "alpaca") for p in PROMPTS]


def _hf_greedy(model, tokenizer, text):
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=GREEDY_TOKENS, do_sample=False, eos_token_id=None,
                             pad_token_id=tokenizer.pad_token_id)
    return ids[0].tolist(), out[0, ids.shape[1]:].tolist()


def _llama_greedy(llm, prompt_ids):
    llm.reset()
    llm.eval(prompt_ids)
    generated = []
    for _ in range(GREEDY_TOKENS):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        generated.append(token)
        llm.eval([token])
    return generated


def test_f16_gguf_in_llama_cpp_matches_transformers(hf_model, gguf_files):
    model, tokenizer = hf_model
    llm = _llama(gguf_files["f16"])
    for text in _prompt_texts():
        hf_ids, hf_tokens = _hf_greedy(model, tokenizer, text)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf_ids
        assert _llama_greedy(llm, hf_ids) == hf_tokens, text
        # Logits over prompt + answer, teacher-forced: F16 rounding only.
        sequence = hf_ids + hf_tokens
        llm.reset()
        llm.eval(sequence)
        with torch.no_grad():
            hf_logits = model(torch.tensor([sequence])).logits[0].numpy()
        gap = np.abs(np.array(llm.scores[: len(sequence)]) - hf_logits).max()
        assert gap < 0.5, f"largest logit gap {gap:.3f}"


def test_quantized_files_hold_quantized_tensors_and_stay_close(hf_model, gguf_files):
    from gguf import GGUFReader

    model, tokenizer = hf_model
    sizes = {name: path.stat().st_size for name, path in gguf_files.items()}
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"] * 0.6
    for name, expected in (("q8_0", "Q8_0"), ("q4_0", "Q4_0")):
        types = {t.tensor_type.name for t in GGUFReader(str(gguf_files[name])).tensors}
        assert expected in types and "F16" not in types, (name, types)
    text = _prompt_texts()[0]
    hf_ids = tokenizer(text)["input_ids"]
    with torch.no_grad():
        hf_top = model(torch.tensor([hf_ids])).logits[0].argmax(-1).numpy()
    for name, least in (("q8_0", 0.9), ("q4_0", 0.5)):
        llm = _llama(gguf_files[name])
        llm.eval(hf_ids)
        agreement = float((np.array(llm.scores[: len(hf_ids)]).argmax(-1) == hf_top).mean())
        assert agreement >= least, f"{name}: next-token agreement {agreement:.2f}"


def test_tokenizer_from_tokenizer_json_tokenizes_like_transformers(merged_dir, hf_model, tmp_path):
    _, tokenizer = hf_model
    path = export_gguf(merged_dir, tmp_path / "bpe.gguf", "f16")
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, vocab_only=True, verbose=False)
    for text in _prompt_texts() + ["Numbers 12345 and  spaces, punctuation!? <|im_end|>"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokenizer(text)["input_ids"], text


def test_rotary_rows_are_interleaved_per_head():
    # Two heads of four rows: rotate-half order (0, 1 | 2, 3) becomes pairs (0, 2), (1, 3).
    weight = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert interleave_rotary_rows(weight, heads=2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_unsupported_models_and_tokenizers_are_refused(merged_dir, tmp_path):
    config = json.loads((merged_dir / "config.json").read_text())
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(GGUFExportError, match="model_type 'gpt2' is not supported"):
        export_gguf(other, tmp_path / "x.gguf")

    sentencepiece = tmp_path / "spm"
    sentencepiece.mkdir()
    (sentencepiece / "config.json").write_text(json.dumps(config))
    for weights in merged_dir.glob("*.safetensors"):
        (sentencepiece / weights.name).symlink_to(weights)
    spec = json.loads((merged_dir / "tokenizer.json").read_text())
    spec["model"]["byte_fallback"] = True
    (sentencepiece / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(GGUFExportError, match="byte_fallback"):
        export_gguf(sentencepiece, tmp_path / "y.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial"))
