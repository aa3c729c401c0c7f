#!/usr/bin/env bash
# Set up the project on a fresh machine: a .venv at the repository root, torch 2.13.0 first
# (the CPU build here, the CUDA build on a GPU machine), then the project and its test tools.
# Safe to run again: what is installed already is kept.
set -euo pipefail
cd "$(dirname "$0")"
# --vllm: also make .venv-vllm, a second environment with vLLM (setup_vllm.sh; README, "vLLM").
WITH_VLLM=0
for arg in "$@"; do
    case "$arg" in
        --vllm) WITH_VLLM=1 ;;
        *) echo "setup: unknown option $arg (known: --vllm)" >&2; exit 2 ;;
    esac
done
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# llama-cpp-python compiles once (about 6 minutes on 2 cores); pip caches the wheel after that.
# On x86-64 it is built for AVX2 without the host's own extensions: a build for this host's
# CPU uses its AMX tile instructions, and on the virtual machines seen here those crash the
# process (SIGSEGV in ggml_backend_amx_mul_mat) on any prompt longer than a few tokens.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
if [ "$(uname -m)" = "x86_64" ] && [ -z "${CMAKE_ARGS:-}" ]; then
    export CMAKE_ARGS="$LLAMA_CMAKE_ARGS"
fi
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# A wheel that pip cached from an earlier build for this host's CPU is rebuilt portably.
if .venv/bin/python -c 'import llama_cpp, sys; sys.exit("AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode())'; then
    echo "setup: the cached llama-cpp-python build uses AMX; rebuilding it without (about 6 minutes)"
    .venv/bin/python -m pip install --quiet --no-cache-dir --force-reinstall --no-deps "llama-cpp-python[server]==0.3.36"
fi
# llama.cpp's HF -> GGUF converter, from the source distribution of the llama-cpp-python installed
# above (the llama.cpp that serves the files): 2 MB kept under ~/.cache/distill/llama.cpp-convert/.
.venv/bin/python -m compress.llama_converter
echo "setup done: $(.venv/bin/python -c 'import torch, transformers, trl, peft, prefect; print("torch", torch.__version__, "| transformers", transformers.__version__, "| trl", trl.__version__, "| peft", peft.__version__, "| prefect", prefect.__version__)')"
if [ "$WITH_VLLM" = 1 ]; then
    ./setup_vllm.sh
fi
