"""fsdp2_train against a plain PyTorch loop doing the same work in the same run: a transformers model,
torch's AdamW (its defaults), the same padded batch and token-mean loss. fsdp2_train runs twice: as
one rank runs it (the plain module, `fsdp2_train.shards`), and wrapped by FSDP2 as several ranks or a
mixed-precision policy run it, so the ratios show what the strategy and FSDP2 each cost on one rank.

    .venv/bin/python bench/bench_trainer.py [--model models/tiny-std] [--rows 32] [--length 36] [--rounds 20]
                                            [--cpu-time]

`--cpu-time` measures the process's CPU time on one thread instead of wall time on two: the work
done, which stays comparable on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import statistics
import time

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


def fsdp2_wrapped(role, total_steps: int):
    """fsdp2_train wrapped by FSDP2 on one rank, as several ranks run it (`shards` answers yes)."""
    from vroll.strategy import fsdp2_train

    decide = fsdp2_train.shards
    fsdp2_train.shards = lambda *_: True
    try:
        return fsdp2_train.Fsdp2TrainStrategy(role, total_steps=total_steps)
    finally:
        fsdp2_train.shards = decide


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/tiny-std")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--length", type=int, default=36)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--cpu-time", action="store_true", help="CPU time on one thread instead of wall time on two")
    args = ap.parse_args()
    threads = 1 if args.cpu_time else 2

    import torch
    from transformers import AutoModelForCausalLM

    from vroll.config.schema import RoleConfig
    from vroll.models.logprobs import token_logprobs
    from vroll.strategy.fsdp2_train import Fsdp2TrainStrategy

    torch.set_num_threads(threads)
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
                      device_mapping=list(range(threads)), name="actor_train", seed=0)
    micro = [{"input_ids": ids, "attention_mask": mask}]
    with Fsdp2TrainStrategy(role, total_steps=10 * args.rounds) as trainer, \
            fsdp2_wrapped(role, 10 * args.rounds) as wrapped:
        assert not trainer.sharded and wrapped.sharded
        times = common.alternate({
            "plain train": plain_step,
            "one rank train": lambda: trainer.train_step(micro, loss_fn),
            "FSDP2 train": lambda: wrapped.train_step(micro, loss_fn),
            "plain forward": plain_forward,
            "one rank forward": lambda: trainer.batch_logprobs(ids, mask, batch_size=args.rows),
            "FSDP2 forward": lambda: wrapped.batch_logprobs(ids, mask, batch_size=args.rows),
        }, args.rounds, time.process_time if args.cpu_time else None)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.rows} rows x {args.length} tokens, {args.model}, {args.rounds} rounds, {threads} thread(s), "
          f"{'CPU' if args.cpu_time else 'wall'} time\n")
    print("| work | plain torch (s) | fsdp2_train, one rank (s) | fsdp2_train, FSDP2-wrapped (s) "
          "| one rank / plain | FSDP2-wrapped / plain |\n|---|---|---|---|---|---|")
    for what in ("train", "forward"):
        a, b, c = med[f"plain {what}"], med[f"one rank {what}"], med[f"FSDP2 {what}"]
        print(f"| {'train step' if what == 'train' else 'log-prob forward'} | {a:.4f} | {b:.4f} | {c:.4f} "
              f"| {b / a:.2f}x | {c / a:.2f}x |")


if __name__ == "__main__":
    main()
