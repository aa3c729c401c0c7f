"""GGUF export of the merged embedded student with llama.cpp's own converter, and llama.cpp's
quantizer, checked against the Hugging Face model: the F16 file, run by llama.cpp, must give the
same tokens and (nearly) the same logits as transformers on the same merged weights, and carry
the tokenizer the student was released with (the original GGUF's metadata), with nothing copied in."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")

from compress import llama_converter  # noqa: E402
from compress.gguf_export import GGUFExportError, export_gguf, quantize_gguf, write_gguf  # noqa: E402
from greedy import llama_greedy  # noqa: E402
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
    f16 = export_gguf(merged_dir, out / "model-f16.gguf", "f16")
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


def test_f16_gguf_in_llama_cpp_matches_transformers(hf_model, gguf_files):
    model, tokenizer = hf_model
    llm = _llama(gguf_files["f16"])
    for text in _prompt_texts():
        hf_ids, hf_tokens = _hf_greedy(model, tokenizer, text)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == hf_ids
        assert llama_greedy(llm, hf_ids, GREEDY_TOKENS) == hf_tokens, text
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


def _tokenizer_fields(path) -> dict:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    return {key: field.contents() for key, field in fields.items() if key.startswith("tokenizer.")}


def test_converted_tokenizer_is_the_released_one(hf_model, gguf_files):
    """The converter writes the student's tokenizer as its original GGUF has it (vocabulary, merges,
    token types, special tokens, chat template); only add_space_prefix, which a byte-level BPE
    tokenizer never reads, is left out. So no metadata needs copying from the original file."""
    converted, original = _tokenizer_fields(gguf_files["f16"]), _tokenizer_fields(find_embedded_gguf())
    assert set(original) - set(converted) <= {"tokenizer.ggml.add_space_prefix"}
    for key in sorted(set(original) & set(converted)):
        assert converted[key] == original[key], key
    _, tokenizer = hf_model
    llm = llama_cpp.Llama(str(gguf_files["f16"]), n_ctx=256, n_threads=1, vocab_only=True, verbose=False)
    for text in _prompt_texts() + ["Numbers 12345 and  spaces, punctuation!? <|im_end|>", "naïve café 東京 🦙\n\n\tx"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tokenizer(text)["input_ids"], text


def test_write_gguf_quantizes_in_one_step_and_keeps_no_intermediate(merged_dir, tmp_path):
    from gguf import GGUFReader

    path = write_gguf(merged_dir, tmp_path / "student.gguf", "q4_k_m")
    types = {t.tensor_type.name for t in GGUFReader(str(path)).tensors}
    assert "Q4_K" in types and "F16" not in types, types
    assert [p.name for p in tmp_path.iterdir()] == ["student.gguf"]


def _copy_model(source, target, config=None, tokenizer_json=None):
    """A model directory sharing ``source``'s weights (symlinked), with an edited config or tokenizer."""
    target.mkdir()
    for item in source.iterdir():
        if item.name not in ("config.json", "tokenizer.json"):
            (target / item.name).symlink_to(item)
    (target / "config.json").write_text(json.dumps(config or json.loads((source / "config.json").read_text())))
    (target / "tokenizer.json").write_text(json.dumps(tokenizer_json or json.loads((source / "tokenizer.json").read_text())))
    return target


def test_what_llama_cpp_cannot_convert_is_refused_by_name(merged_dir, tmp_path):
    config = json.loads((merged_dir / "config.json").read_text())
    out = tmp_path / "out"
    unknown = _copy_model(merged_dir, tmp_path / "unknown",
                          config={**config, "model_type": "tinyllama9", "architectures": ["TinyLlama9ForCausalLM"]})
    with pytest.raises(GGUFExportError, match=r"cannot convert model_type 'tinyllama9' \(architectures: "
                                              r"TinyLlama9ForCausalLM\)"):
        export_gguf(unknown, out / "x.gguf")

    # The same vocabulary split by another pre-tokenizer: llama.cpp knows no such tokenizer.
    spec = json.loads((merged_dir / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                      "use_regex": False}]}
    splits = _copy_model(merged_dir, tmp_path / "splits", tokenizer_json=spec)
    with pytest.raises(GGUFExportError, match=r"cannot convert the tokenizer \(TokenizersBackend, model_type 'llama'\): "
                                              r"its BPE pre-tokenizer \(chkhsh [0-9a-f]{64}\) is not one llama.cpp knows"):
        export_gguf(splits, out / "y.gguf")
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_a_missing_converter_says_to_run_setup(merged_dir, tmp_path, monkeypatch):
    monkeypatch.delenv(llama_converter.CONVERTER_ENV, raising=False)
    monkeypatch.setattr(llama_converter, "default_root", lambda: tmp_path / "nothing")
    existing = tmp_path / "old.gguf"
    existing.write_bytes(b"an older export")
    with pytest.raises(GGUFExportError, match=r"converter is missing .* run ./setup.sh"):
        write_gguf(merged_dir, existing, "q8_0")
    assert existing.read_bytes() == b"an older export" and [p.name for p in tmp_path.iterdir()] == ["old.gguf"]
