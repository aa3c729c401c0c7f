"""One training process of an ``accelerate launch`` (see :mod:`finetune.launch`): it reads the
job file the launcher wrote and trains, as :func:`finetune.train.run_training` does in one process."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from finetune.config import FinetuneConfig
from finetune.train import run_training


def main(argv: list[str] | None = None) -> int:
    """One training process of a launch: read the job file named on the command line and train."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m finetune.launch_worker JOB_FILE  (started by accelerate launch)")
    job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(name)s %(levelname)s %(message)s",
    )
    run_training(
        job["pairs"],
        job["dropped_records"],
        Path(job["base_model_dir"]),
        Path(job["output_dir"]),
        FinetuneConfig(**job["settings"]),
        progress=job["progress"] and rank == 0,
        save_steps=job["save_steps"],
        resume_from=Path(job["resume_from"]) if job["resume_from"] else None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
