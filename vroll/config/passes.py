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


def old_logprobs_recomputed(cfg, ranks: int) -> bool:
    """Recompute the old log-probs with the trainer before training, unless
    `force_disable_old_logprobs_recompute`: when asked, when a rollout makes more than one optimiser
    step per rank, or with `init_kl_coef > 0`. Otherwise the loss takes the current log-probs
    (detached) as the old ones: with one optimiser step they come from the same weights. vroll also
    recomputes with `ppo_epochs > 1`, where ROLL caches the first epoch's log-probs per sample (the
    same values, computed ahead)."""
    if cfg.force_disable_old_logprobs_recompute:
        return False
    several_steps = optimizer_steps_per_rollout(cfg, ranks) > 1
    return cfg.enable_old_logprobs_recompute or several_steps or cfg.init_kl_coef > 0 or cfg.ppo_epochs > 1
