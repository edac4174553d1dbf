"""What the benchmark scripts share: an in-process engine environment and a CPU-sized vllm role."""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def vllm_role(model: str, generating_args, device_mapping=(0,), kv_mib: int = 256):
    """A fp32 `actor_infer` role on the CPU backend (eager, fixed KV cache) for `model`."""
    from vroll.config.schema import ModelArgs, RoleConfig, StrategyArgs

    sc = {"block_size": 32, "max_model_len": 256, "kv_cache_memory_bytes": kv_mib << 20, "enforce_eager": True}
    return RoleConfig(model_args=ModelArgs(model_name_or_path=str(model), dtype="fp32"),
                      generating_args=generating_args, device_mapping=list(device_mapping),
                      strategy_args=StrategyArgs(strategy_name="vllm", strategy_config=sc), name="actor_infer")


def alternate(runs: dict, rounds: int, clock=None) -> dict[str, list[float]]:
    """Seconds of each run per round, after one warm-up; runs alternate so that machine noise hits
    them all alike. `clock`: wall time (default), or e.g. `time.process_time` for the CPU time."""
    import time

    clock = clock or time.perf_counter
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t = clock()
            fn()
            times[name].append(clock() - t)
    return times


def add_workload_args(ap, rounds: int = 5) -> None:
    """The rollout workload every generation benchmark takes: prompts x n x max-new-tokens."""
    ap.add_argument("--model", default="models/tiny")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=rounds)
