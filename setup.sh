#!/usr/bin/env bash
# Set up the project on a fresh machine: a .venv at the repository root, torch 2.13.0 first
# (the CPU build here, the CUDA build on a GPU machine), then the project and its test tools.
# Safe to run again: what is installed already is kept.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# llama-cpp-python compiles once (about 6 minutes on 2 cores); pip caches the wheel after that.
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    .venv/bin/python -m pip install --quiet -e ".[dev]"
echo "setup done: $(.venv/bin/python -c 'import torch, transformers, trl, peft, prefect; print("torch", torch.__version__, "| transformers", transformers.__version__, "| trl", trl.__version__, "| peft", peft.__version__, "| prefect", prefect.__version__)')"
