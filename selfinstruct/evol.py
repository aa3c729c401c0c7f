"""Evol-Instruct (Xu et al., 2023, "WizardLM"): grow harder and rarer instructions from a pool.

Each round asks the teacher to evolve every instruction of the pool once, by one of six
operations picked at random (reproducibly, from the run seed, the round and the position):

* in-depth evolution rewrites the instruction into a more demanding version of itself, by
  one of five operations: add constraints, deepening, concretizing, increase reasoning
  steps, complicate input (``DEPTH_OPERATIONS`` holds the sentence that describes each one
  to the teacher; it fills the ``{operation}`` placeholder of ``prompts/evol_in_depth.txt``);
* in-breadth evolution invents a new, rarer instruction in the same domain
  (``prompts/evol_in_breadth.txt``).

The reply is cleaned by :func:`parse_evolved`, checked by :func:`eliminate` (the
instruction-only rules run before the answer is asked for, so no answer is paid for an
evolution that has already failed), answered by the teacher (:func:`answer_requests`), and
checked again with the answer. As in the paper, an evolution that survives replaces its
parent in the pool for the next round, and a failed one leaves the parent in place to be
evolved again (:func:`next_pool`). The records of all rounds together are the data set.

Elimination rules (:func:`eliminate`), the paper's four, made concrete:

1. No information gain. The paper asks a model; here it is a lexical test on content words
   (lower-cased ``\\w+`` tokens that are not in ``STOP_WORDS``). The evolution fails if it
   adds no content word the parent lacks (identical after normalisation, a reordering, or
   a trimmed copy), or if it is a near copy: ROUGE-L F against the parent (the same
   measure as the dedup stage) of at least ``NEAR_COPY_ROUGE_L`` = 0.9 while adding fewer
   than ``NEAR_COPY_MIN_NEW_WORDS`` = 2 new content words.
2. The answer shows the task was too hard for the teacher: it contains the word "sorry"
   and has fewer than ``SORRY_MAX_WORDS`` = 80 words.
3. The answer is only punctuation and stop words (an empty answer counts as such).
4. The evolved instruction copies the evolving prompt's own wording: one of
   ``COPIED_PROMPT_PHRASES`` (the labels and phrases of our two templates, plus the
   "given prompt" / "rewritten prompt" phrasings that instruction-tuned teachers emit out
   of habit), matched case-insensitively with whitespace normalised.

Everything here is pure: requests are built from their arguments, and outcomes
(``backends.base.RequestOutcome``, as the request runner returns them) are turned into
records and rejections without any I/O, except that the two template files are read when no
templates are passed in.
"""

from __future__ import annotations

import random
import re
from typing import Iterable, Sequence

import prompts
from backends.base import ChatRequest, RequestOutcome
from similarity.rouge import rouge_l_fmeasure
from student.prompt_format import chat_user_message

IN_DEPTH_TEMPLATE = "evol_in_depth"
IN_BREADTH_TEMPLATE = "evol_in_breadth"

# The five in-depth operations and how each is explained to the teacher.
DEPTH_OPERATIONS: dict[str, str] = {
    "add_constraints": (
        "Add one further condition or requirement that a good answer has to meet, such as a "
        "limit, a format, a point of view, or something the answer must include or avoid."
    ),
    "deepening": (
        "Push the task to go deeper into its subject: where it asks about something, make it "
        "also ask about the reasons behind it, its consequences, its trade-offs, or how it "
        "compares with related cases."
    ),
    "concretizing": (
        "Replace general wording with something specific: name a particular case, setting, "
        "group of people, quantity or example instead of a broad category."
    ),
    "increase_reasoning": (
        "If the task can be done with one obvious step, change it so that answering it "
        "clearly takes several steps of reasoning, each building on the one before."
    ),
    "complicate_input": (
        "Give the task richer material to work on, written out in the task itself: for "
        "example a small table, a code snippet, a JSON or CSV fragment, a formula, or a "
        "longer passage, and make the task depend on processing it."
    ),
}
IN_BREADTH = "in_breadth"
OPERATIONS: tuple[str, ...] = (*DEPTH_OPERATIONS, IN_BREADTH)

# Rule 1: no information gain.
NEAR_COPY_ROUGE_L = 0.9
NEAR_COPY_MIN_NEW_WORDS = 2
# Rule 2: the teacher found the task too hard.
SORRY_MAX_WORDS = 80
# Rule 4: wording of the evolving prompts that must not leak into an evolved instruction.
COPIED_PROMPT_PHRASES: tuple[str, ...] = (
    # labels and phrases of prompts/evol_in_depth.txt and prompts/evol_in_breadth.txt
    "#task to evolve#", "#evolved task#", "#example task#", "#fresh task#",
    "task to evolve", "evolved task", "fresh task",
    # the habitual phrasings of teachers trained on earlier Evol-Instruct data
    "#the given prompt#", "#given prompt#", "#rewritten prompt#", "#created prompt#",
    "given prompt", "rewritten prompt", "created prompt",
    "rewritten instruction", "evolved instruction",
)

# English function words (and politeness fillers) that carry no content of their own.
STOP_WORDS = frozenset("""
a about above after again against all also am an and any are aren't as at be because been before being
below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down
during each either else etc even ever every few for from further had hadn't has hasn't have haven't
having he he'd he'll he's her here here's hers herself him himself his how how's however i i'd i'll i'm
i've if in into is isn't it it's its itself just kindly let let's may me might more most must mustn't my
myself neither no nor not now of off often on once only or other otherwise ought our ours ourselves out
over own per please quite rather really same shall shan't she she'd she'll she's should shouldn't so
some such than that that's the their theirs them themselves then there there's these they they'd
they'll they're they've this those though through thus to too under until up upon us very via was
wasn't we we'd we'll we're we've were weren't what what's when when's where where's whether which while
who who's whom whose why why's will with within without won't would wouldn't yes yet you you'd you'll
you're you've your yours yourself yourselves
""".split())

_WORD = re.compile(r"\w+(?:'\w+)?")


def load_evol_templates() -> dict[str, str]:
    """The two evolving prompt templates, {"in_depth": ..., "in_breadth": ...}."""
    return {
        "in_depth": prompts.load_template(IN_DEPTH_TEMPLATE),
        "in_breadth": prompts.load_template(IN_BREADTH_TEMPLATE),
    }


def parent_text(record: dict) -> str:
    """What is evolved: the instruction, with its input (if any) after a blank line."""
    return chat_user_message(record["instruction"], record.get("input") or "")


def choose_operation(seed: int, round_index: int, index: int, operations: Sequence[str] = OPERATIONS) -> str:
    """The operation for pool item `index` in round `round_index`: the same on every rerun."""
    return random.Random(f"evol:{seed}:{round_index}:{index}").choice(list(operations))


def render_evolution_prompt(instruction: str, operation: str, templates: dict[str, str] | None = None) -> str:
    """The evolving prompt for one instruction and one operation."""
    templates = templates or load_evol_templates()
    if operation == IN_BREADTH:
        return templates["in_breadth"].format(instruction=instruction.strip()).rstrip() + "\n"
    if operation not in DEPTH_OPERATIONS:
        raise ValueError(f"unknown evolution operation {operation!r}; expected one of {', '.join(OPERATIONS)}")
    return templates["in_depth"].format(
        instruction=instruction.strip(), operation=DEPTH_OPERATIONS[operation]
    ).rstrip() + "\n"


def evolution_requests(
    pool: list[dict],
    round_index: int,
    seed: int,
    max_tokens: int,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    operations: Sequence[str] = OPERATIONS,
    templates: dict[str, str] | None = None,
) -> list[ChatRequest]:
    """One evolving request per pool instruction for round `round_index` (1 for the first).

    The operation of item i is drawn from `operations` (uniformly, as in the paper; repeat
    a name to weight it) by a generator seeded with (seed, round, i), so a rerun sends the
    same requests. Keys are ``evol-r{round}-{i:06d}``; meta holds the round, the position,
    the parent's id and text, and the operation.
    """
    unknown = [name for name in operations if name not in OPERATIONS]
    if unknown or not operations:
        raise ValueError(f"unknown evolution operations {unknown}; expected some of {', '.join(OPERATIONS)}")
    templates = templates or load_evol_templates()
    requests = []
    for index, record in enumerate(pool):
        rng = random.Random(f"evol:{seed}:{round_index}:{index}")
        operation = rng.choice(list(operations))
        parent = parent_text(record)
        requests.append(ChatRequest(
            key=f"evol-r{round_index}-{index:06d}",
            messages=[{"role": "user", "content": render_evolution_prompt(parent, operation, templates)}],
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=rng.getrandbits(31),
            meta={
                "round": round_index,
                "pool_index": index,
                "parent_id": record.get("id"),
                "parent_instruction": parent,
                "operation": operation,
            },
        ))
    return requests


# --------------------------------------------------------------------------- parsing

# Labels the teacher may echo: ours (#Evolved Task#) and the habitual ones (#Rewritten Prompt#).
_LABEL_NOUNS = r"(?:task|prompt|instruction|question|version)"
_OUTPUT_HASH_LABEL = re.compile(
    r"#+\s*(?:the\s+)?(?:evolved|fresh|rewritten|new|created|harder|revised)\s+" + _LABEL_NOUNS + r"\s*#*\s*:?",
    re.IGNORECASE,
)
_INPUT_HASH_LABEL = re.compile(
    r"#+\s*(?:(?:the\s+)?(?:given|original|example)\s+" + _LABEL_NOUNS + r"|task\s+to\s+evolve)\s*#+\s*:?",
    re.IGNORECASE,
)
# A leading label line: "Evolved task:", "**Rewritten Prompt:**", "New instruction -".
_LEADING_LABEL = re.compile(
    r"^[ \t>*_#]*(?:the\s+|my\s+|a\s+)?(?:evolved|fresh|rewritten|new|created|harder|revised|more\s+"
    r"(?:complex|challenging|demanding|difficult))\s+" + _LABEL_NOUNS
    + r"(?:\s+(?:is|would be|reads))?[ \t*_#]*[:\-–—][ \t*_]*",
    re.IGNORECASE,
)
_INTERJECTION = re.compile(r"^\W*(?:sure|certainly|of course|okay|ok|absolutely|great|alright)\b", re.IGNORECASE)
_HERE = re.compile(r"^\W*(?:here(?:'s| is| are)|below is)\b", re.IGNORECASE)
_META_WORDS = re.compile(
    r"\b(?:rewritten|evolved|revised|harder|new|fresh|more (?:complex|challenging|demanding|difficult)|"
    r"version|task|prompt|instruction)\b",
    re.IGNORECASE,
)
_DESCRIPTOR = re.compile(
    r"\b(?:rewritten|evolved|revised|harder|more (?:complex|challenging|demanding|difficult)) "
    r"(?:version|task|prompt|instruction|question)\b",
    re.IGNORECASE,
)
# Paragraphs after the task that are commentary on it, or an answer to it.
_TRAILING_COMMENTARY = re.compile(
    r"^[ \t>*_#(]*(?:"
    r"(?:explanation|notes?|changes(?: made)?|rationale|answer|solution|response)[ \t*_]*:|"
    r"this (?:(?:new|evolved|rewritten|revised|harder|updated) )?version\b|"
    r"this (?:new|evolved|rewritten|revised|harder|updated) (?:task|prompt|instruction)\b|"
    r"in this (?:version|rewrite)\b|"
    r"i (?:have|'ve) (?:added|made|changed|rewritten|included|introduced)\b|"
    r"the (?:new|evolved|rewritten|revised|harder|updated) (?:version|task|prompt|instruction) "
    r"(?:adds|now|requires|asks|introduces|includes)\b|"
    r"by (?:adding|requiring|asking|introducing)\b)",
    re.IGNORECASE,
)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}


def _strip_wrapping(text: str) -> str:
    """Remove code fences, bold markers, quotes or block-quote marks around the whole text."""
    changed = True
    while changed and text:
        changed = False
        lines = [line for line in text.split("\n") if line.strip()]
        if lines and all(line.lstrip().startswith(">") for line in lines):  # a block quote
            text = "\n".join(re.sub(r"^[ \t]*> ?", "", line) for line in text.split("\n")).strip()
            changed = True
            continue
        if text.startswith("```") and text.endswith("```") and len(text) > 6 and text.count("```") == 2:
            text = re.sub(r"^```[\w+-]*[ \t]*\n?", "", text[:-3]).strip()
            changed = True
        elif text.startswith("**") and text.endswith("**") and len(text) > 4 and text.count("**") == 2:
            text = text[2:-2].strip()
            changed = True
        elif len(text) > 1 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]] and \
                text.count(text[0]) == (2 if _QUOTES[text[0]] == text[0] else 1):
            text = text[1:-1].strip()
            changed = True
    return text


def _is_intro(line: str, max_words: int) -> bool:
    """A short line that introduces the task rather than being part of it."""
    if not line or len(line.split()) > max_words:
        return False
    if _INTERJECTION.match(line) or _DESCRIPTOR.search(line):
        return True
    return bool(_HERE.match(line) and _META_WORDS.search(line))


def _drop_preamble(text: str) -> str:
    """Drop opening chatter ("Sure! Here is the rewritten task:") and a leading label line
    ("Evolved task:"), a few times over."""
    for _ in range(3):
        match = _LEADING_LABEL.match(text)
        if match:
            text = text[match.end():].strip()
            continue
        first, _, rest = text.partition("\n")
        line = first.strip().rstrip("*_ \t")
        if rest.strip():
            is_interjection = re.fullmatch(
                r"\W*(?:sure|certainly|of course|okay|ok|absolutely|great|alright)\W*", line, re.IGNORECASE)
            is_chatter = bool(_INTERJECTION.match(line)) and len(line.split()) <= 12 and line[-1] in ".!:"
            if is_interjection or is_chatter or (line.endswith(":") and _is_intro(line, 16)):
                text = rest.strip()
                continue
            break
        # A one-line reply: "Sure! Here's the new task: <task>".
        head, sep, tail = line.partition(":")
        if sep and tail.strip() and (_INTERJECTION.match(head) or _HERE.match(head)) \
                and _META_WORDS.search(head) and len(head.split()) <= 14:
            text = tail.strip().lstrip("*_ \t")
            continue
        break
    return text


def _drop_trailing_commentary(text: str) -> str:
    """Cut explanations, notes or an answer that follow the task, and any echoed label."""
    label = _INPUT_HASH_LABEL.search(text) or _OUTPUT_HASH_LABEL.search(text)
    if label and label.start() > 0:
        text = text[:label.start()]
    rule = re.search(r"^[ \t]*(?:-{3,}|\*{3,}|_{3,}|={3,})[ \t]*$", text, re.MULTILINE)  # a horizontal rule
    if rule and text[:rule.start()].strip():
        text = text[:rule.start()]
    paragraphs = re.split(r"\n[ \t]*\n", text)
    kept = paragraphs[:1]
    for paragraph in paragraphs[1:]:
        if _TRAILING_COMMENTARY.match(paragraph.strip()):
            break
        kept.append(paragraph)
    return "\n\n".join(kept)


def parse_evolved(reply: str | None) -> str | None:
    """The evolved instruction in a teacher's reply, without preamble, labels, wrapping
    quotes or trailing commentary; None when nothing is left.

    When the reply echoes the prompt's labels, the text after the last output label
    (e.g. "#Evolved Task#") is taken.
    """
    if not reply or not reply.strip():
        return None
    text = reply.replace("\r\n", "\n").strip()
    labels = list(_OUTPUT_HASH_LABEL.finditer(text))
    if labels:
        text = text[labels[-1].end():].strip()
        if not text:
            return None  # the label and nothing after it
    text = _drop_preamble(_strip_wrapping(text))
    text = _drop_trailing_commentary(text).strip()
    text = _strip_wrapping(text)
    text = _drop_preamble(text)  # a label inside the wrapping: "**New task:** ..."
    text = text.strip()
    if not re.search(r"\w", text):
        return None
    return text


# --------------------------------------------------------------------------- elimination

def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def content_words(text: str) -> set[str]:
    """Lower-cased words of `text` that are not stop words."""
    return {word for word in _words(text) if word not in STOP_WORDS}


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def eliminate(parent: str, evolved: str, answer: str | None) -> str | None:
    """Why this evolution fails (see the module docstring for the rules), or None if it
    survives. With `answer` None only the instruction rules (4, then 1) are checked."""
    if not evolved or not evolved.strip():
        return "empty_instruction"
    flat = _normalized(evolved)
    for phrase in COPIED_PROMPT_PHRASES:
        if phrase in flat:
            return f"copied_prompt_words:{phrase}"
    new_words = content_words(evolved) - content_words(parent)
    if _words(evolved) == _words(parent):
        return "no_information_gain:identical"
    if not new_words:
        return "no_information_gain:no_new_words"
    if len(new_words) < NEAR_COPY_MIN_NEW_WORDS and rouge_l_fmeasure(parent, evolved) >= NEAR_COPY_ROUGE_L:
        return "no_information_gain:near_copy"
    if answer is None:
        return None
    words = _words(answer)
    if re.search(r"\bsorry\b", answer, re.IGNORECASE) and len(answer.split()) < SORRY_MAX_WORDS:
        return "answer_sorry_short"
    if all(word in STOP_WORDS for word in words):
        return "answer_only_stopwords"
    return None


# --------------------------------------------------------------------------- outcomes

def _rejection(record_id: str, reason: str, **detail) -> dict:
    return {"id": record_id, "stage": "evolve", "reason": reason, **detail}


def collect_evolved(outcomes: Iterable[RequestOutcome]) -> tuple[list[dict], list[dict]]:
    """Evolved instructions from a round's evolving outcomes, in key order, and a rejection
    for every outcome that failed: request failed, reply cut off by the length limit,
    nothing parseable, or an instruction rule of :func:`eliminate`."""
    evolved, rejected = [], []
    for outcome in sorted(outcomes, key=lambda o: o.key):
        key, meta = outcome.key, outcome.meta or {}
        lineage = {name: meta.get(name) for name in ("round", "pool_index", "parent_id", "operation")}
        if not outcome.ok:
            rejected.append(_rejection(key, "request_failed", error=outcome.error, **lineage))
            continue
        if outcome.finish_reason == "length":
            rejected.append(_rejection(key, "truncated", text=(outcome.text or "")[:2000], **lineage))
            continue
        instruction = parse_evolved(outcome.text)
        if instruction is None:
            rejected.append(_rejection(key, "unparseable", text=(outcome.text or "")[:2000], **lineage))
            continue
        reason = eliminate(meta.get("parent_instruction", ""), instruction, None)
        if reason:
            rejected.append(_rejection(key, f"eliminated:{reason}", instruction=instruction, **lineage))
            continue
        evolved.append({"id": key, "instruction": instruction, "input": "",
                        "parent_instruction": meta.get("parent_instruction", ""), **lineage})
    return evolved, rejected


def answer_requests(
    evolved: list[dict],
    max_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    system_prompt: str | None = None,
) -> list[ChatRequest]:
    """One request per evolved instruction asking the teacher to answer it; key
    ``{evolved id}-answer``, meta carrying the evolved record's id and lineage."""
    requests = []
    for number, record in enumerate(evolved):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": parent_text(record)})
        requests.append(ChatRequest(
            key=f"{record['id']}-answer",
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=random.Random(f"evol-answer:{seed}:{record['id']}").getrandbits(31),
            meta={"evolved_id": record["id"], "number": number},
        ))
    return requests


def collect_answers(evolved: list[dict], outcomes: Iterable[RequestOutcome]) -> tuple[list[dict], list[dict]]:
    """Finished records {id, instruction, input, output, + lineage} for the evolved
    instructions whose answer came back and passes every rule of :func:`eliminate`, in the
    order of `evolved`, and a rejection for each of the others (a missing, failed or cut-off
    answer, or an elimination rule)."""
    by_key = {outcome.key: outcome for outcome in outcomes}
    records, rejected = [], []
    for record in evolved:
        lineage = {name: record.get(name) for name in ("round", "pool_index", "parent_id", "operation")}
        outcome = by_key.get(f"{record['id']}-answer")
        if outcome is None:
            rejected.append(_rejection(record["id"], "answer_missing", instruction=record["instruction"], **lineage))
            continue
        if not outcome.ok:
            rejected.append(_rejection(record["id"], "answer_request_failed", error=outcome.error,
                                       instruction=record["instruction"], **lineage))
            continue
        answer = (outcome.text or "").strip()
        if outcome.finish_reason == "length":
            rejected.append(_rejection(record["id"], "answer_truncated", instruction=record["instruction"],
                                       output=answer[:2000], **lineage))
            continue
        reason = eliminate(record.get("parent_instruction", ""), parent_text(record), answer)
        if reason:
            rejected.append(_rejection(record["id"], f"eliminated:{reason}", instruction=record["instruction"],
                                       output=answer[:2000], **lineage))
            continue
        records.append({"id": record["id"], "instruction": record["instruction"], "input": record.get("input", ""),
                        "output": answer, **lineage})
    return records, rejected


def next_pool(pool: list[dict], survivors: Iterable[dict]) -> list[dict]:
    """The pool for the next round: each survivor replaces the parent at its `pool_index`;
    a parent whose evolution failed stays, to be evolved again."""
    replacement = {record["pool_index"]: record for record in survivors}
    return [replacement.get(index, record) for index, record in enumerate(pool)]
