"""vroll against Hugging Face TRL's GRPOTrainer on the same RL job: time per step and held-out accuracy.

    .venv/bin/python bench/bench_vs_trl.py examples/rlvr_tiny.yaml [--steps 100] [--seeds 0 1] [--out DIR]
                                           [--threads 2] [key=value ...]

For each seed, TRL (`pip install -r bench/requirements-trl.txt`, never imported by vroll) trains the
file's model on the file's prompts, in the order vroll's sampler draws them, with vroll's own reward
workers, transformers generation (no vLLM) and every setting mapped from the file; then `vroll train
FILE` runs as a CLI subprocess with the same seed and steps. Both final models are judged by the same
`vroll evaluate FILE` (the file's `validation` section, greedy). A step is one rollout (rollout_batch_size
prompts x num_return_sequences_in_group responses) with all the optimiser steps it makes; times are
wall-clock between the ends of consecutive steps, the first step (start-up, warm-up) left out. Both
runs are held to the same cores (`--threads`). Writes bench_vs_trl.md and bench_vs_trl.json under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# No network: everything is local (the model folder, the data files), and nothing reports anywhere.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class Mapped:
    """One row of the settings table: a vroll key and its value, the TRL argument it becomes."""

    vroll_key: str
    vroll_value: object
    trl_arg: str
    trl_value: object
    note: str = ""


# -- what the job is, and what TRL is told ----------------------------------------------------------
def load_job(path: str, overrides: list[str]):
    """The vroll file as `vroll train` reads it (overrides included)."""
    from vroll.config import load_config

    return load_config(path, overrides)


def refusals(cfg) -> list[str]:
    """Settings of the file this comparison cannot map onto GRPOTrainer: it would not be the same job."""
    out = []
    if cfg.adv_estimator != "grpo":
        out.append(f"adv_estimator: {cfg.adv_estimator} (TRL's GRPOTrainer has group advantages only)")
    if cfg.pg_variant != "ppo":
        out.append(f"pg_variant: {cfg.pg_variant} (only ppo's clipped surrogate is mapped)")
    if cfg.add_token_level_kl and cfg.init_kl_coef > 0:
        out.append("add_token_level_kl with init_kl_coef > 0 (TRL has no KL reward penalty, only a KL loss)")
    if cfg.whiten_advantages:
        out.append("whiten_advantages: true (TRL has no advantage whitening)")
    if cfg.loss_agg_mode == "seq-mean-token-sum":
        out.append("loss_agg_mode: seq-mean-token-sum (no TRL loss_type sums tokens and averages sequences)")
    if getattr(cfg, "critic", None) is not None:
        out.append("a critic (TRL's GRPOTrainer has none)")
    return out


def loss_type_for(cfg, grad_accum: int) -> tuple[str, str]:
    """TRL's `loss_type` for vroll's `loss_agg_mode`, and how exact the match is."""
    mode = cfg.loss_agg_mode
    if mode == "token-mean":
        if grad_accum == 1:
            return "bnpo", ("exact: both divide the step's summed token losses by the step's response tokens "
                            "(TRL's 'dapo' divides by the rollout's tokens / steps per rollout instead)")
        return "dapo", ("approximate: with gradient accumulation TRL's 'dapo' divides by the rollout's tokens / "
                        "optimiser steps per rollout, vroll by the optimiser step's own tokens")
    if mode == "seq-mean-token-mean":
        return "grpo", "exact with one micro-batch per step; else TRL averages micro-batch means"
    if mode == "seq-mean-token-sum-norm":
        return "dr_grpo", "TRL divides by max_completion_length, vroll by the padded width of the step"
    raise ValueError(f"loss_agg_mode {mode!r} has no TRL loss_type")


def rows_per_optimizer_step(cfg) -> tuple[int, int]:
    """(rows per micro-batch, micro-batches per optimiser step) of vroll's trainer, over all its ranks."""
    from vroll.config.layout import trainer_ranks

    args = cfg.actor_train.training_args
    ranks = trainer_ranks(cfg.actor_train, "cpu")
    return args.per_device_train_batch_size * ranks, args.gradient_accumulation_steps


def map_settings(cfg, steps: int, seed: int) -> list[Mapped]:
    """Every GRPOConfig argument that carries a setting of the vroll file, with its vroll key."""
    from vroll.config.layout import rollout_rows

    t, g = cfg.actor_train.training_args, cfg.actor_infer.generating_args
    micro, accum = rows_per_optimizer_step(cfg)
    rollout = rollout_rows(cfg)
    per_rollout = rollout // (micro * accum)
    loss_type, loss_note = loss_type_for(cfg, accum)
    low, high = (cfg.pg_clip_low, cfg.pg_clip_high) if cfg.use_pg_clip_range else (cfg.pg_clip, cfg.pg_clip)
    rows = [
        Mapped("pretrain", cfg.actor_train.model_args.model_name_or_path, "model",
               cfg.actor_train.model_args.model_name_or_path, "the same folder, loaded fp32 by both"),
        Mapped("seed", seed, "seed / data_seed", seed, "the random streams differ all the same"),
        Mapped("max_steps", steps, "max_steps", steps * per_rollout * cfg.ppo_epochs,
               "TRL counts optimiser steps, vroll rollouts"),
        Mapped("num_return_sequences_in_group", cfg.num_return_sequences_in_group, "num_generations",
               cfg.num_return_sequences_in_group),
        Mapped("rollout_batch_size x group", f"{cfg.rollout_batch_size} x {cfg.num_return_sequences_in_group}",
               "generation_batch_size", rollout, "rows generated per rollout"),
        Mapped("per_device_train_batch_size x ranks", micro, "per_device_train_batch_size", micro,
               "TRL runs one process"),
        Mapped("gradient_accumulation_steps", accum, "gradient_accumulation_steps", accum),
        Mapped("(rollout rows / rows per optimiser step)", per_rollout, "steps_per_generation", per_rollout * accum,
               f"{per_rollout} optimiser steps of {micro * accum} rows per rollout in both"),
        Mapped("ppo_epochs", cfg.ppo_epochs, "num_iterations", cfg.ppo_epochs),
        Mapped("response_length", cfg.response_length, "max_completion_length", cfg.response_length),
        Mapped("actor_infer.generating_args.temperature", g.temperature, "temperature", g.temperature),
        Mapped("actor_infer.generating_args.top_p", g.top_p, "top_p", g.top_p),
        Mapped("actor_infer.generating_args.top_k", g.top_k, "top_k", max(g.top_k, 0), "both mean: no top-k"
               if g.top_k <= 0 else ""),
        Mapped("actor_infer.generating_args.repetition_penalty", g.repetition_penalty, "repetition_penalty",
               g.repetition_penalty),
        Mapped("actor_train.training_args.learning_rate", t.learning_rate, "learning_rate", t.learning_rate),
        Mapped("actor_train.training_args.lr_scheduler_type", t.lr_scheduler_type, "lr_scheduler_type",
               t.lr_scheduler_type if t.warmup_steps == 0 or t.lr_scheduler_type != "constant"
               else "constant_with_warmup"),
        Mapped("actor_train.training_args.warmup_steps", t.warmup_steps, "warmup_steps", t.warmup_steps),
        Mapped("actor_train.training_args.weight_decay", t.weight_decay, "weight_decay", t.weight_decay,
               "TRL exempts biases and norms from decay" if t.weight_decay else ""),
        Mapped("actor_train.training_args.adam_beta1 / adam_beta2", f"{t.adam_beta1} / {t.adam_beta2}",
               "adam_beta1 / adam_beta2", f"{t.adam_beta1} / {t.adam_beta2}"),
        Mapped("(torch.optim.AdamW, eps 1e-8)", "AdamW", "optim", "adamw_torch", "the same optimiser class"),
        Mapped("actor_train.training_args.max_grad_norm", t.max_grad_norm, "max_grad_norm", t.max_grad_norm),
        Mapped("pg_clip" + (" (pg_clip_low)" if cfg.use_pg_clip_range else ""), low, "epsilon", low),
        Mapped("pg_clip" + (" (pg_clip_high)" if cfg.use_pg_clip_range else ""), high, "epsilon_high", high),
        Mapped("dual_clip_loss", cfg.dual_clip_loss, "delta", 1 + 2 * cfg.pg_clip if cfg.dual_clip_loss else None,
               "TRL's two-sided clip caps the ratio at delta: for A < 0 the loss is capped at -A x delta, "
               "vroll's dual clip (bound 1 + 2 x pg_clip); equal when delta > 1 + epsilon_high"
               if cfg.dual_clip_loss else ""),
        Mapped("importance_sampling", cfg.importance_sampling, "importance_sampling_level",
               "sequence" if cfg.importance_sampling == "seq" else "token"),
        Mapped("init_kl_coef / use_kl_loss", f"{cfg.init_kl_coef} / {cfg.use_kl_loss}", "beta",
               cfg.kl_loss_coef if cfg.use_kl_loss else 0.0,
               "k3 loss in both" if cfg.use_kl_loss else "no KL term: neither starts a reference model"),
        Mapped("loss_agg_mode", cfg.loss_agg_mode, "loss_type", loss_type, loss_note),
        Mapped("adv_estimator (group mean and std)", cfg.adv_estimator, "scale_rewards", "group",
               "(r - group mean) / (unbiased group std + eps): eps 1e-6 in vroll, 1e-4 in TRL"),
        Mapped("rewards (weights)", ", ".join(f"{n} x {c.weight}" for n, c in cfg.rewards.items()), "reward_funcs",
               "[vroll RewardRouter]", "vroll's own reward workers, routed and weighted by vroll"),
        Mapped("actor_train.model_args.dtype", cfg.actor_train.model_args.dtype, "bf16 / fp16", "False / False",
               "fp32 in both"),
        Mapped("actor_train.model_args.disable_gradient_checkpointing",
               cfg.actor_train.model_args.disable_gradient_checkpointing, "gradient_checkpointing",
               not cfg.actor_train.model_args.disable_gradient_checkpointing),
        Mapped("actor_train.data_args.file_name", cfg.actor_train.data_args.file_name, "train_dataset",
               "the same prompts in vroll's sampler order", "shuffle_dataset=False; prompts rendered by vroll"),
        Mapped("actor_infer.strategy_args.strategy_name", cfg.actor_infer.strategy_args.strategy_name, "use_vllm",
               False, "TRL generates with transformers on the training model"),
    ]
    return rows


def trl_arguments(rows: list[Mapped], out_dir: Path) -> dict:
    """GRPOConfig's keyword arguments: the mapped settings plus CPU, offline and quiet settings."""
    skip = {"model", "train_dataset", "reward_funcs", "generation_batch_size", "use_vllm"}
    kwargs = {}
    for r in rows:
        if r.trl_arg in skip:
            continue
        if r.trl_arg == "seed / data_seed":
            kwargs.update(seed=r.trl_value, data_seed=r.trl_value)
        elif r.trl_arg == "adam_beta1 / adam_beta2":
            b1, b2 = (float(x) for x in str(r.trl_value).split(" / "))
            kwargs.update(adam_beta1=b1, adam_beta2=b2)
        elif r.trl_arg == "bf16 / fp16":
            kwargs.update(bf16=False, fp16=False)
        else:
            kwargs[r.trl_arg] = r.trl_value
    kwargs.update(output_dir=str(out_dir), use_vllm=False, use_cpu=True, shuffle_dataset=False,
                  report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
                  dataloader_num_workers=0, remove_unused_columns=False, log_completions=False,
                  mask_truncated_completions=False, reward_weights=[1.0], min_p=None)
    return kwargs


def differences(cfg, trl_flush_denormal: bool = False) -> list[str]:
    """What stays different between the two runs after the mapping."""
    out = [
        "Denormal floats: vroll's trainer flushes them to zero (torch.set_flush_denormal(True), for CPU speed); "
        + ("the benchmark set the same for TRL (--trl-flush-denormal)." if trl_flush_denormal else
           "TRL runs with torch's default (--trl-flush-denormal gives it the same)."),
        "Generation: vroll samples with vLLM (CPU backend), TRL with transformers `generate` on the training "
        "model (`use_vllm=False`); vroll also sleeps/wakes the engine and pushes weights into it each step.",
        "Random streams: vroll seeds each prompt's sampling from (seed, step, prompt); TRL seeds torch once. The "
        "responses, and so the runs, differ from the first step although the settings match.",
        "Mini-batch order: both shuffle the rollout's rows before splitting them into optimiser steps, each with "
        "its own generator.",
        "Old log-probs: both recompute them with the trainer before the optimiser steps of a rollout (vroll: more "
        "than one optimiser step per rollout; TRL: gradient_accumulation_steps is not a multiple of "
        "steps_per_generation x num_iterations).",
        "Advantages: eps 1e-6 (vroll) vs 1e-4 (TRL) under the std; vroll makes a group of equal rewards exactly 0, "
        "TRL leaves float rounding (about 1e-4 of an advantage).",
        "Trainer: vroll's fsdp2_train wraps the model in FSDP2 (one rank here); TRL uses a plain module through "
        "accelerate.",
        "Prompts: vroll renders the chat with the model's template and TRL is given that text (checked to "
        "tokenize to the same ids); prompts longer than prompt_length are dropped before either sees them.",
    ]
    if cfg.reward_clip or cfg.advantage_clip is not None:
        out.append("reward_clip / advantage_clip have no TRL equivalent and are not applied by TRL.")
    if cfg.actor_train.training_args.weight_decay:
        out.append("Weight decay: TRL's Trainer exempts biases and norm weights; vroll decays every parameter.")
    return out


# -- the prompts and the rewards TRL gets -----------------------------------------------------------
def prompts_in_sampler_order(cfg, steps: int):
    """The training records as vroll's PromptSampler hands them out over `steps` rollouts."""
    from transformers import AutoTokenizer

    from vroll.pipeline.dataset import PromptSampler, load_prompts

    tokenizer = AutoTokenizer.from_pretrained(cfg.actor_train.model_args.model_name_or_path)
    records = load_prompts(cfg.actor_train.data_args, tokenizer, cfg.prompt_length, "actor_train.data_args")
    sampler = PromptSampler(records, cfg.seed)
    return [rec for _ in range(steps) for rec in sampler.next_batch(cfg.rollout_batch_size)], tokenizer


def same_prompt_tokens(tokenizer, records) -> bool:
    """Whether TRL's tokenisation of the rendered prompt (`tokenizer(text)`) gives vroll's token ids."""
    return all(tokenizer(r.prompt_text)["input_ids"] == r.prompt_ids for r in records)


class VrollRewards:
    """A TRL reward function that scores with vroll's RewardRouter (routing by tag, weights), and keeps
    which prompts each call scored and the rule's correctness, to check the order and report accuracy."""

    __name__ = "vroll_rewards"

    def __init__(self, cfg, records):
        from vroll.rewards.workers import RewardRouter

        self.router, self.records = RewardRouter(cfg.rewards), records
        self.calls: list[dict] = []

    def __call__(self, prompts, completions, row, **_):
        from vroll.rewards.workers import RewardItem

        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        recs = [self.records[i] for i in row]
        items = [RewardItem(r.prompt_text, text, r.ground_truth, r.tag, r.extra) for r, text in zip(recs, texts)]
        scores, correct, _ = self.router.score(items)
        rule = [c for c in correct if c is not None]
        self.calls.append({"rows": list(row), "reward_mean": sum(scores) / len(scores),
                           "accuracy": sum(rule) / len(rule) if rule else None})
        return scores


def trl_dataset(records):
    """The prompts as TRL's standard (text) dataset, one row per draw, `row` pointing back at the draw."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r.prompt_text, "row": i} for i, r in enumerate(records)])


def order_matches(calls: list[dict], rollout_batch_size: int, group: int) -> bool:
    """Whether TRL's k-th reward call scored vroll's k-th batch of prompts, each `group` times."""
    for k, call in enumerate(calls):
        expected = sorted(i for i in range(k * rollout_batch_size, (k + 1) * rollout_batch_size)
                          for _ in range(group))
        if sorted(call["rows"]) != expected:
            return False
    return bool(calls)


# -- running TRL ---------------------------------------------------------------------------------
def rollout_clock():
    """A TrainerCallback that timestamps (wall clock and this process's CPU time) the start of training
    and the end of every optimiser step."""
    from transformers import TrainerCallback

    class RolloutClock(TrainerCallback):
        def __init__(self):
            self.start, self.stamps, self.cpu_start, self.cpu_stamps = None, [], None, []

        def on_train_begin(self, args, state, control, **kwargs):
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())
            self.cpu_stamps.append(time.process_time())

    return RolloutClock()


def seconds_per_rollout(start: float, stamps: list[float], steps_per_rollout: int) -> list[float]:
    """Optimiser-step end times grouped into rollouts: each rollout's duration, the first from the start."""
    ends = [start] + stamps[steps_per_rollout - 1::steps_per_rollout]
    return [b - a for a, b in zip(ends, ends[1:])]


def neutral_generation_config(model) -> None:
    """Clear the sampling defaults of the model's generation_config.json (the demo model has top_k 20,
    repetition_penalty 1.05): TRL's values must be the only ones in force, as vroll's are in vLLM."""
    gc = model.generation_config
    gc.temperature, gc.top_p, gc.top_k, gc.repetition_penalty, gc.min_p = 1.0, 1.0, None, 1.0, None


def run_trl(cfg, rows: list[Mapped], steps: int, out_dir: Path) -> dict:
    """Train with TRL's GRPOTrainer; returns its seconds per rollout, rewards per rollout and model folder."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    records, tokenizer = prompts_in_sampler_order(cfg, steps)
    rewards = VrollRewards(cfg, records)
    clock = rollout_clock()
    args = GRPOConfig(**trl_arguments(rows, out_dir))
    model = AutoModelForCausalLM.from_pretrained(cfg.actor_train.model_args.model_name_or_path, dtype=torch.float32)
    neutral_generation_config(model)
    trainer = GRPOTrainer(model=model, reward_funcs=[rewards], args=args, train_dataset=trl_dataset(records),
                          processing_class=tokenizer, callbacks=[clock])
    trainer.train()
    model_dir = out_dir / "model"
    trainer.save_model(str(model_dir))
    per_rollout = args.steps_per_generation // args.gradient_accumulation_steps * args.num_iterations
    return {"seconds": seconds_per_rollout(clock.start, clock.stamps, per_rollout),
            "cpu_seconds": seconds_per_rollout(clock.cpu_start, clock.cpu_stamps, per_rollout), "model": str(model_dir),
            "optimizer_steps": len(clock.stamps), "reward_mean": [c["reward_mean"] for c in rewards.calls],
            "train_accuracy": [c["accuracy"] for c in rewards.calls],
            "prompt_order_matches_vroll": order_matches(rewards.calls, cfg.rollout_batch_size,
                                                        cfg.num_return_sequences_in_group),
            "prompt_tokens_match_vroll": same_prompt_tokens(tokenizer, records[:256])}


# -- running vroll -------------------------------------------------------------------------------
def vroll_command(*args: str) -> list[str]:
    """The `vroll` CLI of this Python's environment."""
    exe = Path(sys.executable).parent / "vroll"
    return [str(exe) if exe.exists() else (shutil.which("vroll") or "vroll"), *args]


def cpu_seconds_of(pid: int) -> float:
    """CPU time (user + system, all threads) a running process has used so far, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watch_lines(path: Path, proc: subprocess.Popen, arrivals: list, poll_s: float = 0.02) -> None:
    """Until `proc` ends: each new line of `path` as (the time it appeared, the process's CPU seconds
    then, its JSON). Reads only the bytes added since the last look, so watching costs next to nothing."""
    offset, partial = 0, ""
    while True:
        done = proc.poll() is not None
        if path.exists() and path.stat().st_size > offset:
            with path.open() as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
            now, cpu = time.perf_counter(), cpu_seconds_of(proc.pid)
            *lines, partial = (partial + chunk).split("\n")
            arrivals.extend((now, cpu, json.loads(line)) for line in lines if line.strip())
        if done:
            return
        time.sleep(poll_s)


def run_vroll(config: str, overrides: list[str], seed: int, steps: int, out_dir: Path, log_path: Path) -> dict:
    """`vroll train FILE` for `steps` steps (no validation, one checkpoint at the end); seconds per step
    from the times its metrics lines appear, and its own phase sum (`time/step`)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cmd = vroll_command("train", config, *overrides, f"seed={seed}", f"max_steps={steps}", f"output_dir={out_dir}",
                        "validation=null", f"save_steps={steps}", "resume_from_checkpoint=false")
    arrivals: list = []
    with log_path.open("w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        watch_lines(out_dir / "metrics.jsonl", proc, arrivals)
    if proc.returncode != 0:
        raise RuntimeError(f"vroll train failed ({proc.returncode}); see {log_path}")
    steps_seen = [(t, cpu, rec) for t, cpu, rec in arrivals if "time/step" in rec]
    ends = [start] + [t for t, _, _ in steps_seen]
    cpu_ends = [0.0] + [cpu for _, cpu, _ in steps_seen]
    recs = [rec for _, _, rec in steps_seen]
    return {"seconds": [b - a for a, b in zip(ends, ends[1:])],
            "cpu_seconds": [b - a for a, b in zip(cpu_ends, cpu_ends[1:])],
            "phase_seconds": [r["time/step"] for r in recs],
            "reward_mean": [r["reward/mean"] for r in recs], "train_accuracy": [r.get("reward/accuracy") for r in recs],
            "model": str(out_dir / "checkpoints" / f"step_{steps}")}  # a checkpoint is a model folder


def evaluate(config: str, overrides: list[str], model_dir: str, out_dir: Path) -> dict:
    """Held-out accuracy of a model folder by `vroll evaluate` (the file's validation section)."""
    cmd = vroll_command("evaluate", config, *overrides, "--model", model_dir, "--output", str(out_dir))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"vroll evaluate failed on {model_dir}:\n{done.stderr[-3000:]}")
    values = dict(re.findall(r"^(val/\w+): ([-\d.]+)$", done.stdout, flags=re.M))
    return {k: float(v) for k, v in values.items()}


# -- the machine and the report --------------------------------------------------------------------
def hold_to_cores(threads: int) -> list[int]:
    """This process and its children keep to the first `threads` usable cores; torch uses that many threads."""
    import torch

    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, set(cores))
    os.environ["OMP_NUM_THREADS"] = str(len(cores))
    torch.set_num_threads(len(cores))
    return cores


def after_first(seconds: list[float], cpu_seconds: list[float] | None = None) -> dict:
    """Median and mean seconds per step, and the median CPU seconds, the first step left out."""
    rest, cpu = seconds[1:], (cpu_seconds or [])[1:]
    if not rest:
        return {"median": None, "mean": None, "cpu_median": None, "steps": 0}
    return {"median": statistics.median(rest), "mean": statistics.mean(rest),
            "cpu_median": statistics.median(cpu) if cpu else None, "steps": len(rest)}


def fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(report: dict) -> str:
    """The results, the settings table and the differences, as Markdown."""
    lines = [f"# vroll vs TRL {report['trl_version']} on `{report['config']}`", "",
             f"{report['steps']} steps x seeds {report['seeds']}; a step = {report['rollout']}; "
             f"both processes held to cores {report['cores']} ({len(report['cores'])} threads); "
             f"accuracy: `vroll evaluate` of each final model (greedy, {report['eval_file']}).", "",
             f"Starting model held-out accuracy: {fmt(report['start_accuracy'])}", "",
             "| framework | seed | s/step median | s/step mean | CPU s/step median | held-out accuracy (last step) "
             "| train reward first / last step |", "|---|---|---|---|---|---|---|"]
    for run in report["runs"]:
        t = run["time"]
        r = run["reward_mean"]
        lines.append(f"| {run['framework']} | {run['seed']} | {fmt(t['median'])} | {fmt(t['mean'])} "
                     f"| {fmt(t.get('cpu_median'))} "
                     f"| {fmt(run['accuracy'])} | {fmt(r[0] if r else None)} / {fmt(r[-1] if r else None)} |")
    for name, ratio in report["ratios"].items():
        lines.append(f"\n{name}: {ratio}")
    lines += ["", "## Settings", "", "| vroll key | value | TRL argument | value | note |", "|---|---|---|---|---|"]
    for m in report["settings"]:
        lines.append(f"| {m['vroll_key']} | {m['vroll_value']} | {m['trl_arg']} | {m['trl_value']} | {m['note']} |")
    lines += ["", "## Differences", ""] + [f"- {d}" for d in report["differences"]]
    lines += ["", "## Checks", ""] + [f"- {k}: {v}" for k, v in report["checks"].items()]
    return "\n".join(lines) + "\n"


def ratio_line(runs: list[dict]) -> dict:
    """TRL's median time per step over vroll's, per seed."""
    out = {}
    for seed in sorted({r["seed"] for r in runs}):
        by = {r["framework"]: r["time"]["median"] for r in runs if r["seed"] == seed}
        if by.get("vroll") and by.get("TRL"):
            out[f"seed {seed}: TRL / vroll median time per step"] = f"{by['TRL'] / by['vroll']:.2f}x"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="key.path=value, applied to both runs and to the evaluation")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default="outputs/bench_vs_trl")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trl-flush-denormal", action="store_true",
                    help="flush denormal floats to zero in TRL's process too, as vroll's trainer does")
    args = ap.parse_args()

    import warnings

    warnings.filterwarnings("ignore", message="TRL currently supports vLLM")  # TRL runs without vLLM here
    import trl

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = hold_to_cores(args.threads)
    if args.trl_flush_denormal:
        import torch

        torch.set_flush_denormal(True)
    cfg0 = load_job(args.config, args.overrides)
    if problems := refusals(cfg0):
        sys.exit("not comparable with TRL's GRPOTrainer:\n  " + "\n  ".join(problems))
    start_acc = evaluate(args.config, args.overrides, cfg0.actor_train.model_args.model_name_or_path,
                         out / "eval" / "start").get("val/accuracy")
    runs, checks = [], {}
    for seed in args.seeds:
        cfg = load_job(args.config, [*args.overrides, f"seed={seed}"])
        rows = map_settings(cfg, args.steps, seed)
        print(f"seed {seed}: TRL GRPOTrainer, {args.steps} steps", flush=True)
        got = run_trl(cfg, rows, args.steps, out / f"trl-seed{seed}")
        checks[f"seed {seed}: TRL prompts in vroll's sampler order"] = got.pop("prompt_order_matches_vroll")
        checks[f"seed {seed}: TRL prompt token ids equal vroll's"] = got.pop("prompt_tokens_match_vroll")
        checks[f"seed {seed}: TRL optimiser steps"] = got.pop("optimizer_steps")
        runs.append({"framework": "TRL", "seed": seed, **got})
        print(f"seed {seed}: vroll train, {args.steps} steps", flush=True)
        runs.append({"framework": "vroll", "seed": seed,
                     **run_vroll(args.config, args.overrides, seed, args.steps, out / f"vroll-seed{seed}",
                                 out / f"vroll-seed{seed}.log")})
        for run in runs[-2:]:
            run["time"] = after_first(run["seconds"], run.get("cpu_seconds"))
            run["accuracy"] = evaluate(args.config, args.overrides, run["model"],
                                       out / "eval" / f"{run['framework']}-seed{seed}").get("val/accuracy")
    report = {"config": args.config, "overrides": args.overrides, "steps": args.steps, "seeds": args.seeds,
              "trl_version": trl.__version__, "cores": cores,
              "rollout": f"{cfg0.rollout_batch_size} prompts x {cfg0.num_return_sequences_in_group} responses "
                         "with all its optimiser steps",
              "eval_file": cfg0.validation.data_args.file_name if cfg0.validation else None,
              "start_accuracy": start_acc, "runs": runs, "ratios": ratio_line(runs),
              "settings": [asdict(m) for m in map_settings(cfg0, args.steps, cfg0.seed)],
              "differences": differences(cfg0, args.trl_flush_denormal), "checks": checks}
    (out / "bench_vs_trl.json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    (out / "bench_vs_trl.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
