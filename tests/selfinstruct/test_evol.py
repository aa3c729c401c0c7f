import re
import string
from collections import Counter

import pytest

import prompts
from backends.base import RequestOutcome
from selfinstruct.evol import (
    COPIED_PROMPT_PHRASES,
    DEPTH_OPERATIONS,
    IN_BREADTH,
    IN_BREADTH_TEMPLATE,
    IN_DEPTH_TEMPLATE,
    OPERATIONS,
    answer_requests,
    choose_operation,
    collect_answers,
    collect_evolved,
    eliminate,
    evolution_requests,
    load_evol_templates,
    next_pool,
    parse_evolved,
    render_evolution_prompt,
)

POOL = [
    {"id": "gen-000000-00", "instruction": "Give three tips for staying healthy.", "input": "", "output": "..."},
    {"id": "gen-000000-01", "instruction": "Translate the sentence to French.", "input": "Good morning {friend}",
     "output": "Bonjour"},
    {"id": "gen-000001-00", "instruction": "Sort the numbers in ascending order.", "input": "5, 3, 9",
     "output": "3, 5, 9"},
] + [{"id": f"x-{i}", "instruction": f"Describe animal number {i} in one paragraph.", "input": "", "output": "."}
     for i in range(40)]

LONG_ANSWER = " ".join(["Staying healthy takes regular exercise, balanced meals and enough sleep."] * 10)


# ------------------------------------------------------------------ prompt files

@pytest.mark.parametrize("path", [IN_DEPTH_TEMPLATE, IN_BREADTH_TEMPLATE])
def test_prompt_files_render_with_no_unfilled_placeholder(path):
    text = prompts.load_template(path)
    fields = {name for _, name, _, _ in string.Formatter().parse(text) if name}
    expected = {"instruction", "operation"} if path == IN_DEPTH_TEMPLATE else {"instruction"}
    assert fields == expected
    rendered = text.format(instruction="<<INSTRUCTION>>", operation="<<OPERATION>>")
    assert "<<INSTRUCTION>>" in rendered
    assert ("<<OPERATION>>" in rendered) == (path == IN_DEPTH_TEMPLATE)
    assert not re.search(r"\{[a-z_]*\}", rendered) and "{{" not in rendered


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_operation_renders(operation):
    instruction = "Explain what a {placeholder} in a Python format string does."
    prompt = render_evolution_prompt(instruction, operation)
    assert instruction in prompt  # braces in the instruction survive rendering
    assert prompt.count(instruction) == 1
    if operation == IN_BREADTH:
        assert "#Example Task#" in prompt and prompt.rstrip().endswith("#Fresh Task#")
    else:
        assert DEPTH_OPERATIONS[operation] in prompt
        assert "#Task To Evolve#" in prompt and prompt.rstrip().endswith("#Evolved Task#")
    # Every label the templates use is a phrase that rule 4 looks for.
    for label in re.findall(r"#[A-Za-z ]+#", prompt):
        assert label.lower() in COPIED_PROMPT_PHRASES


def test_five_depth_operations_and_breadth():
    assert set(DEPTH_OPERATIONS) == {"add_constraints", "deepening", "concretizing", "increase_reasoning",
                                     "complicate_input"}
    assert OPERATIONS == (*DEPTH_OPERATIONS, IN_BREADTH)
    with pytest.raises(ValueError, match="unknown evolution operation"):
        render_evolution_prompt("Do it.", "make_it_rhyme")


# ------------------------------------------------------------------ requests

def test_evolution_requests_are_deterministic():
    first = evolution_requests(POOL, round_index=1, seed=7, max_tokens=256)
    again = evolution_requests(POOL, round_index=1, seed=7, max_tokens=256)
    assert first == again
    assert [r.key for r in first] == [f"evol-r1-{i:06d}" for i in range(len(POOL))]
    assert len({r.key for r in first}) == len(POOL)
    request = first[1]
    assert request.max_tokens == 256 and request.messages[0]["role"] == "user"
    assert request.meta["parent_id"] == "gen-000000-01"
    assert request.meta["parent_instruction"] == "Translate the sentence to French.\n\nGood morning {friend}"
    assert request.meta["round"] == 1 and request.meta["pool_index"] == 1
    assert request.meta["parent_instruction"] in request.messages[0]["content"]
    for i, r in enumerate(first):
        assert r.meta["operation"] == choose_operation(7, 1, i)


def test_operations_vary_with_seed_round_and_position():
    ops = lambda seed, rnd: [r.meta["operation"] for r in evolution_requests(POOL, rnd, seed, 64)]
    base = ops(0, 1)
    assert base != ops(1, 1)
    assert base != ops(0, 2)
    assert len(set(base)) >= 4  # 43 draws from six operations
    counts = Counter(choose_operation(0, 1, i) for i in range(6000))
    assert set(counts) == set(OPERATIONS) and min(counts.values()) > 800  # roughly uniform
    seeds = [r.seed for r in evolution_requests(POOL, 1, 0, 64)]
    assert len(set(seeds)) == len(seeds)


def test_restricted_operations():
    requests = evolution_requests(POOL, 1, 0, 64, operations=["add_constraints"])
    assert {r.meta["operation"] for r in requests} == {"add_constraints"}
    with pytest.raises(ValueError):
        evolution_requests(POOL, 1, 0, 64, operations=["nope"])


def test_answer_requests():
    evolved = [{"id": "evol-r1-000000", "instruction": "Give three tips for staying healthy while working nights.",
                "input": ""}]
    requests = answer_requests(evolved, max_tokens=512, system_prompt="Be helpful.")
    assert requests == answer_requests(evolved, max_tokens=512, system_prompt="Be helpful.")
    (request,) = requests
    assert request.key == "evol-r1-000000-answer"
    assert request.messages == [{"role": "system", "content": "Be helpful."},
                                {"role": "user", "content": evolved[0]["instruction"]}]
    assert request.meta["evolved_id"] == "evol-r1-000000"
    assert answer_requests(evolved, 512)[0].messages[0]["role"] == "user"


# ------------------------------------------------------------------ elimination rules

PARENT = "Give three tips for staying healthy."


def test_survivor():
    evolved = "Give three tips for staying healthy that a night-shift nurse could follow on a tight budget."
    assert eliminate(PARENT, evolved, None) is None
    assert eliminate(PARENT, evolved, LONG_ANSWER) is None


@pytest.mark.parametrize("evolved, reason", [
    ("Give three tips for staying healthy.", "no_information_gain:identical"),
    ("  give THREE tips, for staying healthy!! ", "no_information_gain:identical"),
    ("For staying healthy, give three tips.", "no_information_gain:no_new_words"),
    ("Please give tips for staying healthy.", "no_information_gain:no_new_words"),
    ("Give three tips for staying healthy and fit.", None),  # adds a word but is short: ROUGE-L 0.86
])
def test_rule1_no_information_gain(evolved, reason):
    assert eliminate(PARENT, evolved, None) == reason


def test_rule1_near_copy_of_a_long_instruction():
    parent = ("Read the paragraph about the history of the printing press and write a summary of its main "
              "points for a school newsletter.")
    one_word = parent.replace("a summary", "a concise summary")
    assert eliminate(parent, one_word, None) == "no_information_gain:near_copy"
    constrained = parent[:-1] + " in exactly three bullet points."
    assert eliminate(parent, constrained, None) is None


@pytest.mark.parametrize("answer, reason", [
    ("I'm sorry, but I cannot determine that without more information.", "answer_sorry_short"),
    ("Sorry \u2014 that is beyond what I can do.", "answer_sorry_short"),
    ("I am SORRY to say this cannot be answered.", "answer_sorry_short"),
    ("I'm sorry to hear you feel unwell. " + LONG_ANSWER, None),  # long: not a refusal by this rule
    ("The sorrowful tale ends here with a moral about health.", None),  # "sorry" as a whole word only
])
def test_rule2_sorry_and_short(answer, reason):
    evolved = "Give three tips for staying healthy during exam season."
    assert eliminate(PARENT, evolved, answer) == reason


@pytest.mark.parametrize("answer, reason", [
    ("", "answer_only_stopwords"),
    ("   ", "answer_only_stopwords"),
    ("...!?", "answer_only_stopwords"),
    ("It is what it is.", "answer_only_stopwords"),
    ("And so, there you are -- it's all of them!", "answer_only_stopwords"),
    ("Yes.", "answer_only_stopwords"),
    ("42", None),
    ("Walk daily.", None),
])
def test_rule3_only_punctuation_and_stop_words(answer, reason):
    evolved = "Give three tips for staying healthy during exam season."
    assert eliminate(PARENT, evolved, answer) == reason


@pytest.mark.parametrize("evolved, phrase", [
    ("#Evolved Task# Give three tips for staying healthy on a budget.", "#evolved task#"),
    ("Using the task to evolve, list three healthy habits for students.", "task to evolve"),
    ("In the rewritten prompt, list three healthy habits for students.", "rewritten prompt"),
    ("Building on the #Given Prompt#, list healthy habits for students.", "given prompt"),
    ("Here is a Fresh   Task: list three healthy snacks for hikers.", "fresh task"),
])
def test_rule4_copied_prompt_words(evolved, phrase):
    reason = eliminate(PARENT, evolved, LONG_ANSWER)
    assert reason is not None and reason.startswith("copied_prompt_words:")
    assert phrase in reason or reason.split(":", 1)[1] in evolved.lower()


def test_empty_instruction():
    assert eliminate(PARENT, "  ", None) == "empty_instruction"


# ------------------------------------------------------------------ parse_evolved

@pytest.mark.parametrize("reply, expected", [
    ("Explain photosynthesis to a ten-year-old using exactly three analogies.",
     "Explain photosynthesis to a ten-year-old using exactly three analogies."),
    ("Sure! Here is the rewritten task:\n\nExplain photosynthesis to a ten-year-old using three analogies.",
     "Explain photosynthesis to a ten-year-old using three analogies."),
    ("Certainly!\nHere's a more challenging version of the task:\n"
     "\"List five uses of copper and rank them by economic value.\"",
     "List five uses of copper and rank them by economic value."),
    ("#Evolved Task#\nList five uses of copper and explain why conductivity matters for each.\n\n"
     "Explanation: I added a requirement to explain conductivity.",
     "List five uses of copper and explain why conductivity matters for each."),
    ("#Task To Evolve#\nList uses of copper.\n\n#Evolved Task#:\nList five uses of copper in electronics.\n\n"
     "#Task To Evolve#\nName a metal.",
     "List five uses of copper in electronics."),
    ("**Rewritten Prompt:** Summarize the article in two sentences, citing one statistic.",
     "Summarize the article in two sentences, citing one statistic."),
    ("Sure! Here's a new task: Name three rivers in Asia longer than 3000 km.",
     "Name three rivers in Asia longer than 3000 km."),
    ("Evolved task: Compute the median of the list below, then explain why it differs from the mean.\n\n"
     "| value |\n|---|\n| 3 |\n| 9 |\n| 4 |\n\n"
     "This version adds a table and asks for a comparison.",
     "Compute the median of the list below, then explain why it differs from the mean.\n\n"
     "| value |\n|---|\n| 3 |\n| 9 |\n| 4 |"),
    ("\u201cWrite a haiku about autumn that names a specific migrating bird.\u201d",
     "Write a haiku about autumn that names a specific migrating bird."),
    ("```\nWrite a SQL query that returns the three customers with the highest total order value in 2023.\n```",
     "Write a SQL query that returns the three customers with the highest total order value in 2023."),
    ("Fresh task:\nDescribe how beekeepers prepare hives for a harsh winter.\n\n"
     "Answer: Beekeepers insulate the hive, reduce the entrance and leave enough honey.",
     "Describe how beekeepers prepare hives for a harsh winter."),
    ("#Rewritten Prompt#:\nDesign a weekly meal plan for a vegetarian marathon runner, with calorie counts.\n\n"
     "---\nI've added calorie counts to make it harder.",
     "Design a weekly meal plan for a vegetarian marathon runner, with calorie counts."),
    ("The evolved task is: Name five rivers in Africa, longest first.", "Name five rivers in Africa, longest first."),
    ("Okay, here is my attempt.\n\nName five rivers in Africa and their lengths.",
     "Name five rivers in Africa and their lengths."),
    ("Rewritten Task:\n> Name five rivers in Africa.\n> Sort them by length.",
     "Name five rivers in Africa.\nSort them by length."),
    ("Here is the harder task:\n\n**Name five rivers in Africa and their lengths.**\n\n"
     "This rewritten task adds lengths.", "Name five rivers in Africa and their lengths."),
])
def test_parse_evolved_cleans_messy_replies(reply, expected):
    assert parse_evolved(reply) == expected


@pytest.mark.parametrize("reply", [
    # Task content that looks a little like chatter must survive.
    "Here are the monthly sales figures:\n| month | sales |\n| Jan | 10 |\n| Feb | 14 |\nCompute the growth rate.",
    "Rewrite the following task description so that it is clearer:\nDo the thing by Friday.",
    "Summarize the passage below.\n\nNote that the passage uses British spelling; keep it in your summary.",
    "Answer the riddle below in one word.\n\nWhat has keys but cannot open locks?",
    "Explain why the phrase \"don't count your chickens\" is used, with one example.",
    "Compare the claims x > y and y > z, and say whether x > z follows.",
    "Write a Python function that parses this input:\n```\n2024-01-05,12.5\n```\nand returns a tuple.",
])
def test_parse_evolved_keeps_task_content(reply):
    assert parse_evolved(reply) == reply


@pytest.mark.parametrize("reply", [None, "", "   \n ", "#Evolved Task#", "Sure!\n\n\"\"", "```\n```"])
def test_parse_evolved_nothing_left(reply):
    assert parse_evolved(reply) is None


# ------------------------------------------------------------------ outcomes to records

def _outcome(request, text, ok=True, finish_reason="stop"):
    return {"key": request.key, "ok": ok, "text": text, "finish_reason": finish_reason,
            "prompt_tokens": 10, "completion_tokens": 5, "meta": request.meta}


def test_round_from_outcomes_to_next_pool():
    pool = POOL[:5]
    requests = evolution_requests(pool, 1, 0, 128)
    outcomes = [
        _outcome(requests[0], "Sure! Here is the evolved task:\nGive three tips for staying healthy on night shifts."),
        _outcome(requests[1], "Translate the sentence to French.\n\nGood morning {friend}"),  # no gain
        _outcome(requests[2], "", ok=False) | {"error": "timeout"},
        _outcome(requests[3], "Describe animal number 0 and", finish_reason="length"),
        _outcome(requests[4], "Describe a pangolin's defence against lions, in one paragraph for children."),
    ]
    evolved, rejected = collect_evolved(RequestOutcome.from_journal(o) for o in reversed(outcomes))
    assert [e["id"] for e in evolved] == ["evol-r1-000000", "evol-r1-000004"]
    assert evolved[0]["instruction"] == "Give three tips for staying healthy on night shifts."
    assert evolved[0]["parent_id"] == "gen-000000-00" and evolved[0]["operation"] == requests[0].meta["operation"]
    assert {r["id"]: r["reason"] for r in rejected} == {
        "evol-r1-000001": "eliminated:no_information_gain:identical",
        "evol-r1-000002": "request_failed",
        "evol-r1-000003": "truncated",
    }

    answers = answer_requests(evolved, 256)
    answer_outcomes = [
        _outcome(answers[0], LONG_ANSWER),
        _outcome(answers[1], "Sorry, I don't know."),
    ]
    records, rejected = collect_answers(evolved, [RequestOutcome.from_journal(o) for o in answer_outcomes])
    assert [r["id"] for r in records] == ["evol-r1-000000"]
    assert records[0]["output"] == LONG_ANSWER and records[0]["input"] == ""
    assert set(records[0]) >= {"instruction", "input", "output", "parent_id", "operation", "round", "pool_index"}
    assert rejected[0]["reason"] == "eliminated:answer_sorry_short"

    missing, rejected = collect_answers(evolved, [])
    assert missing == [] and {r["reason"] for r in rejected} == {"answer_missing"}

    new_pool = next_pool(pool, records)
    assert new_pool[0] is records[0]
    assert new_pool[1:] == pool[1:]  # failed evolutions leave the parent to be evolved again
    assert [r.meta["parent_id"] for r in evolution_requests(new_pool, 2, 0, 128)][:2] == \
        ["evol-r1-000000", "gen-000000-01"]


def test_templates_load():
    templates = load_evol_templates()
    assert set(templates) == {"in_depth", "in_breadth"}
