"""What a generation returns: per prompt, its samples; and the same as padded tensors for a trainer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from vroll.models.padding import left_pad


@dataclass
class Sample:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (EOS or a stop string/id) or "length"
    logprobs: list[float] | None = None  # log-probability of each sampled token, when asked
    token_versions: list[int] | None = None  # the weight version that produced each token (streamed generation)


@dataclass
class PromptResult:
    index: int
    prompt_token_ids: list[int]
    prompt: str | None = None
    samples: list[Sample] = field(default_factory=list)
    status: str = "ok"  # "ok", "truncated" (prompt cut to fit) or "skipped" (did not fit)
    weight_version: int = 0  # the engine's weight version that produced the samples

    def to_json(self) -> dict:
        return asdict(self)


def to_padded_batch(results: list[PromptResult], pad_token_id: int):
    """One row per sample: prompt left-padded, response right-padded, as a trainer expects.

    Returns a dict of tensors: input_ids, attention_mask, position_ids, response_mask (all
    [rows, P + R]), logprobs ([rows, R], 0 where absent) and prompt_index ([rows]).
    """
    rows = [(r, s) for r in results for s in r.samples]
    if not rows:
        raise ValueError("no samples to batch")
    P = max(len(r.prompt_token_ids) for r, _ in rows)
    R = max(max(len(s.token_ids) for _, s in rows), 1)
    n = len(rows)
    prompt_ids, prompt_mask = left_pad([r.prompt_token_ids for r, _ in rows], pad_token_id, P)
    input_ids = torch.cat([prompt_ids, torch.full((n, R), pad_token_id, dtype=torch.long)], dim=1)
    attention_mask = torch.cat([prompt_mask, torch.zeros((n, R), dtype=torch.long)], dim=1)
    response_mask = torch.zeros((n, P + R), dtype=torch.long)
    logprobs = torch.zeros((n, R), dtype=torch.float32)
    for i, (r, s) in enumerate(rows):
        k = len(s.token_ids)
        input_ids[i, P:P + k] = torch.tensor(s.token_ids, dtype=torch.long)
        attention_mask[i, P:P + k] = 1
        response_mask[i, P:P + k] = 1
        if s.logprobs is not None:
            logprobs[i, :k] = torch.tensor(s.logprobs)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    prompt_index = torch.tensor([r.index for r, _ in rows])
    return dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                response_mask=response_mask, logprobs=logprobs, prompt_index=prompt_index)
