"""The memory / batch / context balance of a vllm role, computed before any engine starts, and an
estimate of what each trainer rank holds.

The guide asks users to balance `gpu_memory_utilization`, batch size and `max_model_len`; this
makes the balance a table (`vroll validate` prints it) and a check: a KV cache that cannot hold one
full-length sequence is an error here rather than a failure at engine start-up.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from vroll.config.dtypes import DTYPES
from vroll.config.engine_args import engine_defaults
from vroll.config.errors import Issue
from vroll.config.layout import engine_count, trainer_ranks
from vroll.config.lora import lora_on, trainable_parameters



@dataclass
class MemoryPlan:
    role: str
    parameters: int
    weight_bytes: int  # per engine device (divided by tensor parallelism)
    kv_bytes_per_token: int  # per engine device
    kv_budget_bytes: int | None  # None: only known at start-up (a fraction of the device)
    max_model_len: int
    tokens_per_sequence: int  # prompt_length + max_new_tokens, capped by max_model_len
    sequences_per_step: int  # rollout sequences each engine receives per step

    @property
    def kv_tokens(self) -> int | None:
        return None if self.kv_budget_bytes is None else self.kv_budget_bytes // self.kv_bytes_per_token

    @property
    def concurrent_sequences(self) -> int | None:
        return None if self.kv_tokens is None else self.kv_tokens // self.tokens_per_sequence

    def issues(self) -> list[Issue]:
        if self.kv_tokens is not None and self.kv_tokens < self.max_model_len:
            need = self.max_model_len * self.kv_bytes_per_token
            return [Issue(f"{self.role}.strategy_args.strategy_config",
                          f"the KV cache ({_mib(self.kv_budget_bytes)}) holds {self.kv_tokens} tokens, fewer than "
                          f"max_model_len={self.max_model_len}: vLLM would refuse to start. Give it at least "
                          f"{_mib(need)} (kv_cache_memory_bytes: {need}) or lower max_model_len")]
        return []

    def table(self) -> str:
        rows = [
            ("parameters", f"{self.parameters / 1e6:,.2f} M"),
            ("weights per device", _mib(self.weight_bytes)),
            ("KV cache per token", f"{self.kv_bytes_per_token:,} B"),
            ("KV cache budget", _mib(self.kv_budget_bytes) if self.kv_budget_bytes else "set at start-up"),
            ("tokens the KV cache holds", _n(self.kv_tokens)),
            ("max_model_len", f"{self.max_model_len:,}"),
            ("tokens per sequence (prompt + response)", f"{self.tokens_per_sequence:,}"),
            ("full-length sequences at once", _n(self.concurrent_sequences)),
            ("rollout sequences per engine per step", f"{self.sequences_per_step:,}"),
        ]
        if self.concurrent_sequences:
            rows.append(("scheduling waves per step (worst case)",
                         f"{math.ceil(self.sequences_per_step / self.concurrent_sequences):,}"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _mib(b: int | None) -> str:
    return "unknown" if b is None else f"{b / 2**20:,.1f} MiB"


def _n(x: int | None) -> str:
    return "set at start-up" if x is None else f"{x:,}"


def tensor_sizes(model_dir: Path) -> dict[str, int]:
    """Element count of every tensor, from the safetensors headers (no weights are read)."""
    return {k: math.prod(shape) for k, shape in tensor_shapes(model_dir).items()}


def tensor_shapes(model_dir: Path) -> dict[str, list[int]]:
    """The shape of every tensor, from the safetensors headers (no weights are read)."""
    shapes = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        shapes.update({k: t["shape"] for k, t in header.items() if k != "__metadata__"})
    return shapes


def local_model_config(role) -> tuple[Path | None, dict]:
    """The role's model folder and its (text) config, or (None, {}) when the model is not a local folder."""
    model_dir = Path(role.model_args.model_name_or_path or "").expanduser()
    if not (model_dir / "config.json").is_file():
        return None, {}
    mc = json.loads((model_dir / "config.json").read_text())
    return model_dir, mc.get("text_config", mc)


def count_parameters(model_dir: Path) -> int:
    return sum(tensor_sizes(model_dir).values())


@dataclass
class TrainMemoryPlan:
    """What one fsdp2_train rank holds at its peak, estimated from the model's shapes: the sharded
    fp32 state, the one layer FSDP2 gathers at a time, and one micro-batch's activations and logits
    (the logits, fp32 over the vocabulary, are often the largest term for small models)."""

    ranks: int
    parameters: int
    sharded_state_bytes: int  # fp32 master weights + gradients + AdamW's two moments, 16 B/param / ranks
    gathered_bytes: int  # the largest decoder layer plus the root (embeddings), in the compute dtype
    micro_tokens: int  # per_device_train_batch_size x (prompt_length + response_length)
    activation_bytes: int
    logits_bytes: int
    checkpointing: bool
    trained: int | None = None  # under LoRA: the adapters' parameters (the rest: fp32 weights only, 4 B/param)

    @property
    def total_bytes(self) -> int:
        return self.sharded_state_bytes + self.gathered_bytes + self.activation_bytes + self.logits_bytes

    def table(self) -> str:
        rows = [
            ("trainer ranks", f"{self.ranks}"),
            ("parameters", f"{self.parameters / 1e6:,.2f} M"),
            *([("trained by LoRA (about)", f"{self.trained / 1e6:,.3f} M")] if self.trained is not None else []),
            ("fp32 weights + grads + AdamW (sharded)", _mib(self.sharded_state_bytes)),
            ("largest layer + root, gathered", _mib(self.gathered_bytes)),
            ("tokens per micro-batch", f"{self.micro_tokens:,}"),
            ("activations" + (" (checkpointed)" if self.checkpointing else ""), _mib(self.activation_bytes)),
            ("logits (fp32, x2 with their gradient)", _mib(self.logits_bytes)),
            ("estimated peak per rank", _mib(self.total_bytes)),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def plan_train_memory(cfg, platform: str = "cpu") -> TrainMemoryPlan | None:
    """The estimate for actor_train (fsdp2_train on a local model folder); None when it cannot be made."""
    role = cfg.actor_train
    if role is None or role.training_args is None or role.strategy_args is None \
            or role.strategy_args.strategy_name != "fsdp2_train":
        return None
    model_dir, mc = local_model_config(role)
    if model_dir is None:
        return None
    shapes = tensor_shapes(model_dir)
    sizes = {k: math.prod(s) for k, s in shapes.items()}
    params = sum(sizes.values())
    # LoRA: the adapters get gradients and AdamW's moments; the frozen base only its fp32 weights
    trained = trainable_parameters(shapes, role.model_args) if lora_on(role) else None
    state = 16 * params if trained is None else 4 * params + 16 * trained
    layers: dict[str, int] = {}
    for name, n in sizes.items():
        parts = name.split(".")
        if "layers" in parts:
            key = ".".join(parts[:parts.index("layers") + 2])
            layers[key] = layers.get(key, 0) + n
    root = params - sum(layers.values())
    compute = DTYPES[role.model_args.dtype].bytes
    ranks = trainer_ranks(role, platform)
    tokens = role.training_args.per_device_train_batch_size * (cfg.prompt_length + cfg.response_length)
    h, inter, n_layers = mc["hidden_size"], mc.get("intermediate_size", 4 * mc["hidden_size"]), mc["num_hidden_layers"]
    # Values kept for backward per token and layer: attention in/out, q, k, v, two norm inputs and
    # the residual (~8h), the MLP's gate, up and activation (~3i). Checkpointing keeps only each
    # layer's input, plus one layer's worth while it is recomputed.
    per_layer = (8 * h + 3 * inter) * tokens * compute
    checkpointing = not role.model_args.disable_gradient_checkpointing
    activations = (n_layers * h * tokens * compute + per_layer) if checkpointing else n_layers * per_layer
    return TrainMemoryPlan(
        ranks=ranks, parameters=params, sharded_state_bytes=state // ranks, trained=trained,
        gathered_bytes=(max(layers.values(), default=0) + root) * compute, micro_tokens=tokens,
        activation_bytes=activations, logits_bytes=2 * tokens * mc["vocab_size"] * 4, checkpointing=checkpointing)


def plan_memory(cfg, role_key: str = "actor_infer", job: str = "generate",
                platform: str | None = None) -> MemoryPlan | None:
    """The plan for a vllm role whose model is a local folder; None when it cannot be computed. For
    `job="train"` a step is what `vroll train` asks: rollout_batch_size x num_return_sequences_in_group
    sequences of up to response_length new tokens. `platform` adds the KV cache vroll reserves there
    when the file sets none."""
    role = cfg.roles().get(role_key)
    if role is None or role.strategy_args is None or role.strategy_args.strategy_name != "vllm":
        return None
    model_dir, mc = local_model_config(role)
    if model_dir is None:
        return None
    sc = role.strategy_args.backend_args
    tp = int(sc.get("tensor_parallel_size", 1))
    dtype_bytes = DTYPES[role.model_args.dtype].bytes
    kv_dtype = str(sc.get("kv_cache_dtype", "auto"))
    kv_bytes = 1 if kv_dtype.startswith("fp8") else dtype_bytes
    heads = mc["num_attention_heads"]
    head_dim = mc.get("head_dim") or mc["hidden_size"] // heads
    kv_heads = max(mc.get("num_key_value_heads", heads) // tp, 1)
    kv_per_token = 2 * mc["num_hidden_layers"] * kv_heads * head_dim * kv_bytes
    params = count_parameters(model_dir)
    max_len = int(sc.get("max_model_len") or mc.get("max_position_embeddings", 0))
    budget = (engine_defaults(sc, platform) if platform else sc).get("kv_cache_memory_bytes")
    engines = engine_count(role)
    g = role.generating_args
    new_tokens, n = (cfg.response_length, cfg.num_return_sequences_in_group) if job == "train" \
        else (g.max_new_tokens, g.num_return_sequences)
    per_sequence = min(cfg.prompt_length + new_tokens, max_len) if max_len else cfg.prompt_length + new_tokens
    return MemoryPlan(
        role=role_key, parameters=params, weight_bytes=params * dtype_bytes // tp, kv_bytes_per_token=kv_per_token,
        kv_budget_bytes=budget, max_model_len=max_len, tokens_per_sequence=per_sequence,
        sequences_per_step=math.ceil(cfg.rollout_batch_size * n / engines),
    )
