"""llama.cpp's own Hugging Face -> GGUF converter, pinned to the llama.cpp that serves the files.

llama-cpp-python ships no converter in its wheel, but its source distribution carries the
llama.cpp it was built from (``vendor/llama.cpp/``): ``convert_hf_to_gguf.py``, the
``conversion/`` package it imports, and ``gguf-py`` (llama.cpp's own, much newer than the
``gguf`` release on PyPI of the same version number). :func:`fetch_converter` downloads that
sdist for the installed llama-cpp-python version and keeps those three (about 2 MB) under
``~/.cache/distill/llama.cpp-convert/<version>/``; ``./setup.sh`` runs it
(``python -m compress.llama_converter``). :func:`run_converter` runs the script in a
subprocess of this interpreter (so it uses this environment's torch, transformers and
sentencepiece, and puts its own gguf-py first on its path) and turns its failures into
:class:`GGUFExportError` messages that name what llama.cpp could not convert.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# A llama.cpp directory holding convert_hf_to_gguf.py (a checkout, say) to use instead.
CONVERTER_ENV = "DISTILL_LLAMA_CPP_CONVERTER"
SCRIPT = "convert_hf_to_gguf.py"
# What is kept of the sdist's vendor/llama.cpp/: the script, its package, llama.cpp's gguf-py.
KEPT = (SCRIPT, "conversion/", "gguf-py/", "LICENSE")
TAIL_CHARS = 3000


class GGUFExportError(ValueError):
    """The model cannot be written as GGUF: the message names the model directory and the reason."""


def llama_cpp_version() -> str:
    """The installed llama-cpp-python's version (the converter is fetched for exactly this one)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        raise GGUFExportError("llama-cpp-python is not installed; run ./setup.sh") from None


def default_root() -> Path:
    return Path.home() / ".cache" / "distill" / "llama.cpp-convert"


def _complete(tree: Path) -> bool:
    return (tree / SCRIPT).is_file() and (tree / "conversion").is_dir() and (tree / "gguf-py" / "gguf").is_dir()


def converter_dir() -> Path:
    """The directory holding ``convert_hf_to_gguf.py``: ``$DISTILL_LLAMA_CPP_CONVERTER``, else the one
    fetched for the installed llama-cpp-python. Missing: a :class:`GGUFExportError` saying how to get it."""
    if os.environ.get(CONVERTER_ENV):
        tree = Path(os.environ[CONVERTER_ENV])
        if not _complete(tree):
            raise GGUFExportError(f"{CONVERTER_ENV}={tree}: no {SCRIPT} with conversion/ and gguf-py/ there")
        return tree
    tree = default_root() / llama_cpp_version()
    if not _complete(tree):
        raise GGUFExportError(f"llama.cpp's GGUF converter is missing ({tree} has no {SCRIPT}); run ./setup.sh, "
                              "or python -m compress.llama_converter, to fetch it")
    return tree


def _kept_name(name: str, prefix: str) -> str | None:
    """The member's path inside the kept tree, or None when it is not kept."""
    if not name.startswith(prefix):
        return None
    rest = name[len(prefix):]
    return rest if any(rest == kept or (kept.endswith("/") and rest.startswith(kept)) for kept in KEPT) else None


def fetch_converter(root: Path | None = None) -> Path:
    """Download llama-cpp-python's sdist (the installed version) with pip and keep its converter
    under ``root/<version>/``; return that directory. Already there: returned at once. The tree
    appears whole or not at all (extracted aside, then renamed)."""
    version = llama_cpp_version()
    root = Path(root) if root else default_root()
    tree = root / version
    if _complete(tree):
        return tree
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as tmp:
        download = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={version}", "-d", tmp], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if download.returncode != 0 or not sdists:
            raise GGUFExportError(f"could not download llama-cpp-python=={version}'s source distribution "
                                  f"(pip exit {download.returncode}): {download.stderr[-TAIL_CHARS:]}")
        staging = Path(tmp) / version
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with tarfile.open(sdists[0]) as archive:
            members = []
            for member in archive.getmembers():
                name = _kept_name(member.name, prefix)
                if name and (member.isfile() or member.isdir()):
                    member.name = name
                    members.append(member)
            archive.extractall(staging, members=members, filter="data")
        if not _complete(staging):
            raise GGUFExportError(f"{sdists[0].name} holds no {prefix}{SCRIPT} with conversion/ and gguf-py/")
        if tree.exists():  # an incomplete tree from an older attempt
            shutil.rmtree(tree)
        os.rename(staging, tree)
    return tree


def _model_identity(model_dir: Path) -> tuple[str, str, str]:
    """(model_type, architectures, tokenizer class) of a model directory, as its files name them."""
    def read(name: str) -> dict:
        try:
            return json.loads((model_dir / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    config, tokenizer = read("config.json"), read("tokenizer_config.json")
    return (str(config.get("model_type")), ", ".join(config.get("architectures") or []) or "none",
            str(tokenizer.get("tokenizer_class") or "no tokenizer_config.json"))


def explain_failure(model_dir: Path, output: str, exit_code: int) -> str:
    """A message naming why llama.cpp's converter failed on ``model_dir``, from its output."""
    model_type, architectures, tokenizer = _model_identity(model_dir)
    where = f"{model_dir}: llama.cpp's converter (llama-cpp-python {llama_cpp_version()})"
    if re.search(r"Model \S+ is not supported", output):
        return (f"{where} cannot convert model_type {model_type!r} (architectures: {architectures}): "
                "llama.cpp does not support this architecture")
    if "BPE pre-tokenizer was not recognized" in output:
        digest = re.search(r"chkhsh:\s+([0-9a-f]{64})", output)
        return (f"{where} cannot convert the tokenizer ({tokenizer}, model_type {model_type!r}): its BPE "
                f"pre-tokenizer{f' (chkhsh {digest.group(1)})' if digest else ''} is not one llama.cpp knows, so "
                "llama.cpp would split text differently from transformers; use the tokenizer the model was "
                "released with")
    missing = re.search(r"No module named '([^']+)'", output)
    if missing:
        return f"{where} needs the Python package {missing.group(1)!r}; run ./setup.sh"
    return f"{where} failed (exit {exit_code}) on model_type {model_type!r}:\n{output[-TAIL_CHARS:]}"


def run_converter(model_dir: Path, outfile: Path, out_type: str, model_name: str | None = None) -> str:
    """Run ``convert_hf_to_gguf.py`` on ``model_dir`` writing ``outfile`` (``out_type``: f32, f16,
    bf16 or q8_0); return its log. Any failure is a :class:`GGUFExportError` and leaves no
    ``outfile`` behind."""
    script = converter_dir() / SCRIPT
    # The script puts its own gguf-py ahead of the installed one unless NO_LOCAL_GGUF is set.
    env = {key: value for key, value in os.environ.items() if key != "NO_LOCAL_GGUF"}
    env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, str(script), str(model_dir), "--outfile", str(outfile), "--outtype", out_type]
    if model_name:
        command += ["--model-name", model_name]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    except BaseException:
        Path(outfile).unlink(missing_ok=True)
        raise
    output = done.stdout + done.stderr
    if done.returncode != 0 or not Path(outfile).is_file():
        Path(outfile).unlink(missing_ok=True)
        raise GGUFExportError(explain_failure(Path(model_dir), output, done.returncode))
    return output


if __name__ == "__main__":
    print(f"llama.cpp's GGUF converter: {fetch_converter()}")
