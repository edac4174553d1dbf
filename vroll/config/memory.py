"""The memory / batch / context balance of a vllm role, computed before any engine starts.

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

from vroll.config.errors import Issue

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}


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


def count_parameters(model_dir: Path) -> int:
    """Sum of tensor sizes from the safetensors headers (no weights are read)."""
    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def plan_memory(cfg, role_key: str = "actor_infer") -> MemoryPlan | None:
    """The plan for a vllm role whose model is a local folder; None when it cannot be computed."""
    role = cfg.roles().get(role_key)
    if role is None or role.strategy_args is None or role.strategy_args.strategy_name != "vllm":
        return None
    model_dir = Path(role.model_args.model_name_or_path or "").expanduser()
    if not (model_dir / "config.json").is_file():
        return None
    mc = json.loads((model_dir / "config.json").read_text())
    mc = mc.get("text_config", mc)
    sc = role.strategy_args.strategy_config
    tp = int(sc.get("tensor_parallel_size", 1))
    dtype_bytes = DTYPE_BYTES[role.model_args.dtype]
    kv_dtype = str(sc.get("kv_cache_dtype", "auto"))
    kv_bytes = 1 if kv_dtype.startswith("fp8") else dtype_bytes
    heads = mc["num_attention_heads"]
    head_dim = mc.get("head_dim") or mc["hidden_size"] // heads
    kv_heads = max(mc.get("num_key_value_heads", heads) // tp, 1)
    kv_per_token = 2 * mc["num_hidden_layers"] * kv_heads * head_dim * kv_bytes
    params = count_parameters(model_dir)
    max_len = int(sc.get("max_model_len") or mc.get("max_position_embeddings", 0))
    budget = sc.get("kv_cache_memory_bytes")
    if budget is None and "gpu_memory_utilization" not in sc:
        from vroll.strategy.vllm_args import CPU_DEFAULT_KV_CACHE_BYTES
        from vroll.strategy.vllm_compat import current_platform_name

        budget = CPU_DEFAULT_KV_CACHE_BYTES if current_platform_name() == "cpu" else None
    engines = max(len(role.device_mapping) // tp // int(sc.get("pipeline_parallel_size", 1)), 1)
    g = role.generating_args
    per_sequence = min(cfg.prompt_length + g.max_new_tokens, max_len) if max_len else cfg.prompt_length + g.max_new_tokens
    return MemoryPlan(
        role=role_key, parameters=params, weight_bytes=params * dtype_bytes // tp, kv_bytes_per_token=kv_per_token,
        kv_budget_bytes=budget, max_model_len=max_len, tokens_per_sequence=per_sequence,
        sequences_per_step=math.ceil(cfg.rollout_batch_size * g.num_return_sequences / engines),
    )
