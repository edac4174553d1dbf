"""Engines behind Ray against the same engine in-process: generation throughput (one engine, and
two data-parallel engines on two CPU slots) and the out-of-process weight update.

    .venv/bin/python bench/bench_cluster.py --model models/tiny

Prints Markdown tables of medians and ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

from common import add_workload_args, alternate, vllm_role


def role_for(model: str, mapping: list[int], g):
    return vllm_role(model, g, device_mapping=mapping)


def timed(fn, rounds):
    return alternate({"run": fn}, rounds)["run"]


def main() -> None:
    ap = argparse.ArgumentParser()
    add_workload_args(ap)
    args = ap.parse_args()

    from vroll.roles.ray_engines import RayEngines
    from vroll.config.schema import GeneratingArgs
    from vroll.data.arithmetic import make_problems
    from vroll.strategy.vllm_strategy import VllmStrategy

    g = GeneratingArgs(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.99, top_k=100,
                       num_return_sequences=args.n, ignore_eos=True)
    prompts = [p.question for p in make_problems(args.prompts, seed=1)]
    tokens = args.prompts * args.n * args.max_new_tokens

    # Generation: one engine behind Ray vs in-process (alternating), then two engines vs one. For a
    # fair comparison each engine gets one core: this process (and the in-process engine it starts)
    # is pinned to core 0, the Ray engine to core 1.
    import torch

    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)  # one OpenMP thread per core: more would spin against each other
    local = VllmStrategy(role_for(args.model, [0], g), seed=0)
    one = RayEngines(role_for(args.model, [1], g), seed=0)
    times = alternate({"in-process engine": lambda: local.generate(prompts, g),
                       "one engine behind Ray": lambda: one.generate(prompts, g)}, args.rounds)
    local.close()
    one.close()  # shuts its local Ray down
    os.sched_setaffinity(0, set(range(os.cpu_count())))
    two = RayEngines(role_for(args.model, [0, 1], g), seed=0)
    times["two engines behind Ray (cores 0 and 1)"] = timed(lambda: two.generate(prompts, g), args.rounds)
    base = statistics.median(times["in-process engine"])
    print(f"\n{args.prompts} prompts x n={args.n} x {args.max_new_tokens} tokens, fp32, {args.model}, "
          f"{os.cpu_count()} cores\n")
    print("| run | median tokens/s | ratio to in-process (one core each) |")
    print("|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {tokens / med:,.0f} | {base / med:.2f} |")
    two.close()

    # Weight update into an engine in another process (Ray object store) vs in-process.
    from transformers import AutoModelForCausalLM

    from vroll.models.tiny import TinySpec, build_tiny_model

    spec = TinySpec(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                    num_key_value_heads=4)
    mid = str(build_tiny_model(os.path.join(tempfile.gettempdir(), "vroll-bench-1024x8"), spec))
    state = dict(AutoModelForCausalLM.from_pretrained(mid, dtype=torch.float32).state_dict())
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    targets = {k: torch.empty_like(v) for k, v in state.items()}
    local = VllmStrategy(role_for(mid, [0], g), seed=0)
    up = {
        "plain tensor copy of the same bytes": lambda: [targets[k].copy_(v) for k, v in state.items()],
        "in-process update_weights": lambda: local.update_weights(state),
    }
    os.sched_setaffinity(0, {0})
    up_times = {k: timed(fn, 3) for k, fn in up.items()}
    local.close()
    remote = RayEngines(role_for(mid, [1], g), seed=0)  # this process keeps core 0
    up_times["update_weights into an engine actor (Ray object store)"] = timed(lambda: remote.update_weights(state), 3)
    remote.close()
    base = statistics.median(up_times["plain tensor copy of the same bytes"])
    print(f"\nweight update, {nbytes / 2**20:.0f} MiB fp32 model\n")
    print("| path | median time | GiB/s | time / plain copy |")
    print("|---|---|---|---|")
    for name, ts in up_times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med * 1e3:.0f} ms | {nbytes / med / 2**30:.2f} | {med / base:.1f}x |")


if __name__ == "__main__":
    main()
