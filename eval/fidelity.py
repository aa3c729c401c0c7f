"""Teacher fidelity: how close a contestant is to the teacher it was distilled from, measured
without a judge.

* ``teacher_answer_nll``: the mean negative log-likelihood per token of the **teacher's own
  answers** under the contestant, teacher-forced, counted on the answer tokens only, with
  each prompt in the student's training template (``student.prompt_format``, the run's
  ``finetune.prompt_format``) and tokenized as training tokenizes it (trl's prompt /
  completion rule: the prompt, and prompt + answer + end-of-sequence token, each tokenized
  whole; the answer's tokens are those after their common prefix). The end token is scored
  only where the teacher ended its answer itself (finish reason ``stop``), not where it was
  cut at the token limit. The mean is over all answer tokens of all prompts (each token
  counts once), in nats. Lower = closer to the teacher; the base student against the tuned
  student shows what the fine-tune learned. Local transformers models are scored through
  ``student.scoring``; GGUF files through llama.cpp's logits (``logits_all``), on the same
  token ids (the variant's tokenizer), so the numbers compare across runtimes.
* ``answer_similarity``: the mean cosine similarity of the contestant's answer to the
  teacher's, prompt by prompt, in all-MiniLM-L6-v2 embeddings (``similarity.embeddings``).
* ``answer_rouge_l``: the mean ROUGE-L F of the contestant's answer against the teacher's
  (``similarity.rouge``, exactly rouge_score's).

Higher similarity and ROUGE-L = closer to the teacher. Prompts the teacher did not answer
are left out of all three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from student.prompt_format import common_prefix_length

NLL_METHOD = ("mean NLL per token (nats) of the teacher's answers under the model, teacher-forced, answer tokens "
              "only, in the student's training prompt template")


def answer_sequences(tokenizer: Any, items: Sequence[dict], teacher_answers: dict[str, dict],
                     prompt_format: str) -> list[tuple[list[int], int]]:
    """Per item the teacher answered: (token ids of prompt + answer [+ end token], where the
    answer starts), tokenized as trl tokenizes a prompt / completion pair for training."""
    from student.prompt_format import render_student_prompt

    eos = tokenizer.eos_token or ""
    sequences = []
    for item in items:
        answer = teacher_answers.get(item["id"])
        if answer is None or not answer["answer"].strip():
            continue
        prompt = render_student_prompt(item["instruction"], item.get("input", ""), prompt_format, tokenizer)
        completion = answer["answer"].strip() + (eos if answer.get("finished", True) else "")
        prompt_ids = list(tokenizer(text=prompt)["input_ids"])
        full_ids = list(tokenizer(text=prompt + completion)["input_ids"])
        sequences.append((full_ids, common_prefix_length(prompt_ids, full_ids)))
    return sequences




def mean_nll(scored: Sequence[tuple[float, int]]) -> dict:
    """The token-weighted mean NLL of (summed NLL, tokens) pairs, with the counts behind it."""
    total = sum(nll for nll, _ in scored)
    tokens = sum(count for _, count in scored)
    answers = sum(1 for _, count in scored if count)
    return {"teacher_answer_nll": round(total / tokens, 6) if tokens else None, "nll_tokens": tokens,
            "nll_answers": answers, "nll_method": NLL_METHOD}


def teacher_answer_nll(model: Any, tokenizer: Any, items: Sequence[dict], teacher_answers: dict[str, dict],
                       prompt_format: str, batch_size: int = 8) -> dict:
    """The teacher's answers' mean NLL per token under a local transformers model."""
    from student.scoring import sequence_nll

    sequences = answer_sequences(tokenizer, items, teacher_answers, prompt_format)
    return {**mean_nll(sequence_nll(model, sequences, batch_size=batch_size)), "nll_runtime": "transformers"}


def gguf_sequence_nll(model_path: Path, sequences: Sequence[tuple[list[int], int]],
                      threads: int | None = None) -> list[tuple[float, int]]:
    """Per sequence (token ids, context): the summed NLL of the tokens after the context and
    their count, from llama.cpp's logits for every position of the GGUF model in this process."""
    import numpy as np
    from llama_cpp import Llama

    longest = max((len(ids) for ids, _ in sequences), default=0)
    if not longest:
        return [(0.0, 0)] * len(sequences)
    window = max(64, -(-longest // 64) * 64)
    llm = Llama(model_path=str(model_path), n_ctx=window, n_batch=window, logits_all=True, verbose=False,
                **({"n_threads": threads} if threads else {}))
    try:
        results = []
        for ids, context in sequences:
            if not 0 < context < len(ids):
                results.append((0.0, 0))
                continue
            llm.reset()
            llm.eval(ids)
            logits = np.asarray(llm.scores[context - 1:len(ids) - 1], dtype=np.float64)
            top = logits.max(axis=1, keepdims=True)
            log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
            targets = np.asarray(ids[context:])
            nll = log_norm - logits[np.arange(len(targets)), targets]
            results.append((float(nll.sum()), len(targets)))
        return results
    finally:
        llm.close()


def gguf_teacher_answer_nll(model_path: Path, tokenizer: Any, items: Sequence[dict],
                            teacher_answers: dict[str, dict], prompt_format: str, threads: int | None = None) -> dict:
    """The teacher's answers' mean NLL per token under a GGUF file, through llama.cpp."""
    sequences = answer_sequences(tokenizer, items, teacher_answers, prompt_format)
    return {**mean_nll(gguf_sequence_nll(model_path, sequences, threads)), "nll_runtime": "llama.cpp"}


def not_measured(reason: str) -> dict:
    """A contestant whose NLL cannot be measured here, and why."""
    return {"teacher_answer_nll": None, "nll_not_measured": reason}


def similarity_to_teacher(answers: dict[str, str], teacher: dict[str, str], embed=None) -> dict:
    """Mean all-MiniLM-L6-v2 cosine similarity and mean ROUGE-L F of the contestant's answers to
    the teacher's, over the prompts both answered (`embed`: texts -> unit vectors, by default
    similarity.embeddings.embed_texts)."""
    import numpy as np

    from similarity.rouge import rouge_l_fmeasure

    ids = [key for key in teacher if key in answers]
    if not ids:
        return {"answer_similarity": None, "answer_rouge_l": None, "similarity_prompts": 0}
    if embed is None:
        from similarity.embeddings import embed_texts as embed
    vectors = embed([answers[key] for key in ids] + [teacher[key] for key in ids])
    mine, theirs = vectors[: len(ids)], vectors[len(ids):]
    cosine = np.sum(mine * theirs, axis=1)
    rouge = [rouge_l_fmeasure(answers[key], teacher[key]) for key in ids]
    return {"answer_similarity": round(float(np.mean(cosine)), 6),
            "answer_rouge_l": round(float(sum(rouge) / len(rouge)), 6), "similarity_prompts": len(ids)}


def fidelity_row(nll: dict | None, similarity: dict) -> dict:
    """The report's `fidelity` of one model: the three numbers first, then how they were got."""
    nll = nll or not_measured("no NLL was computed for this model")
    return {"teacher_answer_nll": nll.get("teacher_answer_nll"), "answer_similarity": similarity.get("answer_similarity"),
            "answer_rouge_l": similarity.get("answer_rouge_l"),
            **{key: value for key, value in {**nll, **similarity}.items()
               if key not in ("teacher_answer_nll", "answer_similarity", "answer_rouge_l")}}
