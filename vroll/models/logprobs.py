"""Per-token log-probabilities of given sequences: one function for the reference role (`hf_infer`)
and the trainer, so both compute exactly the same quantity as each other."""

from __future__ import annotations

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def real_columns(attention_mask: torch.Tensor) -> tuple[int, int]:
    """(first, end): the columns that hold some row's real token. Outside them every row is padding,
    which no real token attends to."""
    cols = attention_mask.any(0).nonzero()
    if len(cols) == 0:
        return 0, attention_mask.shape[1]
    return int(cols[0]), int(cols[-1]) + 1


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   temperature: float = 1.0, with_entropy: bool = False):
    """log p(token_t | tokens_<t) for t = 1..L-1, shape [B, L-1]; 0 where the token is padding or
    has no real token before it (the first token of a left-padded row).

    `temperature` divides the logits first: pass the sampling temperature to match vLLM's
    `processed_logprobs`, 1.0 to match its default `raw_logprobs`. `with_entropy` also returns the
    entropy of each position's distribution (same shape), for the trainer's metrics. The model runs
    on the `real_columns` only (a micro-batch is often narrower than the batch it was cut from).
    """
    first, end = real_columns(attention_mask)
    width = input_ids.shape[1]
    out = _real_token_logprobs(model, input_ids[:, first:end], attention_mask[:, first:end], temperature, with_entropy)
    if (first, end) == (0, width):
        return out

    def widened(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (first, width - end))

    return tuple(map(widened, out)) if with_entropy else widened(out)


def _real_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float,
                         with_entropy: bool):
    """`token_logprobs` over columns that all hold some real token."""
    out = model(input_ids=input_ids, attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    logits = out.logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    targets = input_ids[:, 1:]
    # log_softmax gathered at the target, without materializing [B, L, V] log-probabilities twice
    normalizer = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normalizer
    scored = (attention_mask[:, 1:] * attention_mask[:, :-1]).to(picked.dtype)
    if not with_entropy:
        return picked * scored
    with torch.no_grad():  # a metric only: no gradient through the [B, L, V] probabilities
        probs = torch.softmax(logits, dim=-1)
        entropy = normalizer - (probs * logits).sum(-1)
    return picked * scored, entropy * scored
