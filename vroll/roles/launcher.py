"""Where each role runs, decided in one place: in this process, or one Ray actor per engine or rank.

The pipeline asks for its roles (`launch_rlvr_roles`, `launch`) and never decides placement. The
rules, in order:
- a `vllm` role runs on Ray when its devices make several engines, when a cluster is joined
  (`ray_address`), or when it has devices of its own (not shared with the trainer): its engine then
  runs pinned to them while the trainer keeps to its own; otherwise it runs in this process;
- an `fsdp2_train` role runs on Ray when it has several ranks (`config.layout.trainer_ranks`); one
  rank trains in this process, pinned to the role's CPU slots when it has slots of its own;
- `hf_infer` roles (reference, reward models) run in this process.
"""

from __future__ import annotations

import logging
import os
from contextlib import ExitStack
from dataclasses import dataclass, field

from vroll.cluster.actors import watch_together
from vroll.cluster.pinning import affinity
from vroll.config.layout import colocated, devices_per_engine, trainer_ranks
from vroll.config.lora import lora_enabled
from vroll.config.passes import critic_enabled, reference_enabled
from vroll.config.schema import PipelineConfig, RewardConfig, RoleConfig
from vroll.config.strategies import require_runnable
from vroll.models.padding import left_pad
from vroll.roles.interfaces import Critic, ForwardModel, GenerationEngine, ScoringModel, Trainer
from vroll.roles.ray_engines import RayEngines
from vroll.roles.ray_role import RayRole
from vroll.roles.ray_trainer import RayTrainer
from vroll.strategy.fsdp2_train import Fsdp2TrainStrategy
from vroll.strategy.hf_infer import HfInferStrategy
from vroll.strategy.vllm_compat import current_platform_name
from vroll.strategy.vllm_strategy import VllmStrategy

log = logging.getLogger(__name__)


@dataclass
class Roles:
    """The running roles of an RL job."""

    infer: GenerationEngine
    train: Trainer | None = None
    reference: ForwardModel | None = None
    reward_models: dict[str, ScoringModel] = field(default_factory=dict)
    critic: Critic | None = None  # adv_estimator: gae
    sleep_level: int | None = None  # the engine sleeps at this level while the trainer works (shared devices)


def engines_on_ray(role: RoleConfig, ray_address: str | None, own_devices: bool) -> bool:
    several = len(role.device_mapping) > devices_per_engine(role.strategy_args.backend_args)
    return several or bool(ray_address) or own_devices


def launch_role(role: RoleConfig, *, seed: int | None = None, ray_address: str | None = None,
                devices_per_node: int | None = None, own_devices: bool = False, total_steps: int = 1,
                model_path: str | None = None, value_model: bool = False):
    """Start one role's backend where it runs (see the module's rules). `own_devices`: the role's
    devices are its own (not shared with another role), so its processes are pinned to them."""
    seed = role.seed if seed is None else seed  # the file's top-level seed unless given
    name = require_runnable(role.name, role.strategy_args.strategy_name if role.strategy_args else None)
    if name == "hf_infer":
        set_role_envs_here(role)
        return HfInferStrategy(role, seed=seed, reward_model=isinstance(role, RewardConfig) and role.reward_type == "model")
    platform = current_platform_name()
    if name == "vllm":
        if engines_on_ray(role, ray_address, own_devices):
            return RayEngines(role, seed, platform, ray_address=ray_address, devices_per_node=devices_per_node)
        set_role_envs_here(role)
        return VllmStrategy(role, seed=seed)
    ranks = trainer_ranks(role, platform)
    if ranks > 1:
        return RayTrainer(role, ranks, platform, seed=seed, total_steps=total_steps, model_path=model_path,
                          ray_address=ray_address, devices_per_node=devices_per_node, value_model=value_model)
    set_role_envs_here(role)
    return Fsdp2TrainStrategy(role, seed=seed, total_steps=total_steps, model_path=model_path, value_model=value_model)


def set_role_envs_here(role: RoleConfig) -> None:
    """A role that runs in this process has no process of its own for its system_envs (its Ray
    actors get them from their start): they are set here, where every role of this process sees them."""
    env = role.environment()
    if env:
        os.environ.update(env)
        log.info("%s runs in vroll's process: its system_envs (%s) are set there, for every role of the process",
                 role.name, ", ".join(sorted(env)))


def launch(cfg: PipelineConfig, role: RoleConfig, **kwargs):
    """`launch_role` with the file's seed and cluster (device slots per node of a joined cluster)."""
    per_node = cfg.num_gpus_per_node if cfg.ray_address else None
    return launch_role(role, seed=cfg.seed, ray_address=cfg.ray_address, devices_per_node=per_node, **kwargs)


def driver_pinned_to(role: RoleConfig, own_devices: bool) -> bool:
    """A one-rank CPU trainer with slots of its own keeps this process to them while it runs."""
    platform = current_platform_name()
    return own_devices and platform == "cpu" and trainer_ranks(role, platform) == 1


def launch_rlvr_roles(cfg: PipelineConfig, total_steps: int, model_path: str | None,
                      critic: tuple[int, str | None] = (1, None)) -> tuple[Roles, ExitStack]:
    """The engine, the trainer, the reference, the critic (gae; `critic`: its optimiser steps and
    checkpoint folder) and the reward models of `vroll train`; the stack closes them all (also
    when one of them fails to start)."""
    stack = ExitStack()
    shared = colocated(cfg.actor_infer, cfg.actor_train)
    try:
        infer = stack.enter_context(launch(cfg, cfg.actor_infer, own_devices=not shared))
        if driver_pinned_to(cfg.actor_train, own_devices=not shared):
            stack.enter_context(affinity(cfg.actor_train.device_mapping))
        train = stack.enter_context(launch(cfg, cfg.actor_train, total_steps=total_steps, model_path=model_path))
        # ROLL's rule: the reference runs only when a KL term (or enable_reference) asks for it; under
        # LoRA it is the trainer's model with its adapters off (no model of its own)
        reference = None
        if reference_enabled(cfg) and lora_enabled(cfg):
            reference = AdaptersOff(train)
        elif reference_enabled(cfg) and cfg.reference is not None:
            reference = stack.enter_context(launch(cfg, cfg.reference))
        value = None
        if critic_enabled(cfg):
            value = stack.enter_context(launch(cfg, cfg.critic, total_steps=critic[0], model_path=critic[1],
                                               value_model=True))
        reward_models = launch_reward_models(cfg, stack)
    except BaseException:
        stack.close()
        raise
    # the run needs every role: a call that waits for one also names another's dead process
    roles = [r.engine if isinstance(r, AsleepBetweenCalls) else r
             for r in (infer, train, reference, value, *reward_models.values())]
    watch_together(list({id(r.group): r.group for r in roles if isinstance(r, RayRole)}.values()))
    return Roles(infer, train, reference, reward_models, value, sleep_level(cfg)), stack


def sleep_level(cfg: PipelineConfig) -> int | None:
    """The level the engine sleeps at while the trainer works when the two share devices (the file's
    `sleep_level`, default 1 as in ROLL); None when the engine has devices of its own."""
    if not colocated(cfg.actor_infer, cfg.actor_train):
        return None
    return cfg.actor_infer.strategy_args.options.sleep_level


def launch_reward_models(cfg: PipelineConfig, stack: ExitStack) -> dict[str, ScoringModel | GenerationEngine]:
    """The model behind each `reward_type: model` worker and each LLM judge with `judge_model_type:
    inference`, and the top-level `reward_model` (ROLL's shared judge server) once for every judge with
    `judge_model_type: cluster` (rule workers need none: they score in this process, which takes
    their system_envs; so do cluster judges, which only ask the shared engine)."""
    models: dict[str, ScoringModel | GenerationEngine] = {}
    server = None
    for name, worker in cfg.rewards.items():
        if worker.reward_type == "model":
            models[name] = stack.enter_context(launch(cfg, worker))
        elif judge_engine(worker):
            models[name] = launch_judge(cfg, worker, stack)
        else:
            set_role_envs_here(worker)
            if cluster_judge(worker):
                if cfg.reward_model is None:
                    raise ValueError(f"rewards.{name}: judge_model_type: cluster needs the top-level reward_model")
                if server is None:
                    server = launch_judge(cfg, cfg.reward_model, stack)
                models[name] = server
    return models


def judge_engine(worker: RewardConfig) -> bool:
    return worker.reward_type == "llm_judge" and worker.judge_model_type == "inference"


def cluster_judge(worker: RewardConfig) -> bool:
    return worker.reward_type == "llm_judge" and worker.judge_model_type == "cluster"


def launch_judge(cfg: PipelineConfig, worker: RoleConfig, stack: ExitStack) -> GenerationEngine:
    """An LLM judge's model (an inference judge's own, or the reward_model cluster judges share) on
    vllm, always in engine processes of its own (on Ray, pinned to its device_mapping); where those
    devices are another role's (another judge's included), it sleeps between scorings."""
    engine = stack.enter_context(launch(cfg, worker, own_devices=True))
    return AsleepBetweenCalls(engine) if devices_of_other_roles(cfg, worker) & set(worker.device_mapping) else engine


def devices_of_other_roles(cfg: PipelineConfig, worker: RoleConfig) -> set[int]:
    """The devices of every role but `worker` that holds a model: the actor roles, the reference, the
    critic, the other reward models and judge engines, and the shared reward_model where a cluster
    judge starts it."""
    roles = [getattr(cfg, key) for key in ("actor_infer", "actor_train", "reference", "critic")]
    roles += [w for w in cfg.rewards.values() if w.reward_type == "model" or judge_engine(w)]
    if any(cluster_judge(w) for w in cfg.rewards.values()):
        roles.append(cfg.reward_model)
    return {d for role in roles if role is not None and role is not worker for d in role.device_mapping}


class AsleepBetweenCalls:
    """An engine that shares its devices with other roles: asleep at level 1 (its KV cache released,
    its weights kept, as ROLL keeps its judge) except while it generates."""

    def __init__(self, engine: GenerationEngine):
        self.engine = engine
        engine.sleep(1)

    def generate(self, prompts, generating_args=None, **kwargs):
        self.engine.wake_up()
        try:
            return self.engine.generate(prompts, generating_args, **kwargs)
        finally:
            self.engine.sleep(1)


class AdaptersOff:
    """ROLL's reference under LoRA: the trainer's own model with its LoRA adapters off, that is, the
    base model (`Trainer.batch_logprobs(disable_adapter=True)`); a `ForwardModel`, at temperature 1 as
    every reference."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def batch_logprobs(self, input_ids, attention_mask):
        """Per-token log-probs [B, L-1] of padded rows."""
        return self.trainer.batch_logprobs(input_ids, attention_mask, 1.0, disable_adapter=True)

    def sequence_logprobs(self, sequences, temperature: float = 1.0) -> list[list[float]]:
        ids, mask = left_pad([list(s) for s in sequences], self.trainer.tokenizer.pad_token_id or 0)
        logp = self.trainer.batch_logprobs(ids, mask, temperature, disable_adapter=True)
        return [logp[i, logp.shape[1] - len(s) + 1:].tolist() for i, s in enumerate(sequences)]
