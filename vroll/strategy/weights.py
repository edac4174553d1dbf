"""Weights pushed from a trainer: the expected layout, validation, buckets and checksums.

Names are the Hugging Face checkpoint's (what `named_parameters()` / `state_dict()` give); vLLM's
own loaders map them onto its fused and renamed parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from vroll.config.suggest import closest


class WeightUpdateError(ValueError):
    """A weight update that was refused or failed; names the parameter(s)."""


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


def expected_layout(model_dir: str, trust_remote_code: bool = False) -> dict[str, TensorSpec]:
    """Name -> shape of the Hugging Face model, built on the meta device (no memory, no weights read)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return {k: TensorSpec(tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def tied_names(layout: dict[str, TensorSpec], model_dir: str) -> set[str]:
    """Names that may be left out because they are tied to another parameter (lm_head)."""
    import json
    from pathlib import Path

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    tied = cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get("tie_word_embeddings", False))
    return {k for k in layout if k.startswith("lm_head.")} if tied else set()


def check_tensor(name: str, tensor, layout: dict[str, TensorSpec]) -> str | None:
    if not isinstance(tensor, torch.Tensor):
        return f"{name}: expected a torch.Tensor, got {type(tensor).__name__}"
    spec = layout.get(name)
    if spec is None:
        return f"{name}: the model has no parameter of this name{closest(name, layout, cutoff=0.8)}"
    if tuple(tensor.shape) != spec.shape:
        return f"{name}: shape {tuple(tensor.shape)} does not match the model's {spec.shape}"
    if not tensor.is_floating_point():
        return f"{name}: dtype {tensor.dtype} is not a floating-point type"
    return None


def missing_names(seen: set[str], layout: dict[str, TensorSpec], optional: set[str]) -> list[str]:
    return sorted(k for k in layout if k not in seen and k not in optional)


def validate_all(items: list[tuple[str, torch.Tensor]], layout, optional: set[str], complete: bool) -> None:
    """Every problem of a materialized update at once, before anything is written."""
    problems = [p for n, t in items if (p := check_tensor(n, t, layout))]
    names = [n for n, _ in items]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        problems.append(f"given more than once: {dups[:5]}")
    if complete:
        missing = missing_names(set(names), layout, optional)
        if missing:
            problems.append(f"{len(missing)} parameter(s) missing from a complete update, e.g. {missing[:3]}")
    if problems:
        raise WeightUpdateError("weight update refused, nothing was written:\n" + "\n".join(f"  - {p}" for p in problems))


_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


def layer_of(name: str) -> str:
    """The decoder layer a parameter belongs to ('' for embeddings, norms and heads). Buckets never
    split a layer: vLLM fuses q/k/v and gate/up, and processes a layer once all its parts arrived."""
    m = _LAYER.match(name)
    return m.group(1) if m else ""


def buckets(items: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group (name, tensor) pairs into buckets of at most `bucket_bytes` (or one whole layer, when a
    layer alone is larger), consuming the input lazily so the sender materializes one bucket at a time."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size, current = 0, None
    for name, tensor in items:
        layer = layer_of(name)
        nbytes = tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0
        if bucket and layer != current and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
        current = layer
    if bucket:
        yield bucket


@dataclass
class Checksum:
    """Order-independent summary of a set of tensors: count, sum and sum of squares in float64."""

    count: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, tensor: torch.Tensor) -> None:
        t = tensor.detach().to(torch.float64)
        self.count += t.numel()
        self.total += float(t.sum())
        self.squares += float((t * t).sum())

    def matches(self, other: "Checksum", rtol: float = 1e-9) -> bool:
        close = lambda a, b: abs(a - b) <= rtol * max(1.0, abs(a), abs(b))  # noqa: E731
        return self.count == other.count and close(self.total, other.total) and close(self.squares, other.squares)


@dataclass
class UpdateSession:
    """The checks of one weight update as its buckets arrive."""

    layout: dict[str, TensorSpec]
    optional: set[str]  # names that may be left out (tied to another parameter)
    complete: bool  # every parameter must arrive
    verify: bool
    deadline: float  # time.monotonic() value
    written: bool = False  # some bucket reached the engine: a failure now leaves mixed weights
    nbytes: int = 0

    def __post_init__(self):
        self.sent, self.received = Checksum(), Checksum()
        self.seen: set[str] = set()
        self.done_layers: set[str] = set()

    def check_bucket(self, bucket: list[tuple[str, torch.Tensor]], sent: Checksum | None = None) -> None:
        """`sent`: the sender's checksum of the bucket, when the tensors here carry no data (meta)."""
        import time

        problems = [p for n, t in bucket if (p := check_tensor(n, t, self.layout))]
        problems += [f"{n}: given twice" for n, _ in bucket if n in self.seen]
        problems += [f"{n}: its layer {layer_of(n)} already arrived in an earlier bucket; send each layer's "
                     "tensors together" for n, _ in bucket if layer_of(n) in self.done_layers]
        if problems:
            raise WeightUpdateError("\n".join(problems))
        if time.monotonic() > self.deadline:
            raise TimeoutError("the update passed its deadline (weight_update_timeout_s)")
        if self.verify and sent is not None:
            self.sent.count, self.sent.total, self.sent.squares = (
                self.sent.count + sent.count, self.sent.total + sent.total, self.sent.squares + sent.squares)
        elif self.verify:
            if any(t.is_meta for _, t in bucket):
                raise WeightUpdateError("verification asked for, but the sender sent no checksum of the bucket")
            for _, t in bucket:
                self.sent.add(t)

    def record(self, bucket: list[tuple[str, torch.Tensor]], received: Checksum) -> None:
        self.received.count += received.count
        self.received.total += received.total
        self.received.squares += received.squares
        self.seen.update(n for n, _ in bucket)
        self.done_layers.update(layer_of(n) for n, _ in bucket if layer_of(n))
        self.nbytes += sum(t.numel() * t.element_size() for _, t in bucket)

    def check_end(self) -> None:
        missing = missing_names(self.seen, self.layout, self.optional) if self.complete else []
        if missing:
            raise WeightUpdateError(f"{len(missing)} parameter(s) never arrived, e.g. {missing[:3]}")
        if self.verify and not self.sent.matches(self.received):
            raise WeightUpdateError(f"checksum mismatch: sent {self.sent}, the engine received {self.received}")
