"""Weight buckets as one flat byte buffer plus a table: Ray's object store shares numpy buffers
between processes on a node without copying, so a bucket travels once per node."""

from __future__ import annotations

import numpy as np
import torch


def pack_bucket(bucket: list[tuple[str, torch.Tensor]]) -> tuple[np.ndarray, list[tuple[str, str, tuple, int]]]:
    specs, offset, parts = [], 0, []
    for name, tensor in bucket:
        t = tensor.detach().contiguous().cpu()
        raw = t.view(torch.uint8).reshape(-1) if t.numel() else torch.empty(0, dtype=torch.uint8)
        specs.append((name, str(t.dtype).removeprefix("torch."), tuple(t.shape), offset))
        parts.append(raw)
        offset += raw.numel()
    flat = torch.cat(parts).numpy() if parts else np.empty(0, np.uint8)
    return flat, specs


def unpack_bucket(flat: np.ndarray, specs) -> list[tuple[str, torch.Tensor]]:
    """Views into `flat` (read-only shared memory): no copy until the engine loads them."""
    import warnings

    with warnings.catch_warnings():  # the buffer is read-only; the engine only reads it
        warnings.simplefilter("ignore", UserWarning)
        base = torch.from_numpy(flat)
    out = []
    for name, dtype, shape, offset in specs:
        dt = getattr(torch, dtype)
        n = int(np.prod(shape)) * torch.empty(0, dtype=dt).element_size()
        out.append((name, base[offset:offset + n].view(dt).reshape(shape)))
    return out
