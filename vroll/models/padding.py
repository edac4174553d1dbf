"""The one padding rule: prompts sit at the right edge of their rows (left padding), so every row's
response starts at the same column; the attention mask marks real tokens."""

from __future__ import annotations

from typing import Sequence

import torch


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both [len(rows), width], each row's tokens right-aligned."""
    width = width or max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def prompt_width(response_mask: torch.Tensor) -> int | None:
    """Where every row's response starts (the rule above), read off a response mask in the log-prob
    layout [B, L-1] (column t scores token t+1); None when no row has a response."""
    columns = response_mask.any(0).nonzero()
    return int(columns[0]) + 1 if len(columns) else None
