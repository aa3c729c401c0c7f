"""Teacher-forced negative log-likelihood of token sequences under a local causal LM: the
scored tokens are those after a context (an answer after its prompt). Used by the IFD filter
(filters.ifd) and by the teacher-fidelity metric of evaluation (eval.fidelity).

Batches are right-padded (padding never changes the real tokens' outputs under a causal
mask). Where the model's logits are its LM head applied to the decoder's last hidden states,
they are computed only at the scored positions, a chunk of positions at a time, so the full
``batch x length x vocabulary`` logits tensor is never built.
"""

from __future__ import annotations

from typing import Any, Sequence

# Model types whose forward post-processes the LM head's output (soft-capping, scaling):
# for these the full logits come from the model's own forward instead of the decoder + head.
_LOGIT_POSTPROCESS_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def uses_plain_head(model: Any) -> bool:
    """Whether the logits are the LM head applied to the decoder's last hidden states (so they can
    be computed at the scored positions only)."""
    config = getattr(model, "config", None)
    if any(getattr(config, attr, None) not in (None, 1.0) for attr in _LOGIT_POSTPROCESS_ATTRS):
        return False
    try:
        decoder = model.get_decoder()
    except (AttributeError, NotImplementedError):
        return False
    return decoder is not None and decoder is not model and model.get_output_embeddings() is not None


def batch_nll(model: Any, batch: list[tuple[int, list[int], int]], chunk_positions: int, plain_head: bool):
    """Summed NLL and token count of the scored tokens of each sequence in the batch: entries
    ``(slot, token ids, context)``, the tokens from position ``context`` on scored. Right-padded;
    logits only at the scored positions, ``chunk_positions`` at a time, when ``plain_head``."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    width = max(len(ids) for _, ids, _ in batch)
    input_ids = torch.zeros((len(batch), width), dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    # target[r, p] = token at p + 1 when position p predicts a scored token, else -100.
    target = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (_, ids, context) in enumerate(batch):
        ids_t = torch.tensor(ids, dtype=torch.long)
        input_ids[row, : len(ids)] = ids_t
        attention[row, : len(ids)] = 1
        target[row, context - 1 : len(ids) - 1] = ids_t[context:]
    input_ids, attention, target = input_ids.to(device), attention.to(device), target.to(device)
    scored = target != -100
    rows = scored.nonzero(as_tuple=True)[0]
    targets = target[scored]

    if plain_head:
        hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention).last_hidden_state
        hidden = hidden[scored]  # (scored positions, hidden size)
        head = model.get_output_embeddings()
        nll = torch.empty(targets.shape[0], dtype=torch.float32, device=device)
        for begin in range(0, targets.shape[0], chunk_positions):
            end = begin + chunk_positions
            logits = head(hidden[begin:end]).float()
            nll[begin:end] = F.cross_entropy(logits, targets[begin:end], reduction="none")
    else:
        logits = model(input_ids=input_ids, attention_mask=attention).logits
        nll = F.cross_entropy(logits[scored].float(), targets, reduction="none")

    sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows, nll.double())
    counts = scored.sum(dim=1)
    return sums.cpu().tolist(), counts.cpu().tolist()


def sequence_nll(model: Any, sequences: Sequence[tuple[list[int], int]], batch_size: int = 8,
                 chunk_positions: int = 2048) -> list[tuple[float, int]]:
    """Per sequence ``(token ids, context)``: the summed NLL of its tokens from ``context`` on,
    and how many were scored (0 and 0.0 when none is). Sequences are batched longest first;
    the results come back in input order."""
    import torch

    results: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    todo = sorted(((slot, list(ids), context) for slot, (ids, context) in enumerate(sequences)
                   if 0 < context < len(ids)), key=lambda entry: -len(entry[1]))
    plain_head = uses_plain_head(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for begin in range(0, len(todo), max(1, batch_size)):
                batch = todo[begin:begin + max(1, batch_size)]
                sums, counts = batch_nll(model, batch, chunk_positions, plain_head)
                for (slot, _, _), total, count in zip(batch, sums, counts):
                    results[slot] = (float(total), int(count))
    finally:
        model.train(was_training)
    return results
