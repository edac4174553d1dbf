"""Which passes an RL step runs, by ROLL's rules: the reference forward, and the trainer's
re-computation of the old log-probabilities. Pure functions of the file, so validation, the
launcher and the loop agree."""

from __future__ import annotations

from vroll.config.layout import optimizer_steps_per_rollout


def reference_enabled(cfg) -> bool:
    """The reference runs when asked (`enable_reference`), or when a KL term needs it (`use_kl_loss`,
    `init_kl_coef > 0`)."""
    return cfg.enable_reference or cfg.use_kl_loss or cfg.init_kl_coef > 0


def critic_enabled(cfg) -> bool:
    """The critic (a value model) runs only for GAE advantages, as in ROLL."""
    return cfg.adv_estimator == "gae"


def reference_reason(cfg) -> str:
    """The key that turned the reference on, for messages."""
    if cfg.use_kl_loss:
        return "use_kl_loss: true"
    if cfg.init_kl_coef > 0:
        return f"init_kl_coef: {cfg.init_kl_coef}"
    return "enable_reference: true"


def old_logprobs_needed(cfg, ranks: int) -> bool:
    """ROLL's rule: the loss needs old log-probs other than the current ones when asked, when a
    rollout makes more than one optimiser step per rank, with `init_kl_coef > 0`, or (vroll) when
    generation runs ahead of training (`async_generation_ratio`: the samples come from older
    weights). Otherwise the current log-probs (detached) serve: with one optimiser step they come
    from the same weights. vroll also counts `ppo_epochs > 1`, where ROLL caches the first epoch's
    log-probs per sample (the same values, computed ahead)."""
    if cfg.force_disable_old_logprobs_recompute:
        return False
    several_steps = optimizer_steps_per_rollout(cfg, ranks) > 1
    return (cfg.enable_old_logprobs_recompute or several_steps or cfg.init_kl_coef > 0 or cfg.ppo_epochs > 1
            or cfg.async_generation_ratio > 0)


def old_logprobs_recomputed(cfg, ranks: int, step: int) -> bool:
    """Whether the trainer recomputes the old log-probs at `step`: whenever they are needed, or, with
    `old_logprobs_from_engine` (the engine's own log-probs serve), every `mismatch_check_steps` steps
    to measure the mismatch."""
    if not old_logprobs_needed(cfg, ranks):
        return False
    return not cfg.old_logprobs_from_engine or step % cfg.mismatch_check_steps == 1 % cfg.mismatch_check_steps
