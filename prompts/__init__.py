"""Every prompt the pipeline sends, one template file each (placeholders in `{braces}`, literal
braces doubled). Read through `importlib.resources`, so an installed package finds them
without the source checkout; the run manifest records the SHA-256 of each file."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources

SUFFIX = ".txt"


def template_names() -> list[str]:
    """The names of every shipped template (file names without `.txt`), sorted."""
    return sorted(entry.name[: -len(SUFFIX)] for entry in resources.files(__name__).iterdir()
                  if entry.name.endswith(SUFFIX))


@lru_cache(maxsize=None)
def load_template(name: str) -> str:
    """The text of the template `name` (e.g. "rate_pair")."""
    entry = resources.files(__name__) / f"{name}{SUFFIX}"
    if not entry.is_file():
        raise FileNotFoundError(f"no prompt template {name!r}; shipped: {', '.join(template_names())}")
    return entry.read_text(encoding="utf-8")


def template_hashes() -> dict[str, str]:
    """SHA-256 of every template file, by file name."""
    return {f"{name}{SUFFIX}": hashlib.sha256((resources.files(__name__) / f"{name}{SUFFIX}").read_bytes()).hexdigest()
            for name in template_names()}
