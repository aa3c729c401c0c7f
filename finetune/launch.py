"""Training in several processes: ``accelerate launch`` running this module once per process.

:func:`finetune.train.train_student` does the checks, the data preparation and the checkpoint
bookkeeping once, in the caller's process; with ``num_processes > 1`` it then calls
:func:`launch_training`, which writes the prepared pairs and settings to
``output_dir/launch/job.json`` and runs

    python -m accelerate.commands.launch --multi_gpu --num_processes N ... -m finetune.launch_worker job.json

Each of the N processes runs :func:`finetune.launch_worker.main`, which hands the job to
:func:`finetune.train.run_training`: the trainer finds the process group in the environment
(DDP over NCCL on GPUs, over gloo on CPU; FSDP when ``distributed: fsdp``), and only the main
process writes the adapter and ``training_summary.json``, so the outputs look as with one.

accelerate's ``--cpu`` flag starts a single process (its simple launcher), so the torchrun
launcher behind ``--multi_gpu`` is used on CPU too; the trainer's ``use_cpu`` then selects gloo.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from core.net import free_port
from core.records import write_json
from finetune.config import FinetuneConfig

logger = logging.getLogger(__name__)

JOB_DIR = "launch"
JOB_FILE = "job.json"
# NVLink multicast stays off in every process the launcher starts: a program that uses it can
# put a host's GPUs, which others may share, out of service (NCCL's NVLS, PyTorch's symmetric
# memory, NVSHMEM). A value already set in the environment is kept.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def launch_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the training processes: the caller's, NVLink multicast off, and one
    OpenMP thread each unless set (N processes share the cores)."""
    env = dict(os.environ if base is None else base)
    for name, value in NO_MULTICAST.items():
        env.setdefault(name, value)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def launch_command(job_file: Path, settings: FinetuneConfig, port: int) -> list[str]:
    """The ``accelerate launch`` command line that trains ``job_file`` in ``settings.num_processes`` processes."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu",  # torchrun's launcher: N processes, on GPUs or (use_cpu) on CPU
        "--num_processes", str(settings.num_processes),
        "--num_machines", "1",
        "--mixed_precision", "no",  # the trainer's own bf16 setting applies
        "--dynamo_backend", "no",  # torch_compile is the trainer's business too
        "--main_process_port", str(port),
        "-m", "finetune.launch_worker", str(job_file),
    ]


def launch_training(
    pairs: list[dict[str, str]],
    dropped_records: int,
    base_model_dir: Path,
    output_dir: Path,
    settings: FinetuneConfig,
    *,
    progress: bool,
    save_steps: int,
    resume_from: Path | None,
) -> None:
    """Train ``pairs`` in ``settings.num_processes`` processes; raise if the launch fails.

    The outputs (adapter or model, checkpoints, ``training_summary.json``) land in
    ``output_dir`` exactly as :func:`finetune.train.run_training` writes them in one process.
    """
    job_file = Path(output_dir) / JOB_DIR / JOB_FILE
    write_json(job_file, {
        "pairs": pairs,
        "dropped_records": dropped_records,
        "base_model_dir": str(base_model_dir),
        "output_dir": str(output_dir),
        "settings": settings.model_dump(mode="json"),
        "progress": progress,
        "save_steps": save_steps,
        "resume_from": str(resume_from) if resume_from else None,
    })
    command = launch_command(job_file, settings, free_port())
    env = launch_environment()
    logger.info("launching %d training processes (%s): %s", settings.num_processes, settings.distributed, " ".join(command))
    completed = subprocess.run(command, env=env, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"accelerate launch of {settings.num_processes} training processes exited with code "
            f"{completed.returncode} (their output is above); job: {job_file}"
        )
    job_file.unlink(missing_ok=True)
