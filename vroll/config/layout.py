"""How many engines or trainer ranks a role's `device_mapping` makes: pure functions of the file,
shared by validation, memory plans and the launcher (which decides where each one runs)."""

from __future__ import annotations

import os
from typing import Any

from vroll.config.errors import UserError


def devices_per_engine(engine_args: dict[str, Any]) -> int:
    """Devices one vLLM engine spans: tensor x pipeline parallelism."""
    return int(engine_args.get("tensor_parallel_size", 1)) * int(engine_args.get("pipeline_parallel_size", 1))


def engine_count(role) -> int:
    return max(len(role.device_mapping) // devices_per_engine(role.strategy_args.strategy_config), 1)


def trainer_ranks(role, platform: str) -> int:
    """Data-parallel ranks of a training role: one per GPU on CUDA; on CPU one per
    `cpu_threads_per_rank` slots (default: all slots, one rank in the calling process)."""
    slots = len(role.device_mapping) or 1
    if platform != "cpu":
        return slots
    per_rank = role.strategy_args.options.cpu_threads_per_rank if role.strategy_args else None
    return max(1, slots // (per_rank or slots))


def rollout_rows(cfg) -> int:
    """Responses one RL step trains on: rollout_batch_size prompts x the group size."""
    return cfg.rollout_batch_size * cfg.num_return_sequences_in_group


def rows_per_optimizer_step(cfg, ranks: int, role=None) -> int:
    """per_device_train_batch_size x gradient_accumulation_steps rows on each of a training role's
    ranks (actor_train's unless `role` is given)."""
    args = (role or cfg.actor_train).training_args
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * ranks


def optimizer_steps_per_rollout(cfg, ranks: int, role=None) -> int:
    return rollout_rows(cfg) // rows_per_optimizer_step(cfg, ranks, role)


def colocated(a, b) -> bool:
    """Two roles that share a device take turns on it (the engine sleeps while the trainer works)."""
    return a is not None and b is not None and bool(set(a.device_mapping) & set(b.device_mapping))


# CPU slots: on the CPU backend a device id names a CPU slot, and slot k runs on core k mod the
# machine's cores. A machine has one slot per core unless VROLL_CPU_SLOTS declares more (or fewer):
# a way to try a multi-rank layout (an engine and two trainer ranks on 3 slots) on a 2-core machine,
# where slots then share cores and take turns on them. Both the slots of this machine (what
# validation, placement and the local Ray's resources count) and the core of each slot (what a role
# pins to) are decided here.
SLOTS_VAR = "VROLL_CPU_SLOTS"


def local_cores() -> int:
    """CPU cores of this machine."""
    return os.cpu_count() or 1


def local_slots() -> int:
    """CPU slots of this machine (device ids on the CPU backend when no cluster is joined): one per
    core, or `VROLL_CPU_SLOTS`."""
    value = os.environ.get(SLOTS_VAR, "").strip()
    if not value:
        return local_cores()
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{SLOTS_VAR}={value!r}: must be a whole number of CPU slots, 1 or more (unset: one "
                        f"slot per core, {local_cores()} here)")
    return int(value)


def slot_cores(slots) -> list[int]:
    """The cores that CPU slots `slots` (this machine's, or a node's local ids) run on: slot k on core
    k mod the cores; slots beyond the cores share them."""
    cores = local_cores()
    return sorted({int(s) % cores for s in slots})


def shared_cores_note() -> str | None:
    """Why timings on this machine are not those of its slots, when VROLL_CPU_SLOTS declares more
    slots than it has cores (None otherwise)."""
    slots, cores = local_slots(), local_cores()
    if slots <= cores:
        return None
    return (f"{SLOTS_VAR}={slots} declares {slots} CPU slots on a machine with {cores} cores: slot k runs on core "
            f"k mod {cores}, so roles on slots {', '.join(f'{k} and {k % cores}' for k in range(cores, slots))} "
            "share a core and take turns on it; use it to try a layout, not to time one")
