"""Typed `strategy_config` options: vroll's own keys of each strategy, with their defaults in one place.

A `strategy_config` mixes these with the backend's pass-through arguments (for vllm: the installed
vLLM's engine arguments, checked in `engine_args.py`). `StrategyArgs.options` parses them the same
way each time; the loader reports every bad value at load time, before anything starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from vroll.config.dtypes import DTYPES
from vroll.config.errors import Issue


def _positive(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def _flag(v) -> bool:
    return isinstance(v, bool)


@dataclass(frozen=True)
class VllmOptions:
    """vroll's keys of the `vllm` strategy (not vLLM engine arguments)."""

    sleep_level: int = 1  # when colocated: 1 releases the KV cache after generation, 2 the weights too (ROLL's default 1)
    prompt_overflow: str = "error"  # a prompt that cannot fit max_model_len: "error", "skip" or "truncate" (left)
    weight_update_bucket_bytes: int = 256 << 20  # peak extra memory of a streamed weight update
    weight_update_timeout_s: float = 600.0  # deadline of one update
    verify_weights: bool = False  # compare checksums of sent and received weights after each update
    engine_call_timeout_s: float = 1800.0  # deadline of any call to an engine actor (roles on Ray)


@dataclass(frozen=True)
class Fsdp2Options:
    """The keys of the `fsdp2_train` strategy: vroll's own, and ROLL's (no_effect.FSDP2_TRAIN names the
    ROLL keys vroll cannot honour yet; they are typed here all the same)."""

    cpu_threads_per_rank: int | None = None  # on CPU: slots per trainer rank (None: all slots, one rank)
    param_dtype: str | None = None  # compute dtype of forward and backward (None: model_args.dtype)
    reduce_dtype: str = "fp32"  # dtype of the gradient reduction
    # ROLL's keys with no effect here (no_effect.py says why)
    reshard_after_forward: bool | None = None
    offload_policy: bool = False
    fsdp_size: int = 1
    wrap_policy: dict | None = None
    apply_expert_patch: bool = False
    ep_size: int = 1
    efsdp_size: int = 1
    moe_use_grouped_mm: bool = False
    apply_tiled_mlp: bool = False
    tiled_num_shards: int = 4
    async_save_ckpt: bool = True
    save_only_model: bool = False
    reduce_scatter_during_grad_accumulation: bool = True
    use_batched_model_update: bool = False


@dataclass(frozen=True)
class NoOptions:
    """Strategies with no keys of vroll's own (their strategy_config is passed through untouched)."""


PROMPT_OVERFLOW = ("error", "skip", "truncate")
# a dtype as the file names it (bf16) or as torch / ROLL do (bfloat16, torch.bfloat16) -> the file's name
DTYPE_NAMES = {alias: name for name, d in DTYPES.items() for alias in (name, d.torch_name, f"torch.{d.torch_name}")}


def dtype_name(value) -> str | None:
    """The file's name of a dtype given in any of its spellings, or None."""
    return DTYPE_NAMES.get(str(value)) if value is not None else None


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1

# key -> (is the value allowed, what is allowed)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "sleep_level": (lambda v: v in (1, 2) and not isinstance(v, bool),
                    "use 1 (release the KV cache, keep weights) or 2 (release both)"),
    "prompt_overflow": (lambda v: v in PROMPT_OVERFLOW, f"use one of {PROMPT_OVERFLOW}"),
    "weight_update_bucket_bytes": (_positive, "a positive number"),
    "weight_update_timeout_s": (_positive, "a positive number"),
    "engine_call_timeout_s": (_positive, "a positive number"),
    "verify_weights": (_flag, "true or false"),
    "cpu_threads_per_rank": (_count, "a whole number >= 1"),
    "param_dtype": (lambda v: v is None or dtype_name(v) is not None, f"one of {', '.join(DTYPE_NAMES)}"),
    "reduce_dtype": (lambda v: dtype_name(v) is not None, f"one of {', '.join(DTYPE_NAMES)}"),
    "reshard_after_forward": (lambda v: v is None or isinstance(v, bool), "true, false or null"),
    "wrap_policy": (lambda v: v is None or isinstance(v, dict), "a mapping (ROLL's transformer_layer_cls_to_wrap, "
                                                                 "wrap_embeddings, wrap_lm_output, moe_experts)"),
    **{k: (_flag, "true or false") for k in ("offload_policy", "apply_expert_patch", "moe_use_grouped_mm",
                                             "apply_tiled_mlp", "async_save_ckpt", "save_only_model",
                                             "reduce_scatter_during_grad_accumulation", "use_batched_model_update")},
    **{k: (_count, "a whole number >= 1") for k in ("fsdp_size", "ep_size", "efsdp_size", "tiled_num_shards")},
}

OPTIONS: dict[str, type] = {"vllm": VllmOptions, "fsdp2_train": Fsdp2Options}
# Strategies whose whole strategy_config is vroll's own (no pass-through): other keys are errors.
CLOSED = {"fsdp2_train"}


def own_keys(strategy_name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(OPTIONS.get(strategy_name, NoOptions))]


def parse_options(strategy_name: str, cfg: dict[str, Any], path: str = "strategy_config") -> tuple[Any, list[Issue]]:
    """The strategy's typed options (a bad value falls back to its default) and the problems found."""
    cls = OPTIONS.get(strategy_name, NoOptions)
    keys = own_keys(strategy_name)
    values, issues = {}, []
    for key in keys:
        if key not in cfg:
            continue
        ok, allowed = _RULES[key]
        if ok(cfg[key]):
            values[key] = dtype_name(cfg[key]) if key in ("param_dtype", "reduce_dtype") else cfg[key]
        else:
            issues.append(Issue(f"{path}.{key}", f"{cfg[key]!r} is not allowed: {allowed}"))
    if strategy_name in CLOSED:
        issues += [Issue(f"{path}.{k}", f"unknown key for {strategy_name} (known: {', '.join(keys)})")
                   for k in cfg if k not in keys]
    return cls(**values), issues


def pass_through(strategy_name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The keys a strategy hands to its backend as they are (for vllm: engine arguments)."""
    own = set(own_keys(strategy_name))
    return {k: v for k, v in cfg.items() if k not in own}
