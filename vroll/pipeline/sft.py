"""`vroll sft`: supervised warm-up on (prompt, answer) records with the same trainer as RL, so a random
tiny model reaches a non-trivial accuracy that RL can then improve. Writes `output_dir/model`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from vroll.config.schema import PipelineConfig
from vroll.models.padding import left_pad
from vroll.models.paths import resolve_model_path
from vroll.pipeline.checkpoint import partial_saves_discarded, written_aside
from vroll.pipeline.dataset import PromptRecord, PromptSampler, describe_first_prompt, load_prompts, row_templates
from vroll.pipeline.evaluation import evaluate_model
from vroll.pipeline.health import skipped
from vroll.pipeline.output_dir import own_output_dir
from vroll.pipeline.tracking import MetricsLog, PhaseTimer, open_tracker
from vroll.roles.launcher import launch

log = logging.getLogger(__name__)


def supervised_batch(records: list[PromptRecord], tokenizer, response_length: int) -> dict:
    """Prompt + answer + EOS per row, left-padded; `mask` [B, L-1] marks the answer tokens to learn."""
    rows = []
    for r in records:
        answer = tokenizer(r.response + tokenizer.eos_token, add_special_tokens=False)["input_ids"][:response_length]
        rows.append((r.prompt_ids, answer))
    ids, attention = left_pad([p + a for p, a in rows], tokenizer.pad_token_id or 0)
    target = torch.zeros_like(attention)
    for i, (_, a) in enumerate(rows):
        target[i, target.shape[1] - len(a):] = 1
    return {"input_ids": ids, "attention_mask": attention, "mask": target[:, 1:].float()}


def run_sft(cfg: PipelineConfig, source: str | None = None, progress: bool | None = None) -> dict:
    """The whole SFT run; it owns (locks) output_dir while it lasts and leaves no partial save behind."""
    with own_output_dir(cfg.output_dir) as out_dir, partial_saves_discarded(out_dir):
        return _run_sft(cfg, out_dir, progress)


def _run_sft(cfg: PipelineConfig, out_dir: Path, progress: bool | None) -> dict:
    from tqdm import tqdm
    from transformers import AutoTokenizer

    role, args = cfg.actor_train, cfg.actor_train.training_args
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(role.model_args.model_name_or_path,
                                                                 "actor_train.model_args.model_name_or_path"))
    if role.data_args.domain_interleave_probs:
        log.warning("actor_train.data_args.domain_interleave_probs: has no effect in `vroll sft` (one shuffled "
                    "order over all rows); `vroll train` reads it")
    templates = row_templates(cfg)
    records = load_prompts(role.data_args, tokenizer, cfg.prompt_length, "actor_train.data_args", with_response=True,
                           templates=templates)
    log.info(describe_first_prompt(records, "actor_train.data_args", templates))
    sampler = PromptSampler(records, cfg.seed)
    metrics_log = MetricsLog(out_dir, tracker=open_tracker(cfg, out_dir))
    with launch(cfg, role, total_steps=cfg.max_steps) as trainer:
        # per_device_train_batch_size rows per rank and micro-batch, as in transformers' Trainer
        micro = args.per_device_train_batch_size * trainer.world_size
        rows = micro * args.gradient_accumulation_steps
        bar = tqdm(range(1, cfg.max_steps + 1), desc="vroll sft", unit="step",
                   disable=(not sys.stderr.isatty()) if progress is None else not progress)
        for step in bar:
            timer = PhaseTimer()
            batch = supervised_batch(sampler.next_batch(rows), tokenizer, cfg.response_length)
            tokens = batch["mask"].sum().clamp(min=1)

            def loss_fn(mb, logp, entropy):
                loss = -(logp * mb["mask"]).sum() / tokens
                return loss, {"train/loss": float(loss.detach())}

            with timer("train"):
                micros = [{k: v[i:i + micro] for k, v in batch.items()} for i in range(0, rows, micro)]
                got = trainer.train_step(micros, loss_fn)
            skip = skipped(args, step, got)  # not finite: stops, or skips and counts
            record = {"step": step, **got, **timer.metrics(), "data/epoch": sampler.epoch,
                      "train/skipped_steps": float(skip)}
            metrics_log.write(record)
            bar.set_postfix(loss=f"{record['train/loss']:.3f}")
            if step % cfg.logging_steps == 0:
                log.info("sft step %d: loss %.4f lr %.2e", step, record["train/loss"], record["train/lr"])
        model_dir = save_model(trainer, out_dir / "model")
    summary = {"model": str(model_dir), "metrics": str(metrics_log.path)}
    if cfg.validation is not None and cfg.validation.data_args is not None and cfg.actor_infer is not None:
        summary.update(evaluate_model(cfg, str(model_dir), tokenizer, out_dir))
        metrics_log.write({"step": cfg.max_steps, **{k: v for k, v in summary.items() if k.startswith("val/")}})
    metrics_log.close()
    return summary


def save_model(trainer, folder: Path) -> Path:
    """The trained weights as a Hugging Face folder, written aside and renamed into place."""
    with written_aside(folder) as tmp:
        trainer.save(tmp, with_state=False)
    return folder
