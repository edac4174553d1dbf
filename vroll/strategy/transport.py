"""Weight buckets for engines in other processes. Each tensor becomes a numpy array over the same
memory (no copy); `ray.put` then copies the bucket once into the node's shared-memory object store,
and every engine on that node reads it from there without a copy of its own."""

from __future__ import annotations

import numpy as np
import torch

# numpy has no bfloat16: such tensors travel as their 16-bit patterns and are viewed back
_CARRIER = {torch.bfloat16: torch.int16}


def pack_bucket(bucket: list[tuple[str, torch.Tensor]]) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    arrays, specs = [], []
    for name, tensor in bucket:
        t = tensor.detach().contiguous().cpu()
        arrays.append(t.view(_CARRIER.get(t.dtype, t.dtype)).numpy())
        specs.append((name, str(t.dtype).removeprefix("torch.")))
    return arrays, specs


def unpack_bucket(arrays: list[np.ndarray], specs) -> list[tuple[str, torch.Tensor]]:
    """Tensors over the arrays' (read-only, shared) memory: the engine only reads them."""
    import warnings

    out = []
    with warnings.catch_warnings():  # torch warns that the shared buffers are not writable
        warnings.simplefilter("ignore", UserWarning)
        for arr, (name, dtype) in zip(arrays, specs):
            out.append((name, torch.from_numpy(arr).view(getattr(torch, dtype))))
    return out
