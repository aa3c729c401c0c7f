"""Magpie generation (`generate.strategy: magpie`): the templates built from the teacher's own
chat template, and a real generate stage against the real embedded teacher (llama.cpp serving
SmolLM2-135M-Instruct), through the real `distill` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backends.config import ModelEndpoint
from core.errors import ConfigError
from selfinstruct.config import GenerateConfig, MagpieConfig
from selfinstruct.magpie import (
    clean_query,
    gguf_chat_template,
    query_templates,
    teacher_query_templates,
    template_markers,
)

REPO = Path(__file__).resolve().parents[2]
DISTILL = str(Path(sys.executable).parent / "distill")
SMOLLM_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


def test_the_templates_come_from_the_embedded_teachers_chat_template():
    from core.embedded_model import find_embedded_gguf

    template = gguf_chat_template(find_embedded_gguf())
    assert template and "<|im_start|>" in template
    pre, post = teacher_query_templates(MagpieConfig(), ModelEndpoint())
    # ChatML as SmolLM2 renders a conversation: its default system turn, then the user's header.
    assert pre == SMOLLM_SYSTEM + "<|im_start|>user\n"
    assert post == "<|im_end|>\n<|im_start|>assistant\n"
    assert template_markers(pre, post) == ["<|im_start|>", "<|im_end|>"]


def test_templates_of_other_chat_formats():
    llama3 = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
              "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
    pre, post = query_templates(llama3)
    assert pre == "<|start_header_id|>user<|end_header_id|>\n\n"  # BOS is left to the server
    assert post == "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    with pytest.raises(ConfigError, match="does not show a user message exactly once"):
        query_templates("{% for m in messages %}[{{ m['role'] }}]{% endfor %}")
    with pytest.raises(ConfigError, match="does not render"):
        query_templates("{{ raise_exception('only system and user roles') }}")


def test_a_query_is_cut_at_the_templates_markers():
    markers = ["<|im_start|>", "<|im_end|>"]
    assert clean_query("  What is a fun fact about Mars?<|im_end|>\n<|im_start|>assistant\nMars", markers) == \
        "What is a fun fact about Mars?"
    assert clean_query("\nName three rivers.\n", markers) == "Name three rivers."


def test_a_teacher_without_a_readable_chat_template_is_refused_before_any_work(tmp_path):
    remote = ModelEndpoint(backend="openai", model="gpt-4o-mini", base_urls=["http://127.0.0.1:9/v1"])
    with pytest.raises(ConfigError, match="give generate.magpie.pre_query_template and post_query_template"):
        teacher_query_templates(MagpieConfig(), remote)
    given = MagpieConfig(pre_query_template="<|user|>\n", post_query_template="<|end|>\n<|assistant|>\n")
    assert teacher_query_templates(given, remote) == ("<|user|>\n", "<|end|>\n<|assistant|>\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": SMOLLM_TEMPLATE}))
    local = ModelEndpoint(backend="openai", model=str(tmp_path), base_urls=["http://127.0.0.1:9/v1"])
    assert teacher_query_templates(MagpieConfig(), local)[0].endswith("<|im_start|>user\n")
    with pytest.raises(ValueError, match="together"):
        MagpieConfig(pre_query_template="<|user|>\n")

    # The command refuses such a config before the run directory is touched.
    config = tmp_path / "remote.yaml"
    config.write_text(f"name: remote\nseed_tasks: {REPO / 'data' / 'seed_tasks.jsonl'}\n"
                      "teacher: {backend: openai, model: gpt-4o-mini, base_urls: ['http://127.0.0.1:9/v1']}\n"
                      "generate: {strategy: magpie}\n")
    result = subprocess.run([DISTILL, "run", str(config), "--run-dir", str(tmp_path / "run")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "generate.strategy magpie" in result.stderr
    assert not (tmp_path / "run").exists()


SMOLLM_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                   "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                   "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")


def test_a_raw_prompt_goes_to_the_completions_route_whatever_the_api():
    from backends.base import ChatRequest
    from backends.openai_compat import OpenAICompatibleBackend

    backend = OpenAICompatibleBackend("m", ["http://127.0.0.1:9/v1"], api="chat")
    raw = ChatRequest(key="k", messages=[], raw_prompt="<|im_start|>user\n", max_tokens=8)
    chat = ChatRequest(key="k", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert backend._path(raw) == "/completions" and backend._body(raw)["prompt"] == "<|im_start|>user\n"
    assert "messages" not in backend._body(raw)
    assert backend._path(chat) == "/chat/completions" and backend._body(chat)["messages"] == chat.messages


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def magpie_generate(run_dir: Path) -> subprocess.CompletedProcess:
    """`distill generate` of the demo config with Magpie: 4 queries, then answers to the survivors."""
    return subprocess.run(
        [DISTILL, "generate", "configs/demo.yaml", "--run-dir", str(run_dir), "--set", "generate.strategy=magpie",
         "--set", "generate.max_requests=8", "--set", "generate.requests_per_shard=4",
         "--set", "generate.magpie.answer_max_tokens=256"],
        cwd=REPO, capture_output=True, text=True, timeout=1200)


@pytest.mark.server
def test_magpie_generate_stage_against_the_embedded_teacher(tmp_path):
    run_dir = tmp_path / "run"
    result = magpie_generate(run_dir)
    assert result.returncode == 0, result.stderr[-3000:]

    # Queries and answers both went to the completions route as raw prompts (the teacher's api
    # stays chat for the judge and the evaluation).
    server_log = (run_dir / "logs" / "embedded_server.log").read_text()
    journal = lines(run_dir / "work" / "generate_requests.jsonl")
    assert server_log.count("POST /v1/completions") == len(journal) and "POST /v1/chat/completions" not in server_log
    queries = [e for e in journal if e["key"].startswith("magpie-q-")]
    answers = [e for e in journal if e["key"].startswith("magpie-a-")]
    assert len(queries) == 4 and 1 <= len(answers) <= 4 and len(journal) <= 8
    # Sampled queries differ; none is empty or holds template markup.
    texts = [e["text"].strip() for e in queries if e["finish_reason"] == "stop"]
    assert len(set(texts)) == len(texts) and all(t and "<|im_" not in t for t in texts)

    summary = json.loads((run_dir / "stages" / "generate.json").read_text())
    kept = lines(run_dir / "generated.jsonl")
    assert summary["strategy"] == "magpie" and summary["kept"] == len(kept) >= 1
    assert summary["requests"] == len(journal) and summary["stop_reason"] == "max_requests"
    answered = {e["meta"]["query"]: e for e in answers}
    for record in kept:  # each record: a query the teacher wrote, and its own answer to it
        index = int(record["id"].split("-")[1])
        assert record["input"] == "" and record["output"] == answered[index]["text"].strip()
        assert record["instruction"] == answered[index]["meta"]["instruction"]
        assert record["instruction"] in {e["text"].strip() for e in queries}
    # Every query read is kept, dropped with a reason, or beyond the target.
    rejected = [r for r in lines(run_dir / "rejected.jsonl") if r["stage"] == "generate"]
    task_drops = [r for r in rejected if not r["reason"].startswith(("parse:", "request_failed"))]
    assert summary["tasks_parsed"] == len(kept) + len(task_drops) + summary["beyond_target"]
    assert sum(summary["dropped"].values()) == len(rejected)

    # A rerun reads every reply back from the journal and keeps the same records.
    again = magpie_generate(run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert lines(run_dir / "generated.jsonl") == kept
    assert (run_dir / "logs" / "embedded_server.log").read_text().count("POST /v1/completions") == len(journal)


def test_the_strategy_registry_matches_the_setting():
    import typing

    from selfinstruct.strategies import STRATEGIES, strategy_named

    names = typing.get_args(GenerateConfig.model_fields["strategy"].annotation)
    assert tuple(STRATEGIES) == names
    with pytest.raises(ValueError, match="known: self_instruct, evol_instruct, magpie"):
        strategy_named("alpaca")
