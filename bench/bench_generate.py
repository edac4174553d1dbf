"""Generated tokens/s of the `vllm` strategy against plain `vllm.LLM.generate` and transformers'
`generate`, on the same prompts and sampling, in one process, runs alternating.

    .venv/bin/python bench/bench_generate.py --model models/tiny

Prints a Markdown table of medians and ratios (absolute times are noisy here; ratios are not).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics

from common import add_workload_args, alternate, vllm_role


def main() -> None:
    ap = argparse.ArgumentParser()
    add_workload_args(ap)
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()

    import torch
    from vllm import LLM

    from vroll.config.schema import GeneratingArgs
    from vroll.data.arithmetic import make_problems
    from vroll.strategy.sampling import request_seed, sampling_params
    from vroll.strategy.vllm_strategy import VllmStrategy, engine_kwargs

    g = GeneratingArgs(max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=0.99, top_k=100,
                       num_return_sequences=args.n, ignore_eos=True)
    role = vllm_role(args.model, g, kv_mib=512)
    strategy = VllmStrategy(role, seed=0)
    tok = strategy.tokenizer
    texts = [p.question for p in make_problems(args.prompts, seed=1)]
    ids = [tok(t)["input_ids"] for t in texts]
    plain = LLM(**engine_kwargs(role, 0, "cpu"))
    tokens = args.prompts * args.n * args.max_new_tokens

    def run_strategy():
        out = strategy.generate(ids, g)
        assert sum(len(s.token_ids) for r in out for s in r.samples) == tokens

    def run_plain(seeded: bool):
        def go():
            params = [sampling_params(g, request_seed(0, 0, i) if seeded else None) for i in range(len(ids))]
            out = plain.generate([{"prompt_token_ids": x} for x in ids], params, use_tqdm=False)
            assert sum(len(c.token_ids) for o in out for c in o.outputs) == tokens
        return go

    hf_model = None
    if not args.skip_hf:
        from transformers import AutoModelForCausalLM

        hf_model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
        batch = tok(texts, return_tensors="pt", padding=True, padding_side="left")

    def run_hf():
        with torch.no_grad():
            out = hf_model.generate(**batch, do_sample=True, temperature=1.0, top_p=0.99, top_k=100,
                                    num_return_sequences=args.n, max_new_tokens=args.max_new_tokens,
                                    min_new_tokens=args.max_new_tokens, repetition_penalty=1.0,
                                    pad_token_id=tok.pad_token_id)
        assert out.shape[0] * (out.shape[1] - batch["input_ids"].shape[1]) == tokens

    runs = {"vroll vllm strategy": run_strategy, "plain LLM.generate, same seeded params": run_plain(True),
            "plain LLM.generate, unseeded": run_plain(False)}
    if hf_model is not None:
        runs["transformers generate"] = run_hf
    times = alternate(runs, args.rounds)

    base = statistics.median(times["plain LLM.generate, unseeded"])
    print(f"\n{args.prompts} prompts x n={args.n} x {args.max_new_tokens} tokens (ignore_eos), fp32, "
          f"{args.rounds} alternating rounds, model {args.model}; machine: {platform.machine()}, "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}\n")
    print("| run | median tokens/s | ratio to plain vLLM (unseeded) |")
    print("|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {tokens / med:,.0f} | {base / med:.3f} |")
    strategy.close()


if __name__ == "__main__":
    main()
