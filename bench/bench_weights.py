"""Weight-update throughput against a plain in-process copy of the same bytes, and sleep/wake
times and resident memory, on a model large enough for the bytes to matter; then updates into an
engine in another process (a Ray actor on core 1, this process on core 0) through vLLM's weight-
transfer protocol with vroll's shared-memory transport (`vroll_shm`) and through Ray's object store.

    .venv/bin/python bench/bench_weights.py [--layers 8 --hidden 1024] [--no-ray]
    .venv/bin/python bench/bench_weights.py --model PATH [--no-ray]    # any Hugging Face folder (or .gguf)
    .venv/bin/python bench/bench_weights.py --model PATH --no-ray --threads 1 --clock cpu

`--threads 1 --clock cpu` times the in-process table in the CPU time of the one thread that does all
the work (`time.thread_time`): on a shared machine that figure does not move with the load.

Tied weights (a tied lm_head shares the embedding's storage) are counted and sent once, as the trainer
sends them (`Fsdp2TrainStrategy.named_weights` leaves a tied lm_head out).

Prints Markdown tables (ratios are what to compare; absolute times vary between machines).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import os
import statistics
import tempfile
import time

from common import alternate, vllm_role


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def unique_storages(state: dict) -> tuple[dict, list[str]]:
    """The state dict with each storage once (the first name keeps it), and the names left out: tied
    weights share one storage, are one parameter, and the trainer sends them once."""
    seen, kept, aliases = set(), {}, []
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            aliases.append(name)
        else:
            seen.add(key)
            kept[name] = tensor
    return kept, aliases


def state_bytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a Hugging Face folder (or a .gguf file, converted once) instead of the "
                                    "synthetic model of --layers x --hidden")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kv-mib", type=int, default=512)
    ap.add_argument("--no-ray", action="store_true", help="skip the engine-in-another-process table")
    ap.add_argument("--threads", type=int, help="torch threads of this process, its engine included "
                                                "(default: as vLLM sets them)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this thread's CPU time (use with --threads 1)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from vroll.config.schema import GeneratingArgs
    from vroll.models.tiny import TinySpec, build_tiny_model
    from vroll.strategy.vllm_strategy import VllmStrategy

    if args.model:
        from vroll.models.paths import resolve_model_path

        model_dir = resolve_model_path(args.model, "--model")
        described = f"{args.model}"
    else:
        spec = TinySpec(hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                        num_key_value_heads=max(args.hidden // 256, 1))
        model_dir = build_tiny_model(os.path.join(tempfile.gettempdir(), f"vroll-bench-{args.hidden}x{args.layers}"),
                                     spec)
        described = f"synthetic, hidden {args.hidden}, {args.layers} layers"
    role = vllm_role(model_dir, GeneratingArgs(max_new_tokens=8, temperature=0.0), kv_mib=args.kv_mib)
    engine = VllmStrategy(role, seed=0)
    if args.threads:
        from vroll.strategy.vllm_compat import set_thread_count

        set_thread_count(args.threads)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    state, aliases = unique_storages(hf.state_dict())
    nbytes = state_bytes(state)
    targets = {k: torch.empty_like(v) for k, v in state.items()}

    def plain_copy():
        for k, v in state.items():
            targets[k].copy_(v)

    def update(bucket_bytes, streamed):
        def go():
            engine.options = replace(engine.options, weight_update_bucket_bytes=bucket_bytes)
            engine.update_weights(iter(state.items()) if streamed else state)
        return go

    runs = {
        "plain tensor copy of the same bytes": plain_copy,
        "update_weights, whole state dict (validated first)": update(1 << 40, False),
        "update_weights, streamed in 64 MiB buckets": update(64 << 20, True),
        "update_weights, streamed in 16 MiB buckets": update(16 << 20, True),
    }
    times = alternate(runs, args.rounds, clock=time.thread_time if args.clock == "cpu" else None)
    base = statistics.median(times["plain tensor copy of the same bytes"])
    params = sum(t.numel() for t in state.values())
    tied = f"; tied, counted once: {', '.join(aliases)}" if aliases else ""
    print(f"\nmodel: {params / 1e6:.0f} M parameters, {nbytes / 2**20:.0f} MiB fp32 "
          f"({described}{tied}); {args.rounds} alternating rounds; {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads; {args.clock} clock\n")
    print("| in-process path | median time | GiB/s | time / plain copy |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med * 1e3:.0f} ms | {nbytes / med / 2**30:.2f} | {med / base:.1f}x |")

    print_generation_speed(engine, clock=time.thread_time if args.clock == "cpu" else time.perf_counter)

    # sleep / wake
    targets.clear()
    engine.options = replace(engine.options, weight_update_bucket_bytes=256 << 20)
    print(f"\nKV cache {engine.kv_cache_bytes() / 2**20:.0f} MiB, weights {engine.weight_bytes() / 2**20:.0f} MiB\n")
    print("| step | time | resident memory | released vs expected |")
    print("|---|---|---|---|")
    print(f"| awake | | {rss_mib():.0f} MiB | |")
    for level in (1, 2):
        (rep,) = engine.sleep(level)
        print(f"| sleep level {level} | {rep['seconds'] * 1e3:.0f} ms | {rss_mib():.0f} MiB | "
              f"{rep['released_bytes'] / 2**20:.0f} / {rep['expected_bytes'] / 2**20:.0f} MiB "
              f"({rep['released_bytes'] / rep['expected_bytes']:.0%}) |")
        t = time.perf_counter()
        if level == 2:
            engine.wake_up(tags=["weights"])
            engine.update_weights(state)
            engine.wake_up(tags=["kv_cache"])
            label = "wake (weights, update, KV cache)"
        else:
            engine.wake_up()
            label = "wake"
        print(f"| {label} | {(time.perf_counter() - t) * 1e3:.0f} ms | {rss_mib():.0f} MiB | |")
        engine.generate(["What is 1+2?"])
    engine.close()
    if not args.no_ray:
        bench_other_process(role, state, nbytes, args.rounds)


def print_generation_speed(engine, clock, rounds: int = 3) -> None:
    """Generated tokens per second of the engine as the updates left it (re-packed weights): an
    update path must not buy its speed with slower generation."""
    from vroll.config.schema import GeneratingArgs
    from vroll.data.arithmetic import make_problems

    g = GeneratingArgs(max_new_tokens=32, temperature=1.0, top_p=0.99, top_k=100, num_return_sequences=4,
                       ignore_eos=True)
    ids = [engine.tokenizer(p.question)["input_ids"] for p in make_problems(16, seed=1)]
    tokens = len(ids) * g.num_return_sequences * g.max_new_tokens
    times = alternate({"generate": lambda: engine.generate(ids, g)}, rounds, clock=clock)["generate"]
    print(f"\ngeneration after the updates: {len(ids)} prompts x n={g.num_return_sequences} x "
          f"{g.max_new_tokens} tokens, {tokens / statistics.median(times):.0f} tokens/s "
          f"(median of {rounds}, {clock.__name__})")


def bench_other_process(role, state: dict, nbytes: int, rounds: int) -> None:
    """One engine actor pinned to core 1, this process (the sender) to core 0; the paths alternate
    within one run, so the ratios compare. The in-process engine for reference starts afterwards:
    while it exists, its OpenMP threads (bound by vLLM to every core) slow the actor's core down."""
    import torch

    from vroll.roles.ray_engines import RayEngines
    from vroll.strategy import shm_transfer
    from vroll.strategy.transport import pack_bucket
    from vroll.strategy.vllm_strategy import VllmStrategy
    from vroll.strategy.weights import buckets

    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)  # one OpenMP thread per core: more would spin against each other
    targets = {k: torch.empty_like(v) for k, v in state.items()}
    remote = RayEngines(role.model_copy(update={"device_mapping": [1]}), seed=0)
    bucket_bytes = role.strategy_args.options.weight_update_bucket_bytes
    assert remote.transport() == "vroll_shm", remote.transport()

    def through(transport):
        def go():
            remote.transport = lambda: transport  # this instance only: the path under test
            remote.update_weights(state)
        return go

    def fresh_segments():
        remote._segments.close()  # what every update would cost without the pool
        through(shm_transfer.BACKEND)()

    pool, previous, refs = shm_transfer.SegmentPool(), [], []

    def write_segments():  # the sender's share, in the pool's steady state (two sets, alternating)
        nonlocal previous
        now = [pool.write(bucket, checksum=False) for bucket in buckets(state.items(), bucket_bytes)]
        pool.recycle(previous)
        previous = now

    def put_buckets():  # the object store's sender share: pack (no copy) and `ray.put` (one copy)
        import ray

        nonlocal refs
        refs = [ray.put(pack_bucket(bucket)[0]) for bucket in buckets(state.items(), bucket_bytes)]

    runs = {
        "plain tensor copy of the same bytes": lambda: [targets[k].copy_(v) for k, v in state.items()],
        "into an engine actor: vLLM protocol, `vroll_shm` (shared memory)": through(shm_transfer.BACKEND),
        "into an engine actor: Ray object store (before)": through("object_store"),
        "`vroll_shm` sender alone: buckets copied into the pool's segments": write_segments,
        "object store sender alone: buckets packed and `ray.put`": put_buckets,
    }
    times = alternate(runs, rounds)
    # not alternated: it empties the pool, so the `vroll_shm` run after it would start cold too
    times["into an engine actor: `vroll_shm`, fresh segments every update (no pool; run after the others)"] = \
        alternate({"fresh": fresh_segments}, rounds)["fresh"]
    assert shm_transfer.named_leftovers() == []
    pool.close()
    remote.close()
    local = VllmStrategy(role, seed=0)
    times["in-process `update_weights`, same core 0 (for reference; run last)"] = \
        alternate({"local": lambda: local.update_weights(state)}, rounds)["local"]
    local.close()
    base = statistics.median(times["plain tensor copy of the same bytes"])
    shm = statistics.median(times["into an engine actor: vLLM protocol, `vroll_shm` (shared memory)"])
    print(f"\nengine in another process, {nbytes / 2**20:.0f} MiB fp32, buckets of {bucket_bytes >> 20} MiB, "
          f"sender on core 0, engine actor on core 1; {rounds} alternating rounds\n")
    print("| path | median time | GiB/s | time / plain copy | time / `vroll_shm` |")
    print("|---|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med * 1e3:.0f} ms | {nbytes / med / 2**30:.2f} | {med / base:.1f}x | {med / shm:.2f} |")


if __name__ == "__main__":
    main()
