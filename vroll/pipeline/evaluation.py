"""Held-out accuracy: generate answers to the validation prompts, score them with the reward workers,
write every answer to `validation/step_N.jsonl`. Used during `vroll train`, after `vroll sft`, and by
`vroll evaluate` on any saved model."""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path

from vroll.config.errors import ConfigError
from vroll.config.schema import PipelineConfig
from vroll.pipeline.dataset import PromptRecord, describe_first_prompt, load_prompts, row_templates
from vroll.rewards.workers import RewardItem, RewardRouter, missing_fields, unrouted_rows
from vroll.roles.interfaces import GenerationEngine
from vroll.roles.launcher import launch, launch_reward_models
from vroll.strategy.results import PromptResult

log = logging.getLogger(__name__)

VALIDATION_CALL = 1_000_000  # seeds of validation generations never collide with a rollout's


def generate(engine: GenerationEngine, records: list[PromptRecord], g, call: int) -> list[PromptResult]:
    engine.wake_up()  # nothing to do when awake
    return engine.generate([{"prompt_token_ids": r.prompt_ids} for r in records], g, call=call,
                           prompt_overflow="error")


def score(rewards: RewardRouter, records: list[PromptRecord], results: list[PromptResult], step: int | None = None):
    items = [RewardItem(rec.prompt_text, s.text, rec.ground_truth, rec.tag, rec.extra)
             for rec, res in zip(records, results) for s in res.samples]
    return rewards.score(items, step)


def validate(cfg: PipelineConfig, engine: GenerationEngine, rewards: RewardRouter, records: list[PromptRecord],
             step: int, out_dir: Path) -> dict:
    """Held-out prompts with `validation.generating_args`; samples go to validation/step_N.jsonl."""
    g = cfg.validation.generating_args
    results = generate(engine, records, g, call=VALIDATION_CALL + step)
    scores, correct, _ = score(rewards, records, results, step)
    rule = [c for c in correct if c is not None]
    folder = out_dir / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    samples = [(rec, s) for rec, res in zip(records, results) for s in res.samples]
    with (folder / f"step_{step}.jsonl").open("w") as f:
        for (rec, s), reward in zip(samples, scores):
            f.write(json.dumps({"prompt": rec.prompt_text, "response": s.text, "ground_truth": rec.ground_truth,
                                "reward": reward, "response_token_ids": s.token_ids}) + "\n")
    out = {"step": step, "val/reward_mean": sum(scores) / len(scores),
           "val/response_length": sum(len(s.token_ids) for _, s in samples) / len(samples)}
    if rule:
        out["val/accuracy"] = sum(rule) / len(rule)
    return out


def evaluate_model(cfg: PipelineConfig, model_dir: str, tokenizer, out_dir: Path, step: int | None = None,
                   source: str | None = None) -> dict:
    """Held-out accuracy of a saved model with actor_infer's engine and the reward workers; the
    answers go to out_dir/validation/step_N.jsonl (N: `step`, default max_steps)."""
    templates = row_templates(cfg, source)
    records = load_prompts(cfg.validation.data_args, tokenizer, cfg.prompt_length, "validation.data_args",
                           templates=templates)
    log.info(describe_first_prompt(records, "validation.data_args", templates))
    issues = unrouted_rows(cfg.rewards, records, "validation.data_args") + missing_fields(cfg.rewards, records,
                                                                                         "validation.data_args")
    if issues:
        raise ConfigError(issues, source)
    role = cfg.actor_infer.model_copy(deep=True)
    role.model_args.model_name_or_path = model_dir
    role.strategy_args.strategy_config.pop("load_format", None)  # the saved weights are the point
    with ExitStack() as stack:
        rewards = RewardRouter(cfg.rewards, launch_reward_models(cfg, stack))
        engine = stack.enter_context(launch(cfg, role))
        result = validate(cfg, engine, rewards, records, cfg.max_steps if step is None else step, out_dir)
    return {k: v for k, v in result.items() if k != "step"}
