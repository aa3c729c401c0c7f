"""bitsandbytes 8- and 4-bit variants of the merged student. They need a CUDA GPU and the
bitsandbytes package; where either is missing the GPU tests skip, saying which, and the
refusal itself is tested instead."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")

from compress.bnb import BnbUnavailableError, bnb_settings, check_bnb_available  # noqa: E402
from student_prompts import PROMPTS  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
needs_gpu = pytest.mark.skipif(not (HAS_CUDA and HAS_BNB),
                               reason=f"bitsandbytes needs a CUDA GPU and the package (cuda: {HAS_CUDA}, "
                                      f"bitsandbytes installed: {HAS_BNB})")


@needs_gpu
@pytest.mark.parametrize("bits", [8, 4])
def test_bnb_variant_loads_quantized_and_answers(merged_dir, bits):
    from compress.variants import answer_with_variant
    from compress.bnb import load_bnb

    model, _ = load_bnb(merged_dir, bits)
    assert getattr(model, "is_loaded_in_8bit" if bits == 8 else "is_loaded_in_4bit")
    variant = {"label": f"bnb_{bits}bit", "kind": "bnb", "path": str(merged_dir), "bits": bits}
    answers, efficiency = answer_with_variant(variant, PROMPTS, "alpaca", 16)
    assert len(answers) == len(PROMPTS) and all(a["completion_tokens"] > 0 for a in answers)
    assert efficiency["peak_gpu_memory_bytes"] > 0


@pytest.mark.skipif(HAS_CUDA and HAS_BNB, reason="CUDA and bitsandbytes are here: the variants run instead")
def test_without_cuda_or_the_package_the_refusal_says_what_is_missing():
    with pytest.raises(BnbUnavailableError, match="need a CUDA GPU" if not HAS_CUDA else "pip install bitsandbytes"):
        check_bnb_available()


def test_settings_are_llm_int8_and_nf4():
    assert bnb_settings(8) == {"load_in_8bit": True}
    assert bnb_settings(4)["bnb_4bit_quant_type"] == "nf4"
    with pytest.raises(ValueError, match="bits 8 or 4"):
        bnb_settings(3)
