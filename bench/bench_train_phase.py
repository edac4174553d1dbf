"""The RL step's trainer phases (old log-probs, train) on real rollouts, timed apart from generation,
so that two trees can be compared on the same batches:

    .venv/bin/python bench/bench_train_phase.py capture /tmp/rollouts.pt [examples/rlvr_tiny.yaml] [--steps 3]
    PYTHONPATH=<tree> .venv/bin/python bench/bench_train_phase.py time /tmp/rollouts.pt [--cpu-time] [--rounds 2]

`capture` runs `vroll train` for a few steps and keeps each step's batch as the train phase received
it; `time` replays them through a fresh trainer with whichever vroll is importable and prints one
JSON line of seconds per rollout. `--cpu-time`: the process's CPU time on one thread (the work done,
comparable on a shared machine) instead of wall time on the role's threads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import common  # noqa: F401 - sets the in-process engine environment


def capture(config: str, steps: int, path: str) -> None:
    """Run the config for `steps` steps, saving every batch handed to the PPO update."""
    import torch

    from vroll.config import load_config
    from vroll.pipeline import rlvr

    batches, update = [], rlvr.ppo_update

    def kept(cfg, roles, batch, step, temperature):
        batches.append({k: v.clone() for k, v in batch.items()})
        return update(cfg, roles, batch, step, temperature)

    rlvr.ppo_update = kept
    cfg = load_config(config, [f"max_steps={steps}", f"output_dir={tempfile.mkdtemp(prefix='bench_phase_')}",
                               "validation=null", f"save_steps={10**6}", "resume_from_checkpoint=false"])
    rlvr.run_train(cfg, source=config, progress=True)
    torch.save({"config": config, "batches": batches}, path)


def replay(path: str, rounds: int, cpu_time: bool) -> dict:
    """Seconds per rollout of `batch_logprobs` (the old log-probs) and of the PPO update."""
    import inspect

    import torch

    from vroll.config import load_config
    from vroll.config.sampling import rollout_args
    from vroll.pipeline import rlvr
    from vroll.strategy.fsdp2_train import Fsdp2TrainStrategy

    saved = torch.load(path)
    batches = saved["batches"]
    cfg = rlvr.with_train_defaults(load_config(saved["config"], []))
    role = cfg.actor_train.model_copy(deep=True)
    if cpu_time:
        role.device_mapping = [0]
    clock = time.process_time if cpu_time else time.perf_counter
    temperature = rollout_args(cfg).temperature
    seconds = {"old_logprobs": 0.0, "train": 0.0}
    with Fsdp2TrainStrategy(role, seed=cfg.seed, total_steps=1000) as trainer:
        # trees before prompt sharing have no prompt_width
        shares = "prompt_width" in inspect.signature(trainer.batch_logprobs).parameters
        if shares:
            from vroll.models.padding import prompt_width
        for _ in range(rounds):
            for step, batch in enumerate(batches, 1):
                width = {"prompt_width": prompt_width(batch["response_mask"])} if shares else {}
                t = clock()
                trainer.batch_logprobs(batch["input_ids"], batch["attention_mask"], temperature, **width)
                seconds["old_logprobs"] += clock() - t
                t = clock()
                rlvr.optimizer_steps(cfg, trainer, cfg.actor_train, batch, cfg.ppo_epochs, step,
                                     lambda sizes: rlvr.policy_loss(cfg, sizes), "mask", "train", temperature)
                seconds["train"] += clock() - t
        threads = torch.get_num_threads()
    return {**{k: v / (rounds * len(batches)) for k, v in seconds.items()}, "threads": threads,
            "clock": "cpu" if cpu_time else "wall"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("capture", "time"))
    ap.add_argument("path")
    ap.add_argument("config", nargs="?", default="examples/rlvr_tiny.yaml")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cpu-time", action="store_true")
    args = ap.parse_args()
    if args.mode == "capture":
        capture(args.config, args.steps, args.path)
    else:
        print(json.dumps(replay(args.path, args.rounds, args.cpu_time)))


if __name__ == "__main__":
    main()
