"""`strategy_config` of the vllm strategy: vLLM's own engine arguments plus vroll's keys.

Keys are checked against the installed vLLM's `EngineArgs`, so every argument that version
accepts works and a misspelt one is caught before any engine starts.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Literal

from vroll.config.errors import Issue
from vroll.strategy.registry import closest

# vroll's own keys (not engine arguments) with their defaults.
OWN_KEYS: dict[str, Any] = {
    "sleep_level": 1,  # 1: release the KV cache after generation; 2: release weights as well
    "prompt_overflow": "error",  # a prompt that cannot fit: "error", "skip" or "truncate" (left)
    "weight_update_bucket_bytes": 256 << 20,  # peak extra memory of a streamed weight update
    "weight_update_timeout_s": 600.0,  # deadline of one update
    "verify_weights": False,  # compare checksums of sent and received weights after each update
    "engine_call_timeout_s": 1800.0,  # deadline of any call to an engine actor (Ray roles)
}
PROMPT_OVERFLOW = ("error", "skip", "truncate")

# Engine arguments that vroll sets from elsewhere in the file: one source of truth for each.
MANAGED_KEYS = {
    "model": "model_args.model_name_or_path",
    "tokenizer": "model_args.model_name_or_path",
    "dtype": "model_args.dtype",
    "seed": "the top-level seed",
    "trust_remote_code": "model_args.trust_remote_code",
}

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

# On the CPU backend vLLM's default gpu_memory_utilization (0.92 of the NUMA node) usually fails
# at start-up on a shared machine; without either key vroll reserves this much KV cache instead.
CPU_DEFAULT_KV_CACHE_BYTES = 512 << 20


@functools.cache
def engine_arg_types() -> dict[str, Any]:
    from vllm.engine.arg_utils import EngineArgs

    # Annotations left as strings (forward references) are not checked here; vLLM checks them.
    return {f.name: (Any if isinstance(f.type, str) else f.type) for f in dataclasses.fields(EngineArgs)}


def _matches(value: Any, tp: Any) -> bool:
    """Loose runtime check of a YAML value against an EngineArgs annotation."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, t) for t in typing.get_args(tp))
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple, set) or tp in (list, tuple, set):
        return isinstance(value, (list, tuple))
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True  # callables, classes, configs: leave to vLLM


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_strategy_config(cfg: dict[str, Any], path: str, platform: str | None = None) -> list[Issue]:
    """All problems of a vllm `strategy_config`; platform checks when `platform` is given."""
    issues: list[Issue] = []
    known = engine_arg_types()
    for key, value in cfg.items():
        where = f"{path}.{key}"
        if key in MANAGED_KEYS:
            issues.append(Issue(where, f"is set by vroll from {MANAGED_KEYS[key]}; set it there instead"))
        elif key in OWN_KEYS:
            continue
        elif key not in known:
            hint = closest(key, list(known) + list(OWN_KEYS))
            issues.append(Issue(where, f"unknown vLLM engine argument{hint}"))
        elif not _matches(value, known[key]):
            issues.append(Issue(where, f"{value!r} is not allowed: expected {_describe(known[key])}"))

    sleep_level = cfg.get("sleep_level", 1)
    if sleep_level not in (1, 2) or isinstance(sleep_level, bool):
        issues.append(Issue(f"{path}.sleep_level", f"{sleep_level!r} is not allowed: use 1 (release the KV "
                                                   "cache, keep weights) or 2 (release both)"))
    overflow = cfg.get("prompt_overflow", "error")
    if overflow not in PROMPT_OVERFLOW:
        issues.append(Issue(f"{path}.prompt_overflow", f"{overflow!r} is not allowed: use one of {PROMPT_OVERFLOW}"))
    for key in ("weight_update_bucket_bytes", "weight_update_timeout_s", "engine_call_timeout_s"):
        v = cfg.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            issues.append(Issue(f"{path}.{key}", f"{v!r} is not allowed: a positive number"))
    if not isinstance(cfg.get("verify_weights", False), bool):
        issues.append(Issue(f"{path}.verify_weights", f"{cfg['verify_weights']!r} is not allowed: true or false"))
    util = cfg.get("gpu_memory_utilization")
    if isinstance(util, (int, float)) and not isinstance(util, bool) and not 0 < util <= 1:
        issues.append(Issue(f"{path}.gpu_memory_utilization", f"{util!r} is not allowed: a fraction in (0, 1]"))
    for key in ("tensor_parallel_size", "pipeline_parallel_size", "max_model_len", "max_num_seqs",
                "max_num_batched_tokens", "block_size"):
        v = cfg.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            issues.append(Issue(f"{path}.{key}", f"{v!r} is not allowed: must be at least 1"))
    if platform is not None:
        issues += check_platform(cfg, path, platform)
    return issues


def check_platform(cfg: dict[str, Any], path: str, platform: str) -> list[Issue]:
    """Values the given platform cannot run (measured: ../shared/ENVIRONMENT.md)."""
    issues = []
    block = cfg.get("block_size")
    if platform == "cpu" and isinstance(block, int) and block % 32 != 0:
        issues.append(Issue(
            f"{path}.block_size",
            f"{block} is not allowed on the CPU backend: its attention kernel needs a multiple of 32 "
            "(use 32 or 64; 16 is fine on GPUs)",
        ))
    return issues


def devices_per_engine(cfg: dict[str, Any]) -> int:
    return int(cfg.get("tensor_parallel_size", 1)) * int(cfg.get("pipeline_parallel_size", 1))


def split_strategy_config(cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(vroll's own options with defaults filled in, vLLM engine arguments)."""
    own = {k: cfg.get(k, d) for k, d in OWN_KEYS.items()}
    engine = {k: v for k, v in cfg.items() if k not in OWN_KEYS}
    return own, engine
