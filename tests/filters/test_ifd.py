"""Tests for filters.ifd: the formula on a hand-computable bigram model, the real SmolLM2-135M
(batched and padded against an unbatched reference built on the model's own loss), and
Superfiltering's selection rules."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from filters.ifd import DOCUMENT_SEPARATOR, IfdScore, ifd_prompt, ifd_scores, select_by_ifd  # noqa: E402

ALPACA = Path(__file__).resolve().parents[3] / "shared" / "data" / "alpaca_5000.json"
# Real Alpaca records: short ones with and without input, and one (index 4: 12 prompt
# tokens, 55 answer tokens) that MAX_LENGTH cuts.
ALPACA_INDICES = (1, 2, 8, 13, 15, 4)
MAX_LENGTH = 48
SENTENCE = "The lighthouse keeper painted the old wooden door a bright shade of green last Tuesday."


# ----------------------------------------------------------------------------- hand example
class CharTokenizer:
    """One token per character of "qab\\n"; id 0 is the document separator."""

    vocab = {DOCUMENT_SEPARATOR: 0, "q": 1, "a": 2, "b": 3, "\n": 4}
    bos_token_id = None
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab[c] for c in text]}

    def get_vocab(self):
        return dict(self.vocab)


class BigramLM(torch.nn.Module):
    """P(next | current) = TABLE[current]: a causal LM whose perplexities are known by hand."""

    def __init__(self, table, full_logits_only=False):
        super().__init__()
        self.config = SimpleNamespace(final_logit_softcapping=30.0 if full_logits_only else None)
        size = len(table)
        self.embed = torch.nn.Embedding(size, size)
        self.embed.weight.data = torch.eye(size)
        self.lm_head = torch.nn.Linear(size, size, bias=False)
        self.lm_head.weight.data = torch.tensor(table, dtype=torch.float32).log().T.contiguous()
        outer = self

        class Decoder(torch.nn.Module):
            def forward(self, input_ids, attention_mask=None):
                return SimpleNamespace(last_hidden_state=outer.embed(input_ids))

        self.decoder = Decoder()

    def get_decoder(self):
        return self.decoder

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.lm_head(self.embed(input_ids)))


# Rows: current token (separator, q, a, b, newline); columns: next token. Rows sum to 1.
TABLE = [
    [0.01, 0.30, 0.25, 0.43, 0.01],  # after the separator: "a" has 0.25
    [0.01, 0.01, 0.01, 0.01, 0.96],  # after "q": newline
    [0.01, 0.01, 0.01, 0.80, 0.17],  # after "a": "b" has 0.80
    [0.20, 0.20, 0.20, 0.20, 0.20],
    [0.01, 0.01, 0.90, 0.07, 0.01],  # after the newline (the prompt's end): "a" has 0.90
]


@pytest.mark.parametrize("full_logits_only", [False, True])
def test_formula_on_a_hand_computed_bigram_model(full_logits_only):
    model, tokenizer = BigramLM(TABLE, full_logits_only), CharTokenizer()
    # Prompt "q\n", answer "ab": tokens [sep] q \n a b (conditioned) and [sep] a b (alone).
    [score] = ifd_scores([{"instruction": "q", "output": "ab"}], model, tokenizer)
    ppl_conditioned = (0.90 * 0.80) ** -0.5
    ppl_answer = (0.25 * 0.80) ** -0.5
    assert score.answer_tokens == 2
    assert score.ppl_conditioned == pytest.approx(ppl_conditioned, rel=1e-5)
    assert score.ppl_answer == pytest.approx(ppl_answer, rel=1e-5)
    # P(b | a) is the same in both passes and cancels: IFD = sqrt(P(a | sep) / P(a | \n)).
    assert score.ifd == pytest.approx(math.sqrt(0.25 / 0.90), rel=1e-5)
    assert score.ifd == pytest.approx(score.ppl_conditioned / score.ppl_answer, rel=1e-9)


def test_no_start_token_leaves_the_first_answer_token_out_of_ppl_answer():
    # Superfiltering's script: the answer alone is encoded without a start token.
    [score] = ifd_scores([{"instruction": "q", "output": "ab"}], BigramLM(TABLE), CharTokenizer(),
                         start_token_id=-1)
    assert score.ppl_answer == pytest.approx(1 / 0.80, rel=1e-5)  # only P(b | a)
    assert score.ppl_conditioned == pytest.approx((0.90 * 0.80) ** -0.5, rel=1e-5)


def test_padding_and_batching_do_not_change_the_hand_example():
    records = [{"instruction": "q", "output": "ab" * n} for n in (1, 5, 2, 9)]
    one_by_one = [ifd_scores([r], BigramLM(TABLE), CharTokenizer())[0] for r in records]
    for window in (1024, 3):  # all records sorted together, or three at a time
        batched = ifd_scores(records, BigramLM(TABLE), CharTokenizer(), batch_size=3, chunk_positions=5,
                             sort_window=window)
        assert len(batched) == len(records)
        for single, together in zip(one_by_one, batched):
            assert together.ifd == pytest.approx(single.ifd, rel=1e-6)
            assert together.answer_tokens == single.answer_tokens


def test_unscorable_records_get_nan_and_need_no_forward_pass():
    records = [{"instruction": "q", "output": ""}, {"instruction": "qqqq", "output": "ab"}]
    # The second prompt ([sep] q q q q \n: 6 tokens) leaves no room under max_length 6.
    scores = ifd_scores(records, BigramLM(TABLE), CharTokenizer(), max_length=6)
    assert all(not s.valid and s.answer_tokens == 0 for s in scores)
    assert all(math.isnan(s.ppl_conditioned) and math.isnan(s.ppl_answer) for s in scores)
    # With room for one answer token, the answer is cut to it.
    [cut] = ifd_scores(records[1:], BigramLM(TABLE), CharTokenizer(), max_length=7)
    assert cut.answer_tokens == 1
    assert cut.ifd == pytest.approx(0.25 / 0.90, rel=1e-5)


# ----------------------------------------------------------------------------- real model
@pytest.fixture(scope="module")
def smollm(student_cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from student.embedded import ensure_plain_student

    # One thread: on a small shared CPU box two OpenMP threads ran several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    directory = ensure_plain_student(student_cache_dir)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    yield model, tokenizer
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def alpaca_records():
    records = json.loads(ALPACA.read_text(encoding="utf-8"))
    return [records[i] for i in ALPACA_INDICES]


def reference_score(model, tokenizer, record, max_length):
    """One record, unbatched, through the model's own loss (full logits, labels masked with -100)."""
    start = tokenizer.get_vocab()[DOCUMENT_SEPARATOR]
    prompt = tokenizer(ifd_prompt(record), add_special_tokens=False)["input_ids"]
    answer = tokenizer(record["output"].strip(), add_special_tokens=False)["input_ids"]
    answer = answer[: max_length - 1 - len(prompt)]

    def mean_nll(context, scored):
        ids = torch.tensor([context + scored])
        labels = ids.clone()
        labels[0, : len(context)] = -100
        with torch.no_grad():
            return model(input_ids=ids, labels=labels).loss.item()

    conditioned, alone = mean_nll([start] + prompt, answer), mean_nll([start], answer)
    return IfdScore(math.exp(conditioned - alone), math.exp(conditioned), math.exp(alone), len(answer))


def test_batched_scores_match_an_unbatched_reference(smollm, alpaca_records):
    model, tokenizer = smollm
    scores = ifd_scores(alpaca_records, model, tokenizer, max_length=MAX_LENGTH, batch_size=3)
    assert len(scores) == len(alpaca_records)
    for record, score in zip(alpaca_records, scores):
        expected = reference_score(model, tokenizer, record, MAX_LENGTH)
        assert score.answer_tokens == expected.answer_tokens
        assert score.ppl_conditioned == pytest.approx(expected.ppl_conditioned, rel=1e-4)
        assert score.ppl_answer == pytest.approx(expected.ppl_answer, rel=1e-4)
        assert score.ifd == pytest.approx(expected.ifd, rel=1e-4)
        assert 0 < score.ifd < 1.5
    # The last record's 55-token answer was cut to fit MAX_LENGTH after its 13-token prefix.
    assert scores[-1].answer_tokens == MAX_LENGTH - 13

    # The real scores go straight into the selection.
    kept, dropped = select_by_ifd(alpaca_records, scores, top_k=2)
    ranking = sorted((i for i, s in enumerate(scores) if s.ifd < 1), key=lambda i: -scores[i].ifd)
    assert kept == [alpaca_records[i] for i in sorted(ranking[:2])]
    assert len(dropped) == len(alpaca_records) - 2


def test_an_answer_copied_from_the_instruction_has_a_low_ifd(smollm):
    model, tokenizer = smollm
    copied = {"instruction": f"Repeat this sentence exactly: {SENTENCE}", "output": SENTENCE}
    unrelated = {"instruction": "Name a fruit.", "output": SENTENCE}
    copy_score, unrelated_score = ifd_scores([copied, unrelated], model, tokenizer)
    # The answer alone is the same text in both: PPL(A) does not depend on the instruction.
    assert copy_score.ppl_answer == pytest.approx(unrelated_score.ppl_answer, rel=1e-5)
    assert copy_score.ppl_conditioned < unrelated_score.ppl_conditioned
    assert copy_score.ifd < 0.1 < 0.5 < unrelated_score.ifd


# ----------------------------------------------------------------------------- selection
def recs(n: int) -> list[dict]:
    return [{"id": f"r{i}", "instruction": f"task {i}", "output": "x"} for i in range(n)]


def ids(records: list[dict]) -> list[str]:
    return [record["id"] for record in records]


def test_selection_drops_ifd_at_or_above_one_and_unscored_and_keeps_the_highest():
    records = recs(7)
    scores = [0.5, 1.0, 0.9, math.nan, 1.7, 0.95, IfdScore(0.7, 7.0, 10.0, 3)]
    kept, dropped = select_by_ifd(records, scores, top_k=2)
    assert ids(kept) == ["r2", "r5"]  # the two highest below 1, in input order
    assert kept[0] is records[2]
    reasons = {d["id"]: d["reason"] for d in dropped}
    assert reasons == {"r0": "ifd_below_cut", "r1": "ifd_not_below_max", "r3": "ifd_unscored",
                       "r4": "ifd_not_below_max", "r6": "ifd_below_cut"}
    below = {d["id"]: d for d in dropped if d["reason"] == "ifd_below_cut"}
    assert below["r6"]["rank"] == 3 and below["r0"]["rank"] == 4
    assert below["r6"]["cutoff_ifd"] == 0.9 and below["r6"]["k"] == 2 and below["r6"]["ifd"] == 0.7
    assert "reason" not in records[0]  # the input is not modified


def test_keep_fraction_is_a_fraction_of_all_records():
    records = recs(10)
    scores = [0.1 * i for i in range(10)]  # 0.0 .. 0.9: all below 1
    kept, _ = select_by_ifd(records, scores, keep_fraction=0.25)  # floor(2.5) = 2
    assert ids(kept) == ["r8", "r9"]
    # Records at IFD >= 1 still count in the total, as in Superfiltering (10% of all Alpaca).
    scores[9] = scores[8] = scores[7] = 1.2
    kept, _ = select_by_ifd(records, scores, keep_fraction=0.3)
    assert ids(kept) == ["r4", "r5", "r6"]
    assert select_by_ifd(records, scores, keep_fraction=0.0)[0] == []
    assert ids(select_by_ifd(records, [0.5] * 10, keep_fraction=0.3)[0]) == ["r0", "r1", "r2"]  # ties: input order


def test_without_a_budget_every_record_below_the_maximum_is_kept():
    records = recs(4)
    kept, dropped = select_by_ifd(records, [0.2, None, 0.99, 1.0])
    assert ids(kept) == ["r0", "r2"]
    assert [d["reason"] for d in dropped] == ["ifd_unscored", "ifd_not_below_max"]
    kept, _ = select_by_ifd(records, [0.2, None, 0.99, 1.0], top_k=10)  # more than there are
    assert ids(kept) == ["r0", "r2"]
    kept, _ = select_by_ifd(records, [0.2, None, 0.99, 1.0], max_ifd=0.5)
    assert ids(kept) == ["r0"]


@pytest.mark.parametrize("kwargs", [{"keep_fraction": 0.5, "top_k": 1}, {"keep_fraction": 1.5},
                                    {"keep_fraction": -0.1}, {"top_k": -1}, {"top_k": 1.5}])
def test_selection_rejects_bad_budgets(kwargs):
    with pytest.raises(ValueError):
        select_by_ifd(recs(2), [0.5, 0.5], **kwargs)


def test_selection_needs_one_score_per_record():
    with pytest.raises(ValueError, match="2 records but 1 scores"):
        select_by_ifd(recs(2), [0.5])
