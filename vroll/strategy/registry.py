"""Which strategies exist, what each can do, and `build_strategy` to start one for a role."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vroll.config.schema import RoleConfig


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
ROLE_NEEDS = {"actor_infer": "generate", "actor_train": "train", "reference": "forward", "rewards": "forward"}


class StrategyNotAvailable(RuntimeError):
    """The configuration names a strategy vroll knows but cannot run (yet, or on this platform)."""


def closest(name: str, options) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def build_strategy(role: RoleConfig, seed: int | None = None, ray_address: str | None = None,
                   devices_per_node: int | None = None, on_ray: bool = False, total_steps: int = 1,
                   model_path: str | None = None):
    """Start the backend a role names: one in-process engine, or one Ray actor per engine when
    `device_mapping` holds several engines (or `on_ray`, to place even one engine on its own
    devices); a trainer in-process, or one Ray actor per rank. Fails clearly for strategies that are
    not implemented."""
    seed = role.seed if seed is None else seed  # the file's top-level seed unless given
    name = role.strategy_args.strategy_name if role.strategy_args else None
    info = STRATEGIES.get(name)
    if info is None:
        raise StrategyNotAvailable(f"{role.name}: unknown strategy {name!r}{closest(str(name), STRATEGIES)}")
    if not info.implemented:
        ready = sorted(n for n, i in STRATEGIES.items() if i.implemented)
        raise StrategyNotAvailable(
            f"{role.name}.strategy_args.strategy_name: strategy {name!r} is not implemented in vroll yet "
            f"(implemented: {', '.join(ready)})"
        )
    if name == "hf_infer":
        if ROLE_NEEDS.get(role.name.split(".")[0]) == "generate":
            raise StrategyNotAvailable(f"{role.name}.strategy_args.strategy_name: 'hf_infer' serves forward-only "
                                       "roles (reference, reward models) in vroll; use vllm to generate")
        from vroll.strategy.hf_infer import HfInferStrategy

        return HfInferStrategy(role, seed=seed, reward_model=getattr(role, "reward_type", None) == "model")
    if name == "vllm":
        from vroll.strategy.vllm_args import devices_per_engine

        if len(role.device_mapping) > devices_per_engine(role.strategy_args.strategy_config) or ray_address or on_ray:
            from vroll.cluster.role_cluster import RoleCluster

            return RoleCluster(role, seed=seed, ray_address=ray_address, devices_per_node=devices_per_node)
        from vroll.strategy.vllm_strategy import VllmStrategy

        return VllmStrategy(role, seed=seed)
    if name == "fsdp2_train":
        from vroll.strategy.fsdp2_train import Fsdp2TrainStrategy, trainer_ranks
        from vroll.strategy.vllm_compat import current_platform_name

        platform = current_platform_name()
        ranks = trainer_ranks(role, platform)
        if ranks > 1:
            from vroll.cluster.train_cluster import TrainCluster

            return TrainCluster(role, ranks, seed=seed, total_steps=total_steps, model_path=model_path,
                                ray_address=ray_address, devices_per_node=devices_per_node, platform=platform)
        return Fsdp2TrainStrategy(role, seed=seed, total_steps=total_steps, model_path=model_path)
    raise AssertionError(f"strategy {name} marked implemented but not wired")
