"""`vroll train`: reinforcement learning with verifiable rewards, one step in plain sight.

generate (vLLM) -> sleep when colocated -> reward -> reference log-probs -> advantages -> PPO epochs
(FSDP2 trainer) -> push the new weights into vLLM. Metrics per step go to output_dir/metrics.jsonl.
"""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from vroll.cluster.actors import RoleFailure
from vroll.config.domains import tag_domains
from vroll.config.dtypes import torch_dtype
from vroll.config.errors import ConfigError, Issue
from vroll.config.layout import optimizer_steps_per_rollout, rows_per_optimizer_step, trainer_ranks
from vroll.config.lora import lora_enabled
from vroll.config.no_effect import no_effect_line
from vroll.config.passes import critic_enabled, old_logprobs_needed, old_logprobs_recomputed
from vroll.config.sampling import rollout_args
from vroll.config.schema import PipelineConfig
from vroll.config.templates import unknown_tag_issues
from vroll.models.padding import prompt_width
from vroll.models.paths import resolve_model_path
from vroll.pipeline import algorithms as alg
from vroll.pipeline.async_rollout import RolloutsAhead
from vroll.pipeline.checkpoint import (CRITIC_DIR, find_checkpoint, models_to_fit, partial_saves_discarded,
                                      prune_checkpoints, save_checkpoint)
from vroll.pipeline.dataset import (DomainSampler, PromptRecord, PromptSampler, describe_first_prompt, domain_issues,
                                    load_prompts, plain_rows_warning, prompt_sampler, record_domain, row_templates)
from vroll.pipeline.evaluation import generate, score, validate
from vroll.pipeline.health import skipped
from vroll.pipeline.output_dir import own_output_dir
from vroll.pipeline.tracking import MetricsLog, PhaseTimer, open_tracker, plot_curves, process_rss_bytes
from vroll.rewards.workers import RewardRouter, missing_fields, row_routes, unrouted_rows
from vroll.roles.launcher import AdaptersOff, Roles, launch_rlvr_roles
from vroll.strategy.results import PromptResult, to_padded_batch
from vroll.strategy.vllm_compat import current_platform_name

log = logging.getLogger(__name__)

EXTRA_CALL = 2_000_000  # seeds of dynamic sampling's extra generations never collide with others


# -- set-up ---------------------------------------------------------------------------------------
def load_data(cfg: PipelineConfig, tokenizer, source: str | None):
    """Training and validation prompts, read, rendered by their templates and checked before anything
    starts; the first training row is logged as the model sees it."""
    templates = row_templates(cfg, source)
    train = load_prompts(cfg.actor_train.data_args, tokenizer, cfg.prompt_length, "actor_train.data_args",
                         templates=templates)
    val = []
    if cfg.validation is not None and cfg.validation.data_args is not None:
        val = load_prompts(cfg.validation.data_args, tokenizer, cfg.prompt_length, "validation.data_args",
                           templates=templates)
    issues = unrouted_rows(cfg.rewards, train, "actor_train.data_args", drawn_rows(cfg))
    issues += unrouted_rows(cfg.rewards, val, "validation.data_args")
    issues += unknown_tag_issues(templates, {r.tag for r in train + val})
    if cfg.difficulty_loss_weight:
        issues += missing_difficulty(train)
    issues += missing_fields(cfg.rewards, train, "actor_train.data_args")
    issues += missing_fields(cfg.rewards, val, "validation.data_args")
    issues += domain_issues(train, cfg.actor_train.data_args, cfg.rollout_batch_size, cfg.rewards)
    shares = cfg.actor_train.data_args.domain_interleave_probs  # then domain_issues checks each domain's rows
    if len(train) < cfg.rollout_batch_size and not shares:  # the sampler would put a prompt in a step's batch twice
        issues.append(Issue("rollout_batch_size", f"{cfg.rollout_batch_size} is more than the {len(train)} usable "
                                                  "prompts of actor_train.data_args: every step would repeat "
                                                  f"prompts; set at most {len(train)}, or add prompts"))
    if issues:
        raise ConfigError(issues, source)
    for records, key in ((train, "actor_train.data_args"), (val, "validation.data_args")):
        warning = plain_rows_warning(records, key, templates) if records else None
        if warning:
            log.warning(warning)
    log.info(describe_first_prompt(train, "actor_train.data_args", templates))
    return train, val


def drawn_rows(cfg: PipelineConfig):
    """Which training rows are ever drawn: with domain_interleave_probs, those of the listed domains
    (ROLL's rule); else all (None)."""
    probs = cfg.actor_train.data_args.domain_interleave_probs if cfg.actor_train.data_args else None
    if not probs:
        return None
    tags = tag_domains(cfg.rewards)
    return lambda record: record_domain(record, tags) in probs


def missing_difficulty(records: list[PromptRecord]) -> list[Issue]:
    """`difficulty_loss_weight` reads each training row's `difficulty` (a number, 0 easy to 1 hard)."""
    bad = [r.index for r in records if isinstance(r.extra.get("difficulty"), bool)
           or not isinstance(r.extra.get("difficulty"), (int, float))]
    if not bad:
        return []
    return [Issue("difficulty_loss_weight", f"true needs a number `difficulty` (0 easy to 1 hard) on every training "
                                            f"row; {len(bad)} of {len(records)} rows have none or a non-number "
                                            f"(first: row {bad[0] + 1})")]


def with_train_defaults(cfg: PipelineConfig) -> PipelineConfig:
    """The file as `vroll train` runs it (what output_dir/config.yaml records): the mismatch metric
    compares the trainer's tempered log-probs with the engine's, so the engine is asked for the same
    (processed) quantity unless the file chose otherwise."""
    cfg = cfg.model_copy(deep=True)
    cfg.actor_infer.strategy_args.strategy_config.setdefault("logprobs_mode", "processed_logprobs")
    return cfg


# -- one step, phase by phase ---------------------------------------------------------------------
def sequences_of(batch: dict) -> tuple[list[list[int]], list[int]]:
    """Each row's real tokens, and where they start in the padded row."""
    seqs, starts = [], []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        real = mask.nonzero().flatten()
        start, end = int(real[0]), int(real[-1]) + 1
        seqs.append(ids[start:end].tolist())
        starts.append(start)
    return seqs, starts


def forward_logprobs(model, batch: dict) -> torch.Tensor:
    """A forward-only model's per-token log-probs (the reference; the engine), laid out like the
    trainer's [B, L-1]."""
    seqs, starts = sequences_of(batch)
    out = torch.zeros(batch["input_ids"].shape[0], batch["input_ids"].shape[1] - 1)
    for i, (lp, start) in enumerate(zip(model.sequence_logprobs(seqs), starts)):
        out[i, start:start + len(lp)] = torch.tensor(lp)
    return out


def reference_logprobs(reference, batch: dict) -> torch.Tensor:
    """The reference's per-token log-probs [B, L-1]; under LoRA (ROLL's rule) the trainer's model with
    its adapters off scores the padded batch as it is."""
    if isinstance(reference, AdaptersOff):
        return reference.batch_logprobs(batch["input_ids"], batch["attention_mask"])
    return forward_logprobs(reference, batch)


def rollout_logprobs(batch: dict) -> torch.Tensor:
    """vLLM's sampled-token log-probs [B, R] moved to the trainer's [B, L-1] layout."""
    n, width = batch["input_ids"].shape
    prompt_width = width - batch["logprobs"].shape[1]
    out = torch.zeros(n, width - 1)
    out[:, prompt_width - 1:] = batch["logprobs"]
    return out


def policy_loss(cfg: PipelineConfig, sizes: alg.StepSizes):
    """The loss of one optimiser step, as `loss_fn(micro, logp, entropy) -> (its share, metrics)`:
    the `pg_variant`'s per-token loss (PPO's clipped surrogate by default), corrected for the
    train/infer mismatch, weighted and aggregated by `loss_agg_mode` over the whole step, plus the KL
    loss, both scaled by `rl_loss_coef`, and minus the entropy bonus when asked (`alg.actor_loss`)."""
    variant = alg.PG_VARIANTS[cfg.pg_variant]
    correction = alg.correction_of(cfg)

    def loss_fn(micro, logp, entropy):
        m = micro["mask"]
        recomputed = "old_logp" in micro
        old = micro["old_logp"] if recomputed else logp.detach()  # one optimiser step: the same weights
        is_weight, keep = alg.train_infer_correction(correction, old, micro["rollout_logp"], m)
        m = m * keep
        terms, clipped = variant(cfg, logp, old, micro["advantages"], m, micro["scores"])
        terms = terms * is_weight
        weights = alg.sample_weights(cfg, m, micro.get("difficulty"))
        loss = alg.aggregate(terms, m, cfg.loss_agg_mode, sizes, weights)
        metrics = {"train/pg_loss": float(loss.detach()),
                   "train/pg_clipfrac": float((clipped * m).sum() / sizes.tokens),
                   "train/entropy": float((entropy.detach() * micro["response_mask"]).sum() / sizes.tokens)}
        if not recomputed:  # the trainer's log-probs against the engine's, measured here instead
            metrics["mismatch/logprob_abs_mean"] = float(((old - micro["rollout_logp"]).abs() * m).sum() / sizes.tokens)
        kl_loss = ent = None
        if cfg.use_kl_loss:
            kl_loss = alg.aggregate(alg.kl_k3(logp, micro["ref_logp"]), m, cfg.loss_agg_mode, sizes)
            metrics["train/kl_loss"] = float(kl_loss.detach())
        if cfg.entropy_loss_coef > 0:
            ent = alg.aggregate(entropy, micro["response_mask"], cfg.loss_agg_mode, sizes)
        return alg.actor_loss(loss, kl_loss, ent, cfg.kl_loss_coef, cfg.rl_loss_coef, cfg.entropy_loss_coef), metrics

    return loss_fn


def critic_loss(cfg: PipelineConfig, sizes: alg.StepSizes):
    """The critic's loss of one optimiser step, as `loss_fn(micro, values) -> (its share, metrics)`:
    regression of the values on the returns over every response token (`alg.value_loss`)."""

    def loss_fn(micro, values):
        m = micro["response_mask"]
        loss, clipped = alg.value_loss(values, micro["values"], micro["returns"], m, cfg.value_clip, sizes)
        return loss, {"critic/loss": float(loss.detach()),
                      "critic/clipfrac": float((clipped * m).sum() / sizes.tokens),
                      "critic/vpred": float((values.detach() * m).sum() / sizes.tokens)}

    return loss_fn


def optimizer_steps(cfg: PipelineConfig, trainer, role, batch: dict, epochs: int, step: int, make_loss,
                    mask_key: str, prefix: str, temperature: float = 1.0) -> dict:
    """`epochs` passes over the rollout in shuffled mini-batches, one optimiser step each
    (per_device_train_batch_size x gradient_accumulation_steps rows on each of the role's ranks);
    `make_loss(step sizes)` gives each step's loss function. Returns the metrics averaged over steps,
    and `<prefix>/skipped_steps` (steps not applied: not finite, `training_args.on_nonfinite: skip`)."""
    micro_rows = role.training_args.per_device_train_batch_size * trainer.world_size
    steps_rows = rows_per_optimizer_step(cfg, trainer.world_size, role)
    n = batch["input_ids"].shape[0]
    totals: dict[str, float] = {}
    count = skips = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100003 + step * 101 + epoch))
        for start in range(0, n, steps_rows):
            rows = order[start:start + steps_rows]
            micros = [{k: v[rows[i:i + micro_rows]] for k, v in batch.items()}
                      for i in range(0, len(rows), micro_rows)]
            got = trainer.train_step(micros, make_loss(alg.StepSizes.of(batch[mask_key][rows])), temperature)
            if skipped(role.training_args, step, got):  # not finite: stops, or skips and counts
                skips += 1
                continue
            for k, v in got.items():
                totals[k] = totals.get(k, 0.0) + v
            count += 1
    return {**{k: v / max(count, 1) for k, v in totals.items()}, f"{prefix}/skipped_steps": float(skips)}


def ppo_update(cfg: PipelineConfig, roles: Roles, batch: dict, step: int, temperature: float) -> dict:
    """The policy's `ppo_epochs` passes over the rollout."""
    return optimizer_steps(cfg, roles.train, cfg.actor_train, batch, cfg.ppo_epochs, step,
                           lambda sizes: policy_loss(cfg, sizes), "mask", "train", temperature)


def critic_update(cfg: PipelineConfig, roles: Roles, batch: dict, step: int) -> dict:
    """The critic's one pass over the rollout (ROLL's critic trains one epoch per step)."""
    return optimizer_steps(cfg, roles.critic, cfg.critic, batch, 1, step, lambda sizes: critic_loss(cfg, sizes),
                           "response_mask", "critic")


def advantages_by_domain(cfg: PipelineConfig, records: list[PromptRecord], scores: torch.Tensor,
                         mask: torch.Tensor, kl: torch.Tensor | None, state: alg.AlgorithmState,
                         values: torch.Tensor | None = None):
    """Advantages and returns [B, T-1], computed for each domain on its own, as ROLL does (its batch
    grouped by `domain`): batch statistics never mix domains. A row's domain is ROLL's (its `domain`
    field, else the reward worker its tag names, else math_rule: `config.domains.row_domain`), so two
    tags one worker scores are one domain, as in ROLL."""
    n = cfg.num_return_sequences_in_group
    tags = tag_domains(cfg.rewards)
    domain_of_row = [record_domain(r, tags) for r in records for _ in range(n)]
    adv, returns = torch.zeros(mask.shape), torch.zeros(mask.shape)
    metrics: dict[str, float] = {}
    for domain in dict.fromkeys(domain_of_row):
        rows = torch.tensor([i for i, d in enumerate(domain_of_row) if d == domain])
        adv[rows], returns[rows], metrics = alg.compute_advantages(
            cfg, scores[rows], mask[rows], None if kl is None else kl[rows], state.kl_ctrl, state.moments(domain),
            None if values is None else values[rows])
    return adv, returns, metrics


def engine_weights(cfg: PipelineConfig, roles: Roles):
    """The trainer's weights in the engine's dtype: fp32 master weights travel as bf16 to a bf16
    engine (half the bytes; the engine would round them the same way on load)."""
    return roles.train.named_weights(dtype=torch_dtype(cfg.actor_infer.model_args.dtype))


def push_weights(cfg: PipelineConfig, roles: Roles) -> int:
    if roles.sleep_level == 2:
        roles.infer.wake_up(tags=["weights"])  # weights first, KV cache at the next generation
    return roles.infer.update_weights(engine_weights(cfg, roles))


@dataclass
class Rollout:
    """A step's prompts with their responses and rewards, one group of responses per prompt."""

    records: list[PromptRecord]
    results: list[PromptResult]
    scores: list[float]
    correct: list[float | None]

    def group(self, i: int, n: int) -> "Rollout":
        return Rollout([self.records[i]], [self.results[i]], self.scores[i * n:(i + 1) * n],
                       self.correct[i * n:(i + 1) * n])

    @classmethod
    def join(cls, groups: list["Rollout"]) -> "Rollout":
        return cls(*([x for gr in groups for x in getattr(gr, f)] for f in ("records", "results", "scores", "correct")))


def query_filters(cfg: PipelineConfig, record: PromptRecord) -> list:
    """The query filters of the reward workers that score this prompt (its tag's workers)."""
    return [cfg.rewards[name].query_filter_config for name in row_routes(cfg.rewards, record)
            if cfg.rewards[name].query_filter_config.type != "no_filter"]


def rollout(cfg: PipelineConfig, roles: Roles, rewards: RewardRouter, records: list[PromptRecord], g, step: int,
            draw, timer: PhaseTimer) -> tuple[Rollout, dict, dict]:
    """Generate and score the step's groups. With query filters (DAPO's dynamic sampling), dropped
    groups are replaced by groups of newly drawn prompts until the batch is full, drawing at most
    `max_additional_prompts_per_step` extra prompts (then dropped groups fill the rest)."""
    with timer("generate"):
        results = generate(roles.infer, records, g, call=step)
    with timer("reward"):
        scores, correct, reward_metrics = score(rewards, records, results, step)
    first = Rollout(records, results, scores, correct)
    if not any(query_filters(cfg, r) for r in records):
        return first, reward_metrics, {}
    n, size = cfg.num_return_sequences_in_group, cfg.rollout_batch_size
    bound = 4 * size if cfg.max_additional_prompts_per_step is None else cfg.max_additional_prompts_per_step
    kept, dropped, drawn, rounds = [], [], 0, 0

    def sort(batch: Rollout) -> None:
        for i, rec in enumerate(batch.records):
            group = batch.group(i, n)
            (kept if alg.keeps_group(query_filters(cfg, rec), torch.tensor(group.scores)) else dropped).append(group)

    sort(first)
    kept_first = len(kept)
    with timer("dynamic_sampling"):
        while len(kept) < size and drawn < bound:
            want = max(size - len(kept), cfg.max_additional_running_prompts) if cfg.is_use_additional_prompts \
                else size - len(kept)
            more = draw(min(want, bound - drawn))
            drawn, rounds = drawn + len(more), rounds + 1
            got = generate(roles.infer, more, g, call=EXTRA_CALL + step * 1000 + rounds)
            sort(Rollout(more, got, *score(rewards, more, got, step)[:2]))
    chosen = kept[:size] + dropped[:max(size - len(kept), 0)]
    metrics = {"dynamic/kept_frac_first": kept_first / size, "dynamic/drawn_prompts": float(drawn),
               "dynamic/filled_with_dropped": float(max(size - len(kept), 0))}
    return Rollout.join(chosen), reward_metrics, metrics


def old_logprobs(cfg: PipelineConfig, roles: Roles, batch: dict, padded: dict, step: int, lagging: bool,
                 timer: PhaseTimer) -> dict:
    """Set the batch's old log-probs where the loss needs them (ROLL's rule, `config.passes`): the
    trainer's recompute, or with `old_logprobs_from_engine` the engine's: the sampled tokens' own
    when they come from the trainer's weights, else a scoring pass of the engine, which holds the
    trainer's weights since the last push. Returns the mismatch metrics of a recompute."""
    engine_serves = not old_logprobs_recomputed(cfg, roles.train.world_size, step)
    if engine_serves and not old_logprobs_needed(cfg, roles.train.world_size):
        return {}
    if engine_serves and not lagging:
        batch["old_logp"] = batch["rollout_logp"]
        return {}
    with timer("old_logprobs"):
        if engine_serves:
            batch["old_logp"] = forward_logprobs(roles.infer, padded) * batch["response_mask"]
            return {}
        batch["old_logp"] = roles.train.batch_logprobs(batch["input_ids"], batch["attention_mask"],
                                                       rollout_args(cfg).temperature,
                                                       prompt_width=prompt_width(batch["response_mask"]))
    metrics = alg.mismatch(batch["old_logp"], batch["rollout_logp"], batch["response_mask"])
    if cfg.old_logprobs_from_engine and lagging:  # the engine's scoring against the trainer's, same weights
        engine = forward_logprobs(roles.infer, padded)
        metrics.update({f"mismatch/engine_scoring_{k.split('/')[-1]}": v for k, v in
                        alg.mismatch(batch["old_logp"], engine, batch["response_mask"]).items()})
    return metrics


def rollout_ahead(rewards: RewardRouter, ahead: RolloutsAhead, step: int, version: int,
                  timer: PhaseTimer) -> tuple[Rollout, dict, dict]:
    """The step's rollout from the engine running ahead (async_generation_ratio), scored."""
    with timer("wait_rollout"):  # the trainer waiting for the engine
        records, results, ahead_metrics = ahead.take(step, version)
    with timer("reward"):
        scores, correct, reward_metrics = score(rewards, records, results, step)
    return Rollout(records, results, scores, correct), reward_metrics, ahead_metrics


def train_step(cfg: PipelineConfig, roles: Roles, rewards: RewardRouter, records: list[PromptRecord] | None,
               step: int, state: alg.AlgorithmState, draw=None, ahead: RolloutsAhead | None = None) -> dict:
    """One RL step; `draw(k)` gives k more prompts (dynamic sampling); with `ahead`, the rollout comes
    from the engine generating ahead of training (`records` is then None)."""
    timer = PhaseTimer()
    g = rollout_args(cfg)
    if ahead is not None:
        batch_rollout, reward_metrics, dynamic_metrics = rollout_ahead(rewards, ahead, step,
                                                                       roles.infer.weight_version, timer)
    else:
        if roles.sleep_level:
            with timer("wake"):
                roles.infer.wake_up()
        batch_rollout, reward_metrics, dynamic_metrics = rollout(cfg, roles, rewards, records, g, step, draw, timer)
        if roles.sleep_level:
            with timer("sleep"):
                roles.infer.sleep()
    records, results, scores, correct = (batch_rollout.records, batch_rollout.results, batch_rollout.scores,
                                         batch_rollout.correct)
    version = min(r.weight_version for r in results)
    padded = to_padded_batch(results, roles.train.tokenizer.pad_token_id or 0)
    response_mask = padded["response_mask"][:, 1:].float()
    samples = [s for r in results for s in r.samples]
    keep = alg.sample_mask(cfg, torch.tensor(scores), response_mask.sum(-1),
                           torch.tensor([s.finish_reason == "length" for s in samples]))
    batch = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"],
             "response_mask": response_mask, "mask": response_mask * keep[:, None],  # the loss's tokens
             "rollout_logp": rollout_logprobs(padded), "scores": torch.tensor(scores)}
    if cfg.difficulty_loss_weight:
        batch["difficulty"] = torch.tensor([float(r.extra["difficulty"]) for r in records
                                            for _ in range(cfg.num_return_sequences_in_group)])
    metrics = {"train/kept_frac": float(keep.mean()), **dynamic_metrics}
    if roles.reference is not None:  # started only when a KL term or enable_reference asks for it
        with timer("reference"):
            batch["ref_logp"] = reference_logprobs(roles.reference, padded)
    metrics.update(old_logprobs(cfg, roles, batch, padded, step, lagging=ahead is not None, timer=timer))
    kl = None
    if "ref_logp" in batch:  # the rollout policy (recomputed, else the engine's own log-probs) against the reference
        kl = alg.kl_estimate(batch.get("old_logp", batch["rollout_logp"]), batch["ref_logp"], cfg.kl_penalty)
        metrics["kl/mean"] = float(alg.masked_mean(kl, response_mask))
    if roles.critic is not None:
        with timer("values"):
            batch["values"] = roles.critic.batch_values(batch["input_ids"], batch["attention_mask"]) * response_mask
    batch["advantages"], batch["returns"], adv_metrics = advantages_by_domain(
        cfg, records, torch.tensor(scores), batch["mask"], kl, state, batch.get("values"))
    metrics.update(adv_metrics)
    if roles.critic is not None:
        with timer("critic_train"):
            metrics.update(critic_update(cfg, roles, batch, step))
    new_version = roles.infer.weight_version
    # nothing to learn when every response is masked out; with critic_warmup, only the critic learns
    if batch["mask"].sum() > 0 and step > cfg.critic_warmup:
        with timer("train"):
            metrics.update(ppo_update(cfg, roles, batch, step, g.temperature))
        with timer("weight_sync"):
            new_version = push_weights(cfg, roles)
    lengths = [len(s.token_ids) for r in results for s in r.samples]
    rule = [c for c in correct if c is not None]
    metrics.update({
        "step": step, "rollout_weight_version": version, "weight_version": new_version,
        "reward/mean": float(torch.tensor(scores).mean()), "reward/std": float(torch.tensor(scores).std()),
        **({"reward/accuracy": sum(rule) / len(rule)} if rule else {}), **reward_metrics,
        "response/length_mean": sum(lengths) / len(lengths),
        "response/truncated_frac": sum(s.finish_reason == "length" for r in results for s in r.samples) / len(lengths),
        **timer.metrics(), "memory/rss_gib": process_rss_bytes() / 2**30,
    })
    return metrics


# -- the run --------------------------------------------------------------------------------------
def run_train(cfg: PipelineConfig, source: str | None = None, progress: bool | None = None) -> dict:
    """The whole RLVR run; returns a summary (first and last validation, paths). The run owns (locks)
    output_dir while it lasts, and leaves no partial save behind however it ends."""
    cfg = with_train_defaults(cfg)
    with own_output_dir(cfg.output_dir) as out_dir, partial_saves_discarded(out_dir):
        return _run_train(cfg, out_dir, source, progress)


def _run_train(cfg: PipelineConfig, out_dir: Path, source: str | None, progress: bool | None) -> dict:
    from tqdm import tqdm
    from transformers import AutoTokenizer

    if no_effect_line(cfg):
        log.warning("%s", no_effect_line(cfg))
    model_key = "actor_train.model_args.model_name_or_path"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.actor_train.model_args.model_name_or_path, model_key))
    train_records, val_records = load_data(cfg, tokenizer, source)
    inner = (CRITIC_DIR,) if critic_enabled(cfg) else ()
    resume = cfg.resume_from_checkpoint
    # checked, LoRA or not and its tensors against the models too (under LoRA the optimiser state against
    # the adapters'); falls back past broken ones and ones that do not fit
    ckpt, state = find_checkpoint(resume, out_dir, inner, models_to_fit(cfg) if resume not in (False, "") else None,
                                  lora=lora_enabled(cfg))
    sampler = prompt_sampler(train_records, cfg.seed, cfg.actor_train.data_args, cfg.rollout_batch_size,
                             cfg.rewards)
    algorithm = alg.AlgorithmState.start(cfg)
    if ckpt:
        sampler.load_state_dict(state["data"])
        if "algorithm" in state:
            algorithm.load_state_dict(state["algorithm"])
        log.info("resuming from %s (step %d)", ckpt, state["step"])
    ranks = trainer_ranks(cfg.actor_train, current_platform_name())
    total = cfg.max_steps * cfg.ppo_epochs * optimizer_steps_per_rollout(cfg, ranks)
    resume_step = state["step"] if ckpt else None
    metrics_log = MetricsLog(out_dir, resume_step, open_tracker(cfg, out_dir, resume_step))
    (out_dir / "config.yaml").write_text(_config_yaml(cfg))
    roles, stack = launch_rlvr_roles(cfg, total, str(ckpt) if ckpt else None, critic_plan(cfg, ckpt))
    stack.callback(metrics_log.close)  # the tracker is closed however the run ends
    rewards = RewardRouter(cfg.rewards, roles.reward_models)
    summary: dict = {"output_dir": str(out_dir), "metrics": str(metrics_log.path)}
    with stack:
        stack.enter_context(failures_named_at_once())
        if ckpt:
            roles.train.load_state(ckpt)
            if roles.critic is not None:
                roles.critic.load_state(ckpt / CRITIC_DIR)
        if ckpt or _needs_initial_push(cfg):
            roles.infer.update_weights(engine_weights(cfg, roles))
        if ckpt:
            roles.infer.adopt_weight_version(state["weight_version"])
        step = state["step"]
        if val_records and step == 0:
            record = validate(cfg, roles.infer, rewards, val_records, 0, out_dir)
            metrics_log.write(record)
            log.info("validation before training: %s", _brief(record))
        bar = tqdm(range(step + 1, cfg.max_steps + 1), desc="vroll train", unit="step", initial=step,
                   total=cfg.max_steps, disable=(not sys.stderr.isatty()) if progress is None else not progress)
        ahead = rollouts_ahead(cfg, roles, sampler)
        if ahead is not None:
            stack.enter_context(ahead)
        for step in bar:
            if ahead is not None:
                record = train_step(cfg, roles, rewards, None, step, algorithm, ahead=ahead)
            else:
                record = train_step(cfg, roles, rewards, sampler.next_batch(cfg.rollout_batch_size), step, algorithm,
                                    draw=sampler.next_batch)
            record["data/epoch"] = sampler.epoch
            if val_records and (step % cfg.eval_steps == 0 or step == cfg.max_steps):
                record.update(validate(cfg, roles.infer, rewards, val_records, step, out_dir))
            metrics_log.write(record)
            bar.set_postfix(reward=f"{record['reward/mean']:.3f}",
                            **({"val_acc": f"{record['val/accuracy']:.3f}"} if "val/accuracy" in record else {}))
            if step % cfg.logging_steps == 0:
                log.info("step %d: %s", step, _brief(record))
            if step % cfg.save_steps == 0 or step == cfg.max_steps:
                data = sampler.state_dict() if ahead is None else ahead.sampler_state_before(step + 1)
                path = save_checkpoint(out_dir, step, roles.train, {"data": data,
                                                                     "weight_version": roles.infer.weight_version,
                                                                     "algorithm": algorithm.state_dict()},
                                       {CRITIC_DIR: roles.critic} if roles.critic is not None else {})
                log.info("checkpoint saved: %s", path)
                for old in prune_checkpoints(out_dir, cfg.max_ckpt_to_keep):
                    log.info("checkpoint removed (max_ckpt_to_keep: %d): %s", cfg.max_ckpt_to_keep, old)
                summary["checkpoint"] = str(path)
        metrics_log.close()
    records = metrics_log.read()
    summary["plot"] = str(plot_curves(records, out_dir / "curves.png"))
    vals = [r for r in records if "val/accuracy" in r]
    if vals:
        summary["val_accuracy_first"], summary["val_accuracy_last"] = vals[0]["val/accuracy"], vals[-1]["val/accuracy"]
    return summary


@contextmanager
def failures_named_at_once():
    """A role whose process died or hung is named when the loop sees it, before the run's roles are
    closed (which takes seconds: engines stop their generation and free their memory, Ray stops); the
    error then ends the run as before."""
    try:
        yield
    except RoleFailure as e:
        log.error("stopping the run: %s", e)
        raise


def rollouts_ahead(cfg: PipelineConfig, roles: Roles,
                   sampler: PromptSampler | DomainSampler) -> RolloutsAhead | None:
    """The engine generating `async_generation_ratio` steps ahead of training (None: synchronous)."""
    if not cfg.async_generation_ratio:
        return None
    return RolloutsAhead(roles.infer, sampler, int(cfg.async_generation_ratio), cfg.rollout_batch_size,
                         rollout_args(cfg), cfg.max_steps, cfg.actor_infer.strategy_args.options.engine_call_timeout_s)


def critic_plan(cfg: PipelineConfig, ckpt: Path | None) -> tuple[int, str | None]:
    """The critic's optimiser steps over the run (one pass per rollout) and the folder it starts
    from when resuming (None: its model path)."""
    ranks = trainer_ranks(cfg.critic, current_platform_name()) if cfg.critic is not None else 1
    steps = cfg.max_steps * optimizer_steps_per_rollout(cfg, ranks, cfg.critic) if cfg.critic is not None else 1
    return steps, str(ckpt / CRITIC_DIR) if ckpt else None


def _needs_initial_push(cfg: PipelineConfig) -> bool:
    """vLLM must serve the trainer's weights: push them before the first rollout unless it loaded the
    same checkpoint itself."""
    infer, train = cfg.actor_infer, cfg.actor_train
    dummy = infer.strategy_args.backend_args.get("load_format") == "dummy"
    return dummy or infer.model_args.model_name_or_path != train.model_args.model_name_or_path


def _config_yaml(cfg: PipelineConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(cfg.model_dump(mode="json", exclude_none=True))


def _brief(record: dict) -> str:
    keys = ("reward/mean", "reward/accuracy", "val/accuracy", "kl/mean", "mismatch/logprob_abs_mean", "time/step")
    return " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)
