"""Which strategies exist, what kind of role each can serve, and which ones vroll can run."""

from __future__ import annotations

from dataclasses import dataclass

from vroll.config.errors import UserError
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
    ]
)

# What each role needs from its strategy, by the role's key (rewards share "rewards").
ROLE_NEEDS = {"actor_infer": "generate", "actor_train": "train", "critic": "train", "reference": "forward", "rewards": "forward"}


class StrategyNotAvailable(UserError, RuntimeError):
    """The configuration names a strategy vroll knows but cannot run (yet, or for this role)."""


def role_need(role_name: str) -> str:
    return ROLE_NEEDS.get(role_name.split(".")[0], "forward")


def require_runnable(role_name: str, strategy_name: str | None) -> str:
    """The strategy's name when vroll can run it for this role; else StrategyNotAvailable naming the key."""
    info = STRATEGIES.get(strategy_name)
    key = f"{role_name}.strategy_args.strategy_name"
    if info is None:
        raise StrategyNotAvailable(f"{key}: unknown strategy {strategy_name!r}{closest(str(strategy_name), STRATEGIES)}")
    if not info.implemented:
        ready = sorted(n for n, i in STRATEGIES.items() if i.implemented)
        raise StrategyNotAvailable(f"{key}: strategy {strategy_name!r} is not implemented in vroll yet "
                                   f"(implemented: {', '.join(ready)})")
    if strategy_name == "hf_infer" and role_need(role_name) == "generate":
        raise StrategyNotAvailable(f"{key}: 'hf_infer' serves forward-only roles (reference, reward models) in "
                                   "vroll; use vllm to generate")
    return strategy_name
