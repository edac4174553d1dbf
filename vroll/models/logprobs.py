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
                   temperature: float = 1.0, with_entropy: bool = False, prompt_width: int | None = None):
    """log p(token_t | tokens_<t) for t = 1..L-1, shape [B, L-1]; 0 where the token is padding or
    has no real token before it (the first token of a left-padded row).

    `temperature` divides the logits first: pass the sampling temperature to match vLLM's
    `processed_logprobs`, 1.0 to match its default `raw_logprobs`. `with_entropy` also returns the
    entropy of each position's distribution (same shape), for the trainer's metrics. The model runs
    on the `real_columns` only (a micro-batch is often narrower than the batch it was cut from).
    `prompt_width`: the columns before every row's response (the padding rule); rows that repeat a
    prompt (a GRPO group) then share one pass over it (`shared_prompt_logits`).
    """
    first, end = real_columns(attention_mask)
    width = input_ids.shape[1]
    shared = prompt_width is not None and 0 < prompt_width < width and can_share_prompts(model)
    if shared:  # the same two passes whatever the rows hold: FSDP2's ranks must run as many forwards
        first, end = min(first, prompt_width - 1), max(end, prompt_width + 1)
    ids, mask = input_ids[:, first:end], attention_mask[:, first:end]
    if shared:
        out = shared_prompt_logprobs(model, ids, mask, prompt_width - first, temperature, with_entropy)
    else:
        out = scored_logprobs(causal_logits(model, ids, mask), ids, mask, temperature, with_entropy)
    if (first, end) == (0, width):
        return out

    def widened(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(t, (first, width - end))

    return tuple(map(widened, out)) if with_entropy else widened(out)


def causal_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The model's logits [B, L, V] over padded rows, positions counting real tokens only."""
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids_from_mask(attention_mask), use_cache=False).logits


def can_share_prompts(model) -> bool:
    """Prompt sharing runs the model twice, the second time on the first's keys and values; gradient
    checkpointing would re-run a layer against a cache it already extended, so it needs one pass."""
    return not (model.training and getattr(model, "is_gradient_checkpointing", False))


def shared_prompt_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                           temperature: float, with_entropy: bool):
    """`scored_logprobs` of `causal_logits`, computed with each distinct prompt once: the prompts' pass
    gives their keys and values, which every row repeating that prompt attends to in the responses'
    pass. The same numbers (float rounding apart) and the same gradients, which flow back through the
    shared keys and values; a GRPO group of n samples costs one prompt instead of n."""
    from transformers import DynamicCache

    prompts, prompt_mask = input_ids[:, :prompt_width], attention_mask[:, :prompt_width]
    _, inverse = torch.unique(torch.cat([prompts * prompt_mask, prompt_mask], 1), dim=0, return_inverse=True)
    rows = torch.arange(len(inverse), device=inverse.device)
    first_row = torch.full((int(inverse.max()) + 1,), len(rows), device=inverse.device).scatter_reduce(
        0, inverse, rows, "amin")
    unique_ids, unique_mask = prompts[first_row], prompt_mask[first_row]
    once = model(input_ids=unique_ids, attention_mask=unique_mask, position_ids=position_ids_from_mask(unique_mask),
                 use_cache=True)
    onehot = torch.nn.functional.one_hot(inverse, len(first_row))
    cache = DynamicCache(config=model.config)
    for i, layer in enumerate(once.past_key_values.layers):
        cache.update(repeated(layer.keys, onehot), repeated(layer.values, onehot), i)
    full_mask = torch.cat([unique_mask[inverse], attention_mask[:, prompt_width:]], 1)
    responses = model(input_ids=input_ids[:, prompt_width:], attention_mask=full_mask,
                      position_ids=position_ids_from_mask(full_mask)[:, prompt_width:], past_key_values=cache,
                      use_cache=True)
    # the prompt's own tokens scored once per prompt; from its last position on, per row
    in_prompt = scored_logprobs(once.logits, unique_ids, unique_mask, temperature, with_entropy)
    after = scored_logprobs(torch.cat([repeated(once.logits[:, -1:], onehot), responses.logits], 1),
                            input_ids[:, prompt_width - 1:], full_mask[:, prompt_width - 1:], temperature, with_entropy)
    if not with_entropy:
        return torch.cat([repeated(in_prompt, onehot), after], 1)
    return tuple(torch.cat([repeated(a, onehot), b], 1) for a, b in zip(in_prompt, after))


def repeated(t: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """Row i of the result is row `onehot[i].argmax()` of `t`, as a product with the one-hot rows: its
    gradient sums each row's copies in a fixed order (indexing's backward on CPU accumulates in
    whatever order its threads run, and a resumed run would drift from an uninterrupted one)."""
    return (onehot.to(t.dtype) @ t.flatten(1)).view(len(onehot), *t.shape[1:])


def scored_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    temperature: float, with_entropy: bool):
    """Each next token's log-prob (and the entropy) from the logits [B, L, V], 0 where not scored."""
    logits = logits[:, :-1].float()
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
