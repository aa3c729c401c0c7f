"""Names and checks the tests of a real vLLM share (their fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

from backends.base import ChatRequest
from backends.vllm_env import VLLMServer
from core.records import read_seed_tasks
from selfinstruct.config import GenerateConfig
from selfinstruct.generate import SelfInstructRun
from selfinstruct.prompt import load_template

REPO = Path(__file__).resolve().parents[2]
SEEDS = REPO / "data" / "seed_tasks.jsonl"
STUDENT_NAME = "student"  # the base model's name on a server
LORA_NAME = "sft"  # the adapter's name on a server


def generation_requests(count: int, **settings) -> list[ChatRequest]:
    """The generate stage's first requests under these settings (seed tasks sampled, a seed each)."""
    config = GenerateConfig(**settings)
    run = SelfInstructRun(config, read_seed_tasks(SEEDS), load_template(config.reply_format))
    return [run.request(i) for i in range(count)]


def prompt_tokens(student_dir: Path, requests: list[ChatRequest]) -> list[int]:
    """Each chat request's prompt tokens, the student's chat template applied (as vLLM counts them)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    return [len(tokenizer.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"]) for r in requests]


def server_alive(server: VLLMServer) -> bool:
    """True while the server runs and says it is healthy."""
    if server.returncode is not None:
        return False
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(server.base_url.removesuffix("/v1") + "/health", timeout=10) as response:
            return response.status == 200
    return False


def run_in_own_group(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run a command in a process group of its own and wait for it; past the timeout the whole
    group (vLLM's engine-core processes with it) is killed."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
