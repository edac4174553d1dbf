"""Time per RL step split by phase, the share of weight sync and of sleep/wake, and weight sync
against a plain in-process copy of the same bytes (the memcpy bound), in the same run.

    .venv/bin/python bench/bench_rlvr.py examples/rlvr_tiny.yaml [--steps 6] [key=value ...]

Runs `vroll train` for a few steps into a scratch output_dir (no validation, no checkpoints), then
prints a Markdown table. The first step is left out (warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import common  # noqa: F401 - sets the in-process engine environment  # pyflakes: ignore

PHASES = ("wake", "generate", "sleep", "reward", "reference", "old_logprobs", "train", "weight_sync")


def copy_bound_seconds(model_dir: str, rounds: int = 5) -> tuple[float, int]:
    """Median seconds to copy the model's tensors into same-shaped buffers in this process."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    src = [p.detach() for p in model.state_dict().values()]
    dst = [torch.empty_like(t) for t in src]
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for d, s in zip(dst, src):
            d.copy_(s)
        times.append(time.perf_counter() - t)
    return statistics.median(times), sum(t.numel() * t.element_size() for t in src)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()

    from vroll.config import load_config
    from vroll.pipeline.rlvr import run_train

    out = tempfile.mkdtemp(prefix="bench_rlvr_")
    overrides = list(args.overrides) + [f"max_steps={args.steps}", f"output_dir={out}", "validation=null",
                                        f"save_steps={10**6}", "resume_from_checkpoint=false"]
    cfg = load_config(args.config, overrides)
    summary = run_train(cfg, source=args.config, progress=True)
    steps = [json.loads(line) for line in open(summary["metrics"])][1:]
    mean = {p: statistics.mean(s.get(f"time/{p}", 0.0) for s in steps) for p in PHASES}
    total = statistics.mean(s["time/step"] for s in steps)
    bound, nbytes = copy_bound_seconds(cfg.actor_train.model_args.model_name_or_path)
    print(f"\n{len(steps)} steps after warm-up, config {args.config} {' '.join(args.overrides)}\n")
    print("| phase | seconds per step | share of step |\n|---|---|---|")
    for p in PHASES:
        print(f"| {p} | {mean[p]:.3f} | {mean[p] / total:.1%} |")
    print(f"| **step** | {total:.3f} | 100% |")
    print(f"\nweight sync {mean['weight_sync'] * 1e3:.1f} ms for {nbytes / 2**20:.1f} MiB; plain in-process copy "
          f"{bound * 1e3:.2f} ms -> sync = {mean['weight_sync'] / bound:.1f}x the memcpy bound")
    print(f"sleep + wake share of a step: {(mean['sleep'] + mean['wake']) / total:.1%}")


if __name__ == "__main__":
    main()
