"""fsdp2_train against a plain PyTorch loop doing the same work in the same run: a transformers model,
torch's AdamW, the same padded batch and token-mean loss. The ratio is what FSDP2 and the strategy's
bookkeeping cost on one rank.

    .venv/bin/python bench/bench_trainer.py [--model models/tiny-std] [--rows 32] [--length 36] [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics

import common  # noqa: F401 - shared benchmark environment


def batch(rows: int, length: int, vocab: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    for i in range(rows):  # left padding of varied width, as the RL batches have
        pad = int(torch.randint(0, length // 3, (1,), generator=g))
        ids[i, :pad], mask[i, :pad] = 0, 0
    return ids, mask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/tiny-std")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--length", type=int, default=36)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from vroll.config.schema import RoleConfig
    from vroll.models.logprobs import token_logprobs
    from vroll.strategy.fsdp2_train import Fsdp2TrainStrategy

    torch.set_num_threads(2)
    plain = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    plain.config.use_cache = False
    ids, mask = batch(args.rows, args.length, plain.config.vocab_size)
    target = (mask[:, 1:] * mask[:, :-1]).float()
    tokens = target.sum()

    def loss_fn(micro, logp, entropy):
        return -(logp * target).sum() / tokens, {}

    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-5, weight_decay=0.0)

    def plain_step():
        plain.train()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_fn(None, token_logprobs(plain, ids, mask), None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        optimizer.step()

    def plain_forward():
        with torch.no_grad():
            plain.eval()
            token_logprobs(plain, ids, mask)

    role = RoleConfig(model_args={"model_name_or_path": args.model, "dtype": "fp32",
                                  "disable_gradient_checkpointing": True},
                      strategy_args={"strategy_name": "fsdp2_train"},
                      training_args={"learning_rate": 1e-5, "per_device_train_batch_size": args.rows},
                      device_mapping=[0, 1], name="actor_train", seed=0)
    with Fsdp2TrainStrategy(role, total_steps=10 * args.rounds) as trainer:
        micro = [{"input_ids": ids, "attention_mask": mask}]
        times = common.alternate({
            "plain train step": plain_step,
            "fsdp2_train train_step": lambda: trainer.train_step(micro, loss_fn),
            "plain forward (log-probs)": plain_forward,
            "fsdp2_train batch_logprobs": lambda: trainer.batch_logprobs(ids, mask, batch_size=args.rows),
        }, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.rows} rows x {args.length} tokens, {args.model}, {args.rounds} rounds, 2 threads\n")
    print("| work | plain torch (s) | fsdp2_train (s) | fsdp2_train / plain |\n|---|---|---|---|")
    for what, a, b in (("train step", "plain train step", "fsdp2_train train_step"),
                       ("log-prob forward", "plain forward (log-probs)", "fsdp2_train batch_logprobs")):
        print(f"| {what} | {med[a]:.4f} | {med[b]:.4f} | {med[b] / med[a]:.2f}x |")


if __name__ == "__main__":
    main()
