"""The one dtype table: the file's dtype names, torch's names for them, and their sizes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dtype:
    torch_name: str  # also vLLM's `dtype` engine argument
    bytes: int


DTYPES = {"bf16": Dtype("bfloat16", 2), "fp16": Dtype("float16", 2), "fp32": Dtype("float32", 4)}


def torch_dtype(name: str):
    """torch's dtype for a file's dtype name ("bf16" -> torch.bfloat16)."""
    import torch  # only callers that hold tensors ask; config itself stays free of torch

    return getattr(torch, DTYPES[name].torch_name)
