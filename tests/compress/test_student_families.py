"""Students of every common family through the whole student path: LoRA fine-tuning in the chat
format (loss on the answer and its end token only), merging, `distill export-gguf` (llama.cpp's
converter), then llama.cpp, which must decode the same greedy tokens as transformers at F16.

The students are tiny random models built from configs (see tiny_families.py), so each family
takes seconds. A random model's next-token scores are nearly flat over its ~50,000 to 150,000
tokens: its top two often differ by less than F16 rounding moves them (about 0.005), so its
free-running greedy text is a coin toss for any two implementations. The students are
therefore fine-tuned until they answer their training prompts with their training answers,
by clear margins; those answers are the greedy tokens compared. On other prompts the logits
themselves are compared, prompt and continuation, teacher-forced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
llama_cpp = pytest.importorskip("llama_cpp")

from compress.gguf_export import GGUFExportError, export_gguf  # noqa: E402
from finetune.config import FinetuneConfig  # noqa: E402
from finetune.merge import merge_lora  # noqa: E402
from greedy import llama_greedy  # noqa: E402
from finetune.train import build_trainer, load_model, load_tokenizer, prepare_examples, train_student  # noqa: E402
from student.prompt_format import render_student_prompt  # noqa: E402
from student_prompts import PROMPTS  # noqa: E402
from tiny_families import FAMILIES, build_tiny, qwen_tokenizer  # noqa: E402

LOGIT_GAP = 0.05  # F16 weights in llama.cpp against float32 transformers
RECORDS = [
    {"instruction": "Give a synonym for the word.", "input": "happy", "output": "Glad."},
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris is the capital of France."},
    # (No digit right after the blank line before an input: there the embedded student's transformers
    # tokenizer, rebuilt from its GGUF, and llama.cpp split "\n\n" differently, original GGUF included.)
    {"instruction": "Add the two numbers.", "input": "two and three", "output": "Two plus three is 5."},
    {"instruction": "Say hello in Spanish.", "input": "", "output": "Hola."},
]
# What llama.cpp's converter writes for each: its architecture, and the pre-tokenizer it recognised.
EXPECTED = {"llama": ("llama", "smollm"), "mistral": ("llama", "smollm"), "gemma3_text": ("gemma3", "smollm"),
            "qwen2": ("qwen2", "qwen2")}


def settings(**overrides) -> FinetuneConfig:
    base = {"prompt_format": "chat", "max_length": 128, "batch_size": 4, "max_steps": 30, "learning_rate": 2e-2,
            "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "seed": 0, "save_steps": 1000}
    return FinetuneConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def tokenizers(student_dir):
    from transformers import AutoTokenizer

    smollm2 = AutoTokenizer.from_pretrained(student_dir)
    return {"llama": smollm2, "mistral": smollm2, "gemma3_text": smollm2, "qwen2": qwen_tokenizer()}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tokenizers, tmp_path_factory):
    """One family, fine-tuned, merged and exported: (name, base dir, merged dir, F16 GGUF, export output)."""
    name = request.param
    work = tmp_path_factory.mktemp(name)
    torch.set_num_threads(1)
    base = build_tiny(name, tokenizers[name], work / "base")
    train_student(RECORDS, base, work / "finetune", settings(), progress=False)
    merged = merge_lora(base, work / "finetune" / "adapter", work / "merged")
    gguf = work / "model-f16.gguf"
    done = subprocess.run([str(Path(sys.executable).parent / "distill"), "export-gguf", str(merged), "-o", str(gguf),
                           "--type", "f16"], capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    return name, base, merged, gguf, done.stdout


def test_loss_is_on_the_answer_and_its_end_token_only(family, tmp_path):
    name, base, *_ = family
    s = settings()
    tokenizer = load_tokenizer(base, s)
    pairs, _ = prepare_examples(RECORDS[:2], tokenizer, s)
    trainer = build_trainer(pairs, load_model(base, s), tokenizer, tmp_path / "ckpt", s, progress=False)
    example = trainer.train_dataset[0]
    prompt = render_student_prompt(RECORDS[0]["instruction"], RECORDS[0]["input"], "chat", tokenizer)
    assert prompt.endswith("<|im_start|>assistant\n")  # the family's chat template opened the answer
    prompt_ids = tokenizer(text=prompt)["input_ids"]
    n = len(prompt_ids)
    assert example["input_ids"][:n] == prompt_ids
    assert example["labels"][:n] == [-100] * n
    assert example["labels"][n:] == example["input_ids"][n:]
    # The answer ends with the token that closes a chat turn, as the model must learn to stop.
    assert example["input_ids"][-1] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(example["input_ids"][n:-1]) == "Glad."


def test_llama_cpp_decodes_the_same_greedy_tokens_as_transformers(family):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, base, merged, gguf, stdout = family
    assert f"wrote {gguf} (f16" in stdout
    fields = GGUFReader(str(gguf)).fields
    architecture, pre = (fields[key].contents() for key in ("general.architecture", "tokenizer.ggml.pre"))
    assert (architecture, pre) == EXPECTED[name]
    tuned = AutoModelForCausalLM.from_pretrained(merged).eval()
    tokenizer = AutoTokenizer.from_pretrained(merged)
    llm = llama_cpp.Llama(str(gguf), n_ctx=256, n_threads=1, logits_all=True, verbose=False)

    def prompt_ids(item) -> list[int]:
        text = render_student_prompt(item["instruction"], item["input"], "chat", tokenizer)
        ids = tokenizer(text)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        return ids

    for record in RECORDS:  # the tuned answers, decoded greedily by both
        ids, answer = prompt_ids(record), tokenizer(record["output"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hf = tuned.generate(torch.tensor([ids]), max_new_tokens=len(answer), do_sample=False, eos_token_id=None,
                                pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
        assert hf == answer, (name, record, tokenizer.decode(hf))  # fine-tuning took
        assert llama_greedy(llm, ids, len(answer)) == hf, (name, record)
    for item in PROMPTS:  # unseen prompts: the logits, teacher-forced over prompt and a continuation
        sequence = prompt_ids(item) + tokenizer(" The answer is short.", add_special_tokens=False)["input_ids"]
        llm.reset()
        llm.eval(sequence)
        with torch.no_grad():
            hf_logits = tuned(torch.tensor([sequence])).logits[0].numpy()
        gap = np.abs(np.array(llm.scores[: len(sequence)]) - hf_logits).max()
        assert gap < LOGIT_GAP, (name, item["id"], gap)


def test_gemma3_settings_llama_cpp_would_run_differently_are_refused(tmp_path, tokenizers):
    """The converter writes these without complaint; llama.cpp would then compute another model."""
    base = build_tiny("gemma3_text", tokenizers["gemma3_text"], tmp_path / "gemma")
    config = json.loads((base / "config.json").read_text())
    for change, named in (({"query_pre_attn_scalar": 64}, "query_pre_attn_scalar 64 differs from 32"),
                          ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types do not follow"),
                          ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping is set")):
        (base / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(GGUFExportError, match=named):
            export_gguf(base, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_a_qwen2_model_with_another_vocabulary_is_refused_by_its_tokenizer(tmp_path, tokenizers):
    """transformers gives every qwen2 model Qwen2Tokenizer, which splits text Qwen's way whatever the
    vocabulary: under qwen2, SmolLM2's vocabulary becomes a tokenizer llama.cpp does not know."""
    base = build_tiny("qwen2", tokenizers["llama"], tmp_path / "qwen2-smollm2")
    with pytest.raises(GGUFExportError, match=r"cannot convert the tokenizer \(\w+, model_type 'qwen2'\): its BPE "
                                              r"pre-tokenizer \(chkhsh [0-9a-f]{64}\) is not one llama.cpp knows"):
        export_gguf(base, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*"))
