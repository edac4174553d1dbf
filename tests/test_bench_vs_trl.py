"""bench/bench_vs_trl.py's bookkeeping, without TRL: the settings it hands GRPOTrainer for the demo's
file, how optimiser-step times become rollout times, the prompt-order check, the checkpoint copy."""

import importlib.util
import sys
from pathlib import Path

from conftest import REPO


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_vs_trl", Path(REPO) / "bench" / "bench_vs_trl.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_vs_trl"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_demo_file_maps_to_the_same_rollout_and_optimiser_steps(tmp_path):
    b = bench_module()
    cfg = b.load_job(f"{REPO}/examples/rlvr_tiny.yaml", [])
    assert b.refusals(cfg) == []
    kw = b.trl_arguments(b.map_settings(cfg, steps=10, seed=3), tmp_path)
    # 16 prompts x 8 = 128 rows a rollout, 4 optimiser steps of 32 rows; TRL counts optimiser steps
    assert (kw["num_generations"], kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"],
            kw["steps_per_generation"], kw["max_steps"]) == (8, 32, 1, 4, 40)
    assert (kw["loss_type"], kw["scale_rewards"], kw["beta"], kw["delta"]) == ("bnpo", "group", 0.0, 1.4)
    assert (kw["epsilon"], kw["epsilon_high"], kw["top_k"], kw["seed"]) == (0.2, 0.2, 0, 3)
    assert kw["use_vllm"] is False and kw["shuffle_dataset"] is False and kw["bf16"] is False


def test_unmappable_settings_are_refused():
    b = bench_module()
    cfg = b.load_job(f"{REPO}/examples/rlvr_tiny.yaml", ["whiten_advantages=true"])
    assert any("whiten_advantages" in p for p in b.refusals(cfg))


def test_optimiser_step_times_group_into_rollouts():
    b = bench_module()
    stamps = [1.0, 2.0, 3.0, 4.0, 10.0, 11.0, 12.0, 13.0]
    assert b.seconds_per_rollout(0.5, stamps, 4) == [3.5, 9.0]
    assert b.after_first([3.5, 9.0, 7.0], [7.0, 18.0, 14.0]) == {"median": 8.0, "mean": 8.0, "cpu_median": 16.0,
                                                                 "steps": 2}


def test_cpu_seconds_of_this_process_grow():
    b = bench_module()
    import os

    before = b.cpu_seconds_of(os.getpid())
    sum(i * i for i in range(3_000_000))
    assert b.cpu_seconds_of(os.getpid()) > before


def test_prompt_order_check():
    b = bench_module()
    calls = [{"rows": [1, 0, 1, 0]}, {"rows": [2, 3, 3, 2]}]
    assert b.order_matches(calls, rollout_batch_size=2, group=2)
    assert not b.order_matches(calls[::-1], rollout_batch_size=2, group=2)
