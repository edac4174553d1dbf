"""Which strategies exist, what kind of role each can serve, which ones vroll can run, and the vroll
strategy that runs a role ROLL gives a strategy vroll lacks (`use_vroll_strategies`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vroll.config.errors import UserError
from vroll.config.options import own_keys
from vroll.config.suggest import closest


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    kinds: frozenset[str]  # "generate", "forward", "train"
    implemented: bool


def _info(name, kinds, implemented=False):
    return name, StrategyInfo(name, frozenset(kinds), implemented)


STRATEGIES: dict[str, StrategyInfo] = dict(
    [
        _info("vllm", {"generate", "forward"}, implemented=True),
        _info("hf_infer", {"generate", "forward"}, implemented=True),
        _info("sglang", {"generate", "forward"}),
        _info("megatron_infer", {"forward"}),
        _info("deepspeed_infer", {"forward"}),
        _info("megatron_train", {"train", "forward"}),
        _info("deepspeed_train", {"train", "forward"}),
        _info("fsdp2_train", {"train"}, implemented=True),
        _info("fsdp2_infer", {"forward"}, implemented=True),  # read as hf_infer (roll_compat.py)
    ]
)
# what a role needs -> the vroll strategy that runs it when the file names one vroll lacks
VROLL_STRATEGY = {"train": "fsdp2_train", "forward": "hf_infer", "generate": "vllm"}
# strategy_config keys of SGLang that vllm reads under another name
SGLANG_TO_VLLM = {"mem_fraction_static": "gpu_memory_utilization", "tp_size": "tensor_parallel_size",
                  "tensor_parallel_size": "tensor_parallel_size", "context_length": "max_model_len",
                  "load_format": "load_format"}
FLAG = "--use-vroll-strategies"

# What each role needs from its strategy, by the role's key (rewards share "rewards").
ROLE_NEEDS = {"actor_infer": "generate", "actor_train": "train", "critic": "train", "reference": "forward", "rewards": "forward",
              "reward_model": "generate"}


class StrategyNotAvailable(UserError, RuntimeError):
    """The configuration names a strategy vroll knows but cannot run (yet, or for this role)."""


def role_need(role_name: str) -> str:
    return ROLE_NEEDS.get(role_name.split(".")[0], "forward")


def vroll_strategy(role_name: str, strategy_name: str | None) -> str | None:
    """The vroll strategy to run this role on, when the file names a known one vroll cannot run."""
    info = STRATEGIES.get(strategy_name)
    if info is None or info.implemented:
        return None
    return VROLL_STRATEGY[role_need(role_name)]


def not_available(role_name: str, strategy_name: str) -> str:
    """Why a known strategy cannot run the role, and the exact override that runs it on vroll's."""
    new = vroll_strategy(role_name, strategy_name)
    return (f"strategy {strategy_name!r} is not available in vroll; run the role on {new} with the overrides "
            f"`{role_name}.strategy_args.strategy_name={new} {role_name}.strategy_args.strategy_config=null` "
            f"(`vroll validate {FLAG}` applies every such override, keeping the strategy_config keys {new} reads)")


def use_vroll_strategies(raw: dict[str, Any]) -> list[str]:
    """Run every role whose strategy vroll lacks on vroll's (in `raw`, in place): the changes, one line each.
    strategy_config keys the new strategy does not read are dropped (sglang's memory fraction, parallel
    size and context length are renamed for vllm)."""
    roles = {k: raw[k] for k in ("actor_train", "actor_infer", "reference", "critic", "reward_model")
             if isinstance(raw.get(k), dict)}
    if isinstance(raw.get("rewards"), dict):
        roles.update({f"rewards.{k}": v for k, v in raw["rewards"].items() if isinstance(v, dict)})
    changes = []
    for path, role in roles.items():
        strategy = role.get("strategy_args")
        old = strategy.get("strategy_name") if isinstance(strategy, dict) else None
        new = vroll_strategy(path, old)
        if new is None:
            continue
        config = strategy.get("strategy_config") or {}
        kept = {k: v for k, v in config.items() if k in own_keys(new)}
        if old == "sglang" and new == "vllm":
            kept.update({SGLANG_TO_VLLM[k]: v for k, v in config.items() if k in SGLANG_TO_VLLM})
        strategy.update(strategy_name=new, strategy_config=kept)
        change = f"{path}.strategy_args.strategy_name={new} (was {old})"
        dropped = sorted(set(config) - set(kept) - set(SGLANG_TO_VLLM if new == "vllm" else ()))
        renamed = sorted(f"{k}->{SGLANG_TO_VLLM[k]}" for k in config if new == "vllm" and k in SGLANG_TO_VLLM
                         and SGLANG_TO_VLLM[k] != k)
        if renamed:
            change += f"; renamed strategy_config {', '.join(renamed)}"
        if dropped:
            change += f"; dropped {old}'s strategy_config keys {', '.join(dropped)}"
        changes.append(change)
    return changes


def require_runnable(role_name: str, strategy_name: str | None) -> str:
    """The strategy's name when vroll can run it for this role; else StrategyNotAvailable naming the key."""
    info = STRATEGIES.get(strategy_name)
    key = f"{role_name}.strategy_args.strategy_name"
    if info is None:
        raise StrategyNotAvailable(f"{key}: unknown strategy {strategy_name!r}{closest(str(strategy_name), STRATEGIES)}")
    if not info.implemented:
        raise StrategyNotAvailable(f"{key}: {not_available(role_name, strategy_name)}")
    if strategy_name == "hf_infer" and role_need(role_name) == "generate":
        raise StrategyNotAvailable(f"{key}: 'hf_infer' serves forward-only roles (reference, reward models) in "
                                   "vroll; use vllm to generate")
    return strategy_name
